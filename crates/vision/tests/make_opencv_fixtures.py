"""Fixtures for crates/vision's OpenCV/pyclipper parity tests (tests/opencv_parity.rs):
minAreaRect + boxPoints, pyclipper's round offset, getPerspectiveTransform +
warpPerspective (INTER_CUBIC, BORDER_REPLICATE), dilate 2x2 and findContours, from the
opencv-python and pyclipper that RapidOCR 1.4.4 runs on in .venv.

    .venv/bin/python crates/vision/tests/make_opencv_fixtures.py
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

rng = np.random.default_rng(7)
out = {"opencv": cv2.__version__, "pyclipper": pyclipper.__version__}

rects = []
for _ in range(60):
    n = int(rng.integers(3, 40))
    cx, cy = rng.integers(20, 200, size=2)
    w, h = rng.integers(2, 80), rng.integers(2, 30)
    angle = rng.uniform(-np.pi, np.pi) if rng.random() < 0.6 else 0.0
    pts = rng.uniform(-1, 1, size=(n, 2)) * [w, h]
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = np.round(pts @ rot.T + [cx, cy]).astype(np.int32)
    rect = cv2.minAreaRect(pts)
    rects.append({"points": pts.tolist(), "box": cv2.boxPoints(rect).tolist(),
                  "size": [float(rect[1][0]), float(rect[1][1])]})
out["min_area_rect"] = rects

offsets = []
for case in rects[:40]:
    box = np.array(case["box"], dtype=np.float32)
    poly = Polygon(box)
    if poly.length == 0 or poly.area == 0:
        continue
    distance = poly.area * 1.6 / poly.length
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = pco.Execute(distance)
    offsets.append({"box": box.tolist(), "distance": distance,
                    "expanded": [list(map(list, p)) for p in expanded]})
out["unclip"] = offsets

image = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
warps = []
for quad in ([[2, 3], [20, 4], [21, 12], [1, 11]], [[5.0, 1.0], [28.0, 9.0], [25.0, 20.0], [2.0, 13.0]],
             [[0, 0], [30, 0], [30, 22], [0, 22]], [[10, 2], [14, 2], [14, 21], [10, 21]]):
    pts = np.array(quad, dtype=np.float32)
    w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    std = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(pts, std)
    dst = cv2.warpPerspective(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    warps.append({"quad": quad, "width": w, "height": h, "matrix": m.tolist(),
                  "pixels": dst.reshape(-1).tolist()})
out["warp"] = {"width": 31, "height": 23, "pixels": image.reshape(-1).tolist(), "cases": warps}

bitmap = (rng.random((40, 60)) > 0.55).astype(np.uint8)
bitmap[5:15, 5:25] = 1
bitmap[8:11, 10:14] = 0  # a hole
dilated = cv2.dilate(bitmap, np.array([[1, 1], [1, 1]]))
contours, _ = cv2.findContours((dilated * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
hulls = sorted(sorted(map(tuple, cv2.convexHull(c).reshape(-1, 2).tolist())) for c in contours)
out["contours"] = {"width": 60, "height": 40, "bitmap": bitmap.reshape(-1).tolist(),
                   "dilated": dilated.reshape(-1).tolist(), "hulls": [list(map(list, h)) for h in hulls]}

Path(__file__).with_name("data").mkdir(exist_ok=True)
(Path(__file__).with_name("data") / "opencv_geometry.json").write_text(json.dumps(out))
print(len(rects), len(offsets), len(warps), len(hulls))
