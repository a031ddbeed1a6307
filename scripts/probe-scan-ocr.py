#!/usr/bin/env python3
"""Whether cleaning a scanned page up first lets RapidOCR 1.4.4 read more of its tags: on
each scanned page of a folder (`look.scan` in its truth, as training/independent_gen.py
writes it), the true symbols painted white as the gateway masks them, RapidOCR reads the
whole page as it came and after each clean-up; a tag counts as read exactly when a line
whose centre lies in its true box (6 px slack) reads it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/probe-scan-ocr.py /tmp/fresh
"""
import glob
import json
import os
import sys

import cv2
import numpy as np
from rapidocr_onnxruntime import RapidOCR


def stretch(gray):
    """crates/vision/src/contrast.rs: ink (0.5th percentile) to 0, paper (median) to 255."""
    ink, paper = np.percentile(gray, 0.5), np.median(gray)
    if not (96 <= paper - ink < 224) or paper < 128:
        return gray
    return np.clip((gray.astype(np.float32) - ink) * 255.0 / (paper - ink), 0, 255).astype(np.uint8)


CLEAN_UPS = {
    "as scanned": lambda g: g,
    "stretched": stretch,
    "stretched + median 3": lambda g: cv2.medianBlur(stretch(g), 3),
    "stretched + 1.5x": lambda g: cv2.resize(stretch(g), None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC),
}


def centre_inside(tag_box, line_box, slack=6):
    cx, cy = (line_box[0] + line_box[2]) / 2, (line_box[1] + line_box[3]) / 2
    return tag_box[0] - slack <= cx <= tag_box[2] + slack and tag_box[1] - slack <= cy <= tag_box[3] + slack


def main():
    ocr = RapidOCR()
    totals = {name: [0, 0] for name in CLEAN_UPS}
    for page in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
        truth = json.load(open(page))
        if "scan" not in truth["look"]:
            continue
        gray = cv2.imread(page[:-5] + ".png", cv2.IMREAD_GRAYSCALE)
        for s in truth["symbols"]:
            x0, y0, x1, y1 = s["box"]
            gray[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = 255
        row = []
        for name, clean_up in CLEAN_UPS.items():
            image = clean_up(gray.copy())
            scale = image.shape[1] / gray.shape[1]
            result, _ = ocr(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
            lines = [([min(p[0] for p in q) / scale, min(p[1] for p in q) / scale,
                       max(p[0] for p in q) / scale, max(p[1] for p in q) / scale], text.replace(" ", ""))
                     for q, text, _ in (result or [])]
            exact = sum(s["tag"] in [t for b, t in lines if centre_inside(s["tag_box"], b)] for s in truth["symbols"])
            totals[name][0] += exact
            totals[name][1] += len(truth["symbols"])
            row.append(f"{name} {exact}")
        print(os.path.basename(page), f"{len(truth['symbols'])} tags:", ", ".join(row), flush=True)
    print("all scanned pages, tags read exactly:", {name: f"{e}/{n}" for name, (e, n) in totals.items()})


if __name__ == "__main__":
    main()
