#!/usr/bin/env python3
"""Per-class recall and precision of a detector file on a page set, through Ultralytics
`predict` (the reference the detector service matches), with recall by symbol size.

Recall: a true symbol is found by a prediction of its class with IoU >= 0.5 (each prediction
used once); precision: predictions matched / predictions. Needs `ultralytics`
(python/requirements-train.txt).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/eval-detector.py \\
        models/detector/hvac-yolov8n.torchscript tests/pages-independent --imgsz 1600 --conf 0.25
"""

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / "training/runs/yolo-config"))

import torch  # noqa: E402
import torchvision  # noqa: E402
from ultralytics import YOLO  # noqa: E402

CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]
SIZE_BUCKETS = (32, 64, 100, 10_000)  # longer side below this many px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .torchscript or .pt file")
    ap.add_argument("pages", type=Path, help="a folder of page_*.png + page_*.json")
    ap.add_argument("--imgsz", type=int, default=1600)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--limit", type=int, default=None, help="only the first N pages")
    a = ap.parse_args()

    model = YOLO(a.model, task="detect")
    counts = {c: [0, 0, 0] for c in CLASSES}  # found, missed, false
    by_size = {b: [0, 0] for b in SIZE_BUCKETS}  # found, all
    for page in sorted(a.pages.glob("*.json"))[: a.limit]:
        truth = json.loads(page.read_text())
        result = model.predict(str(a.pages / truth["image"]), imgsz=a.imgsz, conf=a.conf, iou=0.7,
                               verbose=False, device="cpu")[0]
        boxes, classes = result.boxes.xyxy.cpu(), result.boxes.cls.cpu().long()
        used: set[int] = set()
        for symbol in truth["symbols"]:
            x0, y0, x1, y1 = symbol["box"]
            bucket = next(b for b in SIZE_BUCKETS if max(x1 - x0, y1 - y0) < b)
            by_size[bucket][1] += 1
            found = False
            if len(boxes):
                iou = torchvision.ops.box_iou(torch.tensor([symbol["box"]], dtype=torch.float32), boxes)[0]
                iou[classes != CLASSES.index(symbol["class"])] = 0
                iou[list(used)] = 0
                best = int(iou.argmax())
                if iou[best] >= 0.5:
                    used.add(best)
                    found = True
            counts[symbol["class"]][0 if found else 1] += 1
            by_size[bucket][0] += found
        for k in range(len(boxes)):
            if k not in used:
                counts[CLASSES[int(classes[k])]][2] += 1

    print(f"{a.model} on {a.pages}, imgsz {a.imgsz}, conf {a.conf}")
    print("| class | symbols | recall | precision | false positives |\n|---|---:|---:|---:|---:|")
    total = [sum(v[i] for v in counts.values()) for i in range(3)]
    for name, (found, missed, false) in [*counts.items(), ("**all**", total)]:
        print(f"| {name} | {found + missed} | {found / max(found + missed, 1):.3f} | "
              f"{found / max(found + false, 1):.3f} | {false} |")
    print("found by longer side:", ", ".join(f"< {b} px {f}/{n}" for b, (f, n) in by_size.items()))


if __name__ == "__main__":
    main()
