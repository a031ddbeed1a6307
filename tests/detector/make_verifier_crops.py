#!/usr/bin/env python3
"""Writes verifier_crops.json: the verifier's input for a few boxes on a page, as
training/train_verifier.py makes it. services/detector/tests/verifier.rs checks the Rust
crop against it and tests/python/test_verifier_crops.py checks it is still what the
training code makes, so the two crops cannot drift apart.

    .venv/bin/python tests/detector/make_verifier_crops.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "training"))

PAGE = "tests/pages-independent/page_0003.png"  # a scanned page: grey paper, blur, JPEG
BOXES = [
    [701.3, 402.8, 760.6, 461.1],  # inside the page, uneven pooling (78 px into 48)
    [3.4, 1150.2, 40.9, 1199.0],  # over the page's corner: white beyond it
    [990.0, 500.0, 1001.5, 509.0],  # smaller than the crop: pixels repeated
    [100.0, 100.0, 420.0, 260.0],  # large and wide
]


def crops() -> list[list[float]]:
    import cv2
    from train_verifier import crop_square, model_input

    gray = cv2.imread(str(HERE.parents[1] / PAGE), cv2.IMREAD_GRAYSCALE)
    x = model_input([crop_square(gray, box) for box in BOXES])
    return [[round(float(v), 5) for v in row.flatten()] for row in x]


if __name__ == "__main__":
    out = HERE / "verifier_crops.json"
    out.write_text(json.dumps({"page": PAGE, "boxes": BOXES, "inputs": crops()}, separators=(",", ":")) + "\n")
    print("wrote", out, out.stat().st_size, "bytes")
