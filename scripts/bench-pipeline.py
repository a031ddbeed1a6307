"""The whole pipeline on sample pages, Plenum against the shape of the system it
replaces, on the same pages and thread count, one run (BENCHMARKS.md "Pipeline"):

  plenum     Analyze through the gateway of a running stack (`plenum up`), called by
             grpcio; per-stage timings come from the response.
  reference  Ultralytics `predict` + RapidOCR 1.4.4 in one Python process, as the old
             Ray Serve workers ran them: detect at the page's own size (what Plenum's
             detector does for a 1600x1200 page), read the page, give each symbol the
             nearest text line beside it.

Both are scored against the generator's ground truth: recall (IoU >= 0.5) and exact
tags. Usage: bench-pipeline.py GATEWAY_ADDR PAGE.png... (see scripts/bench-pipeline.sh)
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREADS = 2


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(pages, predictions):
    """Recall and exact-tag accuracy: each true symbol matched to the best unused
    prediction of its class with IoU >= 0.5."""
    found = tagged = total = 0
    for page, predicted in zip(pages, predictions):
        truth = json.loads(page.with_suffix(".json").read_text())["symbols"]
        used = set()
        for symbol in truth:
            total += 1
            best, best_iou = None, 0.5
            for index, (cls, box, tag) in enumerate(predicted):
                overlap = iou(symbol["box"], box)
                if index not in used and cls == symbol["class"] and overlap >= best_iou:
                    best, best_iou = index, overlap
            if best is not None:
                used.add(best)
                found += 1
                tagged += predicted[best][2] == symbol["tag"]
    return found / total, tagged / total, total


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_plenum(addr, pages, rounds):
    import grpc
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    include = str(Path(protoc.__file__).parent / "_proto")
    protos = ["plenum/common/v1/common.proto", "plenum/gateway/v1/gateway.proto"]
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + protos) == 0
    sys.path.insert(0, out)
    from plenum.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(addr, options=options))
    images = [page.read_bytes() for page in pages]
    stub.Analyze(gateway_pb2.AnalyzeRequest(image=images[0]), timeout=300)  # warm

    latencies, stages, predictions = [], {"detect": [], "ocr": []}, []
    for round_ in range(rounds):
        for image in images:
            start = time.perf_counter()
            response = stub.Analyze(gateway_pb2.AnalyzeRequest(image=image), timeout=300)
            latencies.append(time.perf_counter() - start)
            stages["detect"].append(response.timings.detect_us / 1e3)
            stages["ocr"].append(response.timings.ocr_us / 1e3)
            if round_ == 0:
                predictions.append([
                    (s.class_name, [s.box.x_min, s.box.y_min, s.box.x_max, s.box.y_max], s.tag)
                    for s in response.symbols
                ])
    return latencies, stages, predictions, throughput(stub, gateway_pb2, images)


def throughput(stub, gateway_pb2, images, callers=4):
    """Pages per second with `callers` clients at once: the stack overlaps one
    page's detection with another's reading, which one Python process cannot."""
    from concurrent.futures import ThreadPoolExecutor

    work = images * 2
    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda image: stub.Analyze(gateway_pb2.AnalyzeRequest(image=image), timeout=600), work))
    return round(len(work) / (time.perf_counter() - start), 3)


def run_reference(pages, rounds):
    import os

    import torch

    torch.set_num_threads(THREADS)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from rapidocr_onnxruntime import RapidOCR
    from ultralytics import YOLO

    model = YOLO(str(REPO / "models/detector/hvac-yolov8n.torchscript"), task="detect")
    ocr = RapidOCR()  # ONNX Runtime defaults to every core: the same 2 here

    def analyze(path):
        t0 = time.perf_counter()
        result = model.predict(str(path), imgsz=1600, device="cpu", verbose=False)[0]
        t1 = time.perf_counter()
        lines, _ = ocr(str(path))
        t2 = time.perf_counter()
        lines = lines or []
        text_boxes = [
            ([min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q), max(p[1] for p in q)], text)
            for q, text, _ in lines
        ]
        symbols = []
        taken = set()
        for box, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist()):
            pad = max(box[2] - box[0], box[3] - box[1]) / 2
            best, best_gap = None, None
            for index, (tb, _) in enumerate(text_boxes):
                if index in taken:
                    continue
                dx = max(tb[0] - box[2], box[0] - tb[2], 0)
                dy = max(tb[1] - box[3], box[1] - tb[3], 0)
                if dx <= pad and dy <= pad and (best_gap is None or dx + dy < best_gap):
                    best, best_gap = index, dx + dy
            tag = ""
            if best is not None:
                taken.add(best)
                tag = text_boxes[best][1]
            symbols.append((model.names[int(cls)], box, tag))
        return symbols, (t1 - t0) * 1e3, (t2 - t1) * 1e3

    analyze(pages[0])  # warm
    latencies, stages, predictions = [], {"detect": [], "ocr": []}, []
    for round_ in range(rounds):
        for page in pages:
            start = time.perf_counter()
            symbols, detect_ms, ocr_ms = analyze(page)
            latencies.append(time.perf_counter() - start)
            stages["detect"].append(detect_ms)
            stages["ocr"].append(ocr_ms)
            if round_ == 0:
                predictions.append(symbols)
    return latencies, stages, predictions


def report(name, pages, latencies, stages, predictions, concurrent_pages_per_s=None):
    recall, tags, total = score(pages, predictions)
    row = {
        "system": name,
        "pages": len(pages),
        "calls": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1e3, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
        "pages_per_s": round(len(latencies) / sum(latencies), 3),
        "pages_per_s_4_callers": concurrent_pages_per_s,
        "detect_p50_ms": round(statistics.median(stages["detect"]), 1),
        "ocr_p50_ms": round(statistics.median(stages["ocr"]), 1),
        "recall": round(recall, 3),
        "tag_accuracy": round(tags, 3),
        "symbols": total,
    }
    print(json.dumps(row), flush=True)
    return row


def main():
    addr, rounds, pages = sys.argv[1], int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    plenum = report("plenum", pages, *run_plenum(addr, pages, rounds))
    reference = report("ultralytics+rapidocr", pages, *run_reference(pages, rounds))
    print(f"one page at a time: plenum {plenum['p50_ms']} ms vs {reference['p50_ms']} ms at p50 "
          f"({reference['p50_ms'] / plenum['p50_ms']:.2f}x)")
    print(f"throughput: plenum {plenum['pages_per_s_4_callers']} pages/s with 4 callers vs "
          f"{reference['pages_per_s']} pages/s for the one-process reference "
          f"({plenum['pages_per_s_4_callers'] / reference['pages_per_s']:.2f}x)")


if __name__ == "__main__":
    main()
