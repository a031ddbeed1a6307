"""Reference detections for the detector's parity test, made with Ultralytics' own
`predict` on the TorchScript export (the set-up environment, plus `ultralytics` from
python/requirements-train.txt). Writes images and expected JSON under tests/detector/.

    OMP_WAIT_POLICY=PASSIVE YOLO_OFFLINE=1 .venv/bin/python tests/detector/make_reference.py

Images: generated blueprint pages and crops (seeded), at sizes that exercise the
letterbox: square 640, landscape 1600x1200, portrait 480x800, small odd 333x517.
Ultralytics 8.4 letterboxes a dynamic TorchScript export like a .pt (`auto=True`: the
minimum stride-multiple rectangle, 1600x1200 -> 640x480); the detector does the same.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))
import blueprint_gen  # noqa: E402

OUT = ROOT / "tests" / "detector"
IMAGES = OUT / "images"
MODEL = ROOT / "models" / "detector" / "hvac-yolov8n.torchscript"
SIZES = [(640, 640, 8), (1600, 1200, 24), (480, 800, 6), (333, 517, 3), (900, 700, 10)]


def main() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    IMAGES.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(MODEL), task="detect")
    cases = []
    for index, (w, h, n) in enumerate(SIZES):
        rng = np.random.default_rng(4242 + index)
        page = blueprint_gen.render_page(w, h, rng, n)
        pixels = page[0] if isinstance(page, tuple) else page
        pixels = np.asarray(pixels.image if hasattr(pixels, "image") else pixels)
        path = IMAGES / f"case{index}_{w}x{h}.png"
        blueprint_gen.save_png(pixels, path)
        result = model.predict(str(path), imgsz=640, conf=0.25, iou=0.7, device="cpu", verbose=False)[0]
        boxes = result.boxes
        detections = [
            {
                "class_name": result.names[int(c)],
                "score": float(s),
                "box": [float(v) for v in xyxy],
            }
            for xyxy, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())
        ]
        cases.append({"image": f"images/{path.name}", "width": w, "height": h, "detections": detections})
        print(f"{path.name}: {len(detections)} detections")
    (OUT / "reference.json").write_text(json.dumps({
        "model": MODEL.name,
        "imgsz": 640, "conf": 0.25, "iou": 0.7,
        "made_with": "ultralytics predict on the TorchScript export",
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
