"""Does running text detection beside symbol detection save wall time on this CPU?

Issue 13's stage-overlap lead: the gateway runs the detector, then OCR on the page with
the symbols painted out. Running the two side by side only pays when one model cannot
use every core. This times both models on ONNX Runtime on a 1x3x1216x1600 input (median
of 5): one after the other, and side by side, at 2 and at 1 intra-op thread each.

Usage (after `make setup` and provisioning the detector's ONNX export):
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/probe-stage-overlap.py \
    .venv/lib/python3.11/site-packages/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx \
    models/detector/hvac-yolov8n.onnx
"""
import statistics, sys, threading, time
import numpy as np
import onnxruntime as ort

DET = sys.argv[1]
YOLO = sys.argv[2]
def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

det_x = np.random.rand(1, 3, 1216, 1600).astype(np.float32)
yolo_x = np.random.rand(1, 3, 1216, 1600).astype(np.float32)
def run(s, x):
    s.run(None, {s.get_inputs()[0].name: x})

def timed(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)

for threads in (2, 1):
    d, y = session(DET, threads), session(YOLO, threads)
    td = timed(lambda: run(d, det_x)); ty = timed(lambda: run(y, yolo_x))
    def both():
        a = threading.Thread(target=run, args=(d, det_x)); b = threading.Thread(target=run, args=(y, yolo_x))
        a.start(); b.start(); a.join(); b.join()
    tb = timed(both)
    print(f"threads {threads}: det {td:.0f} ms, yolo {ty:.0f} ms, sum {td+ty:.0f}, side by side {tb:.0f}")
