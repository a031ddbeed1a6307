#!/usr/bin/env python3
"""The best Python baseline on a page set, scored like the end-to-end test: Ultralytics
`predict` on the shipped TorchScript weights (imgsz 1280, conf 0.5), RapidOCR 1.4.4 on the
page with the detected symbols painted white, each symbol given the closest free text line
within 1.5x its longer side (closest pairs first over the page).

Per-class recall (same class, IoU >= 0.5, each prediction used once), precision (predictions
matched / predictions of that class) and exact tags (over all true symbols).

    OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/python scripts/eval-python-baseline.py tests/pages-independent
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assign(symbols, lines, reach=1.5):
    """Closest (gap) symbol-line pairs first; each line to one symbol, each symbol one line."""
    pairs = []
    for i, (_, box, _) in enumerate(symbols):
        limit = reach * max(box[2] - box[0], box[3] - box[1])
        for j, (tb, _) in enumerate(lines):
            dx = max(tb[0] - box[2], box[0] - tb[2], 0)
            dy = max(tb[1] - box[3], box[1] - tb[3], 0)
            gap = float(np.hypot(dx, dy))
            if gap <= max(limit, 12):
                pairs.append((gap, i, j))
    tags = [""] * len(symbols)
    used_s, used_l = set(), set()
    for _, i, j in sorted(pairs):
        if i not in used_s and j not in used_l:
            used_s.add(i)
            used_l.add(j)
            tags[i] = lines[j][1]
    return [(c, b, t) for (c, b, _), t in zip(symbols, tags)]


def score(truths, predictions):
    rows = {c: {"true": 0, "found": 0, "predicted": 0, "tags": 0} for c in CLASSES}
    for truth, predicted in zip(truths, predictions):
        used = set()
        for p in predicted:
            rows[p[0]]["predicted"] += 1
        for symbol in truth:
            row = rows[symbol["class"]]
            row["true"] += 1
            best, best_iou = None, 0.5
            for k, (cls, box, _) in enumerate(predicted):
                overlap = iou(symbol["box"], box)
                if k not in used and cls == symbol["class"] and overlap >= best_iou:
                    best, best_iou = k, overlap
            if best is not None:
                used.add(best)
                row["found"] += 1
                row["tags"] += predicted[best][2] == symbol["tag"]
    return rows


def table(rows):
    out = ["| class | symbols | recall | precision | exact tags |", "|---|---:|---:|---:|---:|"]
    total = {"true": 0, "found": 0, "predicted": 0, "tags": 0}
    for cls, r in list(rows.items()) + [("**all**", None)]:
        if r is None:
            r = total
        else:
            for k in total:
                total[k] += r[k]
        out.append(f"| {cls} | {r['true']} | {r['found'] / max(r['true'], 1):.3f} | "
                   f"{r['found'] / max(r['predicted'], 1):.3f} | {r['tags'] / max(r['true'], 1):.3f} |")
    return "\n".join(out)


def main():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import cv2
    import torch
    from rapidocr_onnxruntime import RapidOCR
    from ultralytics import YOLO

    torch.set_num_threads(2)
    folder = Path(sys.argv[1])
    imgsz = int(os.environ.get("IMGSZ", 1280))
    conf = float(os.environ.get("CONF", 0.5))
    model = YOLO(str(REPO / "models/detector/hvac-yolov8n.torchscript"), task="detect")
    ocr = RapidOCR()
    truths, predictions = [], []
    for page in sorted(folder.glob("page_*.png")):
        truths.append(json.loads(page.with_suffix(".json").read_text())["symbols"])
        image = cv2.imread(str(page), cv2.IMREAD_COLOR)
        result = model.predict(image, imgsz=imgsz, conf=conf, device="cpu", verbose=False)[0]
        symbols = [(model.names[int(c)], b, "") for b, c in
                   zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist())]
        masked = image.copy()
        for _, b, _ in symbols:
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            masked[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = 255
        lines, _ = ocr(masked)
        lines = [([min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q), max(p[1] for p in q)], t)
                 for q, t, _ in (lines or [])]
        predictions.append(assign(symbols, lines))
        print(f"{page.name}: {len(symbols)} detections, {len(lines)} lines", file=sys.stderr, flush=True)
    print(f"Ultralytics imgsz {imgsz} conf {conf} + RapidOCR (masked), {folder}:")
    print(table(score(truths, predictions)))


if __name__ == "__main__":
    main()
