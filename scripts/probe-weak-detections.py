#!/usr/bin/env python3
"""What the verifier makes of the detector's weak detections, the evidence behind
`DetectOptions.confirmed_score_threshold`: Ultralytics `predict` on the shipped weights
(each page stretched as `normalize_contrast` stretches it, imgsz 1600, conf 0.1), the
shipped verifier on each detection's crop (from the page as it came), every detection
labelled by the truth (right class at IoU >= 0.5).

For each folder it counts, among the detections scoring 0.1-0.25 that overlap no
detection the service keeps (score >= 0.25, P(none) < 0.5), the true symbols not found
otherwise and the false ones, by whether the verifier is sure of their class (>= 0.9).
Ultralytics has no large-symbol pass, so a few "new" symbols here are ones the service
finds anyway.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/probe-weak-detections.py tests/pages-independent tests/pages
"""
import glob
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_verifier import CLASSES, crop_square, model_input  # noqa: E402

SURE = 0.9
APART = 0.1


def stretch(gray):
    """crates/vision/src/contrast.rs: ink (0.5th percentile) to 0, paper (median) to 255."""
    ink, paper = np.percentile(gray, 0.5), np.median(gray)
    if not (96 <= paper - ink < 224) or paper < 128:
        return gray
    return np.clip((gray.astype(np.float32) - ink) * 255.0 / (paper - ink), 0, 255).astype(np.uint8)


def inside_share(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if smaller > 0 else 0.0


def main():
    from ultralytics import YOLO

    repo = Path(__file__).resolve().parents[1]
    detector = YOLO(str(repo / "models/detector/hvac-yolov8n.torchscript"), task="detect")
    verifier = torch.jit.load(str(repo / "models/detector/hvac-verify.pt"))
    for folder in sys.argv[1:]:
        tally = {"new true, sure": 0, "new true, not sure": 0, "false, sure": 0, "false, not sure": 0}
        for page in sorted(glob.glob(f"{folder}/*.json")):
            truth = json.load(open(page))
            gray = cv2.imread(page[:-5] + ".png", cv2.IMREAD_GRAYSCALE)
            found = detector.predict(cv2.cvtColor(stretch(gray), cv2.COLOR_GRAY2BGR), imgsz=1600, conf=0.1,
                                     iou=0.7, verbose=False, device="cpu")[0]
            boxes, classes, scores = found.boxes.xyxy.cpu(), found.boxes.cls.cpu().long(), found.boxes.conf.cpu()
            if not len(boxes):
                continue
            with torch.no_grad():
                p = verifier(model_input([crop_square(gray, b.tolist()) for b in boxes]))
            true_boxes = torch.tensor([s["box"] for s in truth["symbols"]], dtype=torch.float32).reshape(-1, 4)
            true_classes = torch.tensor([CLASSES.index(s["class"]) for s in truth["symbols"]])
            iou = torchvision.ops.box_iou(boxes, true_boxes) if len(true_boxes) else torch.zeros(len(boxes), 0)
            hit = []
            for k in range(len(boxes)):
                j = int(iou[k].argmax()) if iou.shape[1] else -1
                hit.append(j if j >= 0 and iou[k, j] >= 0.5 and true_classes[j] == classes[k] else -1)
            kept = [k for k in range(len(boxes)) if scores[k] >= 0.25 and p[k, -1] < 0.5]
            found_already = {hit[k] for k in kept}
            for k in range(len(boxes)):
                if scores[k] >= 0.25:
                    continue
                box = boxes[k].tolist()
                if any(inside_share(boxes[m].tolist(), box) >= APART for m in kept):
                    continue
                if hit[k] >= 0 and hit[k] in found_already:
                    continue
                sure = "sure" if p[k, classes[k]] >= SURE else "not sure"
                tally[f"{'new true' if hit[k] >= 0 else 'false'}, {sure}"] += 1
        print(folder, tally, flush=True)


if __name__ == "__main__":
    main()
