"""Ultralytics `predict` on the same model, images and thread count as
services/detector/examples/bench_detect.rs: the reference for BENCHMARKS.md."""
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
torch.set_num_threads(2)
os.environ.setdefault("YOLO_OFFLINE", "1")
from ultralytics import YOLO  # noqa: E402

model = YOLO(str(ROOT / "models/detector/hvac-yolov8n.torchscript"), task="detect")
crop = str(ROOT / "tests/detector/images/case0_640x640.png")
for _ in range(3):
    model.predict(crop, imgsz=640, device="cpu", verbose=False)
latencies = []
start = time.perf_counter()
for _ in range(rounds):
    t = time.perf_counter()
    model.predict(crop, imgsz=640, device="cpu", verbose=False)
    latencies.append(time.perf_counter() - t)
elapsed = time.perf_counter() - start
latencies.sort()
print(json.dumps({"scenario": "single", "images_per_s": round(rounds / elapsed, 2),
                  "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 1)}))
batch = [crop] * 8
start = time.perf_counter()
for _ in range(max(1, rounds // 8)):
    model.predict(batch, imgsz=640, device="cpu", verbose=False)
elapsed = time.perf_counter() - start
print(json.dumps({"scenario": "batch8", "images_per_s": round(max(1, rounds // 8) * 8 / elapsed, 2)}))
