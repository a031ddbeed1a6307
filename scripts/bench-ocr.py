"""RapidOCR 1.4.4 (onnxruntime) side of scripts/bench-ocr.sh: the same inputs and load
as services/ocr/examples/bench_ocr.rs, in process, ORT intra-op threads = 2.

    .venv/bin/python scripts/bench-ocr.py read|recognize CALLERS SECONDS

`read`: RapidOCR()(png bytes) on tests/ocr/read/sheet.png (det + cls + rec);
`recognize`: the first 32 crops of tests/ocr/crops decoded, then text_cls + text_rec in
one call (what Recognize does). CALLERS threads in closed loops after 2 warm-up calls each.
Prints one JSON line; peak RSS is this process's ru_maxrss (run one mode per process).
"""
import json
import resource
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from rapidocr_onnxruntime import RapidOCR

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    mode, callers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ocr = RapidOCR(intra_op_num_threads=2, inter_op_num_threads=1)
    if mode == "read":
        page = (ROOT / "tests/ocr/read/sheet.png").read_bytes()

        def call():
            ocr(page)
    else:
        crops = [p.read_bytes() for p in sorted((ROOT / "tests/ocr/crops").glob("*.png"))[:32]]

        def call():
            images = [cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR) for c in crops]
            turned, _, _ = ocr.text_cls(images)
            ocr.text_rec(turned)

    results = []

    def worker():
        for _ in range(2):
            call()
        latencies, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t)
        results.append((latencies, time.perf_counter() - started))

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(len(l) / e for l, e in results)
    latencies = sorted(x for l, _ in results for x in l)
    pick = lambda q: latencies[round((len(latencies) - 1) * q)] * 1e3
    print(json.dumps({
        "side": "rapidocr", "mode": mode, "callers": callers, "calls_per_s": round(rate, 3),
        "p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1), "calls": len(latencies),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
