#!/usr/bin/env python3
"""Accuracy of the fp16 variants against fp32 on the test pages, on the CPU.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/eval_variants.py [--pages N]

- Detector (hvac-yolov8n): the first N pages (default 8; fp16 convolutions are slow on a
  CPU) of tests/pages cut into 640x640 tiles (native scale,
  as the detector service feeds it); boxes with score >= 0.25 after NMS (IoU 0.7). Reports
  recall of the ground-truth symbols (a detection of the right class with IoU >= 0.5) for
  each precision, and how many fp16 detections match an fp32 one (same class, IoU >= 0.9).
- Text angle + recognition (ppocr cls + rec): the 36 tag crops of tests/ocr (cut from the
  pages, with the true text); exact-match accuracy for each precision, greedy CTC decoding.

Run models/provision_variants.py first.
"""
from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TILE = 640


def load(manifest: Path, precision: str):
    spec = tomllib.loads(manifest.read_text())
    file = spec["file"]
    if precision == "fp16":
        variants = tomllib.loads(manifest.with_suffix(".variants.toml").read_text())
        file = next(v["file"] for v in variants["variants"] if v["precision"] == "fp16")
    module = torch.jit.load(str(manifest.parent / file), map_location="cpu").eval()
    kind = torch.float16 if precision == "fp16" else torch.float32
    return lambda x: module(x.to(kind)).float(), spec


def detections(output: torch.Tensor, offset: tuple[int, int]) -> list[tuple[int, list[float]]]:
    rows = output[0].T  # [anchors, 4 + classes]
    scores, classes = rows[:, 4:].max(1)
    keep = scores >= 0.25
    rows, scores, classes = rows[keep], scores[keep], classes[keep]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    kept = torchvision.ops.batched_nms(boxes, scores, classes, 0.7)
    dx, dy = offset
    return [
        (int(classes[i]), (boxes[i] + torch.tensor([dx, dy, dx, dy])).tolist()) for i in kept
    ]


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detector(pages: int) -> None:
    manifest = REPO / "models" / "detector" / "hvac-yolov8n.toml"
    runs = {p: load(manifest, p)[0] for p in ("fp32", "fp16")}
    found = {p: 0 for p in runs}
    truth_count, matched, fp16_total, fp32_total = 0, 0, 0, 0
    for label in sorted((REPO / "tests" / "pages").glob("page_*.json"))[:pages]:
        page = json.loads(label.read_text())
        image = np.asarray(Image.open(label.with_suffix(".png")).convert("RGB"), np.float32) / 255
        height, width = image.shape[:2]
        per = {p: [] for p in runs}
        for y in range(0, height, TILE):
            for x in range(0, width, TILE):
                tile = np.zeros((TILE, TILE, 3), np.float32)
                part = image[y : y + TILE, x : x + TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                batch = torch.from_numpy(tile).permute(2, 0, 1)[None]
                with torch.no_grad():
                    for precision, run in runs.items():
                        per[precision] += detections(run(batch), (x, y))
        for symbol in page["symbols"]:
            truth_count += 1
            for precision in runs:
                if any(
                    c == symbol["class_id"] and iou(box, symbol["box"]) >= 0.5
                    for c, box in per[precision]
                ):
                    found[precision] += 1
        fp16_total += len(per["fp16"])
        fp32_total += len(per["fp32"])
        matched += sum(
            any(c == c32 and iou(box, b32) >= 0.9 for c32, b32 in per["fp32"])
            for c, box in per["fp16"]
        )
    print(
        f"detector, {pages} pages: recall fp32 {found['fp32']}/{truth_count}, fp16 {found['fp16']}/{truth_count}; "
        f"{matched}/{fp16_total} fp16 detections match an fp32 one ({fp32_total} fp32)"
    )


def crop_tensor(path: Path, height: int = 48) -> torch.Tensor:
    # RapidOCR's preprocessing: BGR, height 48, width by aspect ratio, (x/255 - 0.5) / 0.5.
    image = Image.open(path).convert("RGB")
    width = max(8, round(image.width * height / image.height))
    array = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32)[:, :, ::-1]
    array = (array / 255 - 0.5) / 0.5
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def ocr() -> None:
    generated = REPO / "models" / "ocr" / "generated"
    reference = json.loads((REPO / "tests" / "ocr" / "reference.json").read_text())
    keys = (generated / "ppocr_keys_v4.txt").read_text().splitlines()
    alphabet = ["<blank>"] + keys + [" "]
    for precision in ("fp32", "fp16"):
        rec, _ = load(generated / "ppocr-v4-rec.toml", precision)
        cls, _ = load(generated / "ppocr-mobile-v2-cls.toml", precision)
        right, texts = 0, []
        for case in reference["cases"]:
            crop = crop_tensor(REPO / "tests" / "ocr" / case["crop"])
            with torch.no_grad():
                angle = cls(torch.nn.functional.interpolate(crop, size=(48, 192)))
                if angle.argmax(-1).item() == 1 and angle.max().item() > 0.9:
                    crop = crop.flip(2, 3)
                steps = rec(crop)[0].argmax(-1).tolist()
            text, last = [], 0
            for index in steps:
                if index != last and index != 0:
                    text.append(alphabet[index])
                last = index
            texts.append("".join(text))
            right += texts[-1] == case["truth"]
        print(f"ocr {precision}: {right}/{len(reference['cases'])} tags read exactly")
        if precision == "fp32":
            fp32_texts = texts
    same = sum(a == b for a, b in zip(fp32_texts, texts))
    print(f"ocr: fp16 reads the same text as fp32 on {same}/{len(texts)} crops")


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ocr()
    detector(args.pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
