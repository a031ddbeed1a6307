#!/usr/bin/env python3
"""Accuracy of the fp16 and int8 variants against fp32 on the test pages, on the CPU.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/eval_variants.py [--pages N] [--latency]

- Detector (hvac-yolov8n): the first N pages (default 8; fp16 convolutions are slow on a
  CPU) of tests/pages cut into 640x640 tiles (native scale,
  as the detector service feeds it); boxes with score >= 0.25 after NMS (IoU 0.7). Reports
  recall of the ground-truth symbols (a detection of the right class with IoU >= 0.5) for
  each precision, and how many fp16 detections match an fp32 one (same class, IoU >= 0.9).
- Text angle + recognition (ppocr cls + rec): the 36 tag crops of tests/ocr (cut from
  pages 0-2, with the true text), each shaped as the OCR service feeds it (height 48,
  zero-padded to 320 / 192 wide); exact-match accuracy for each precision, greedy CTC
  decoding, and how many crops each variant reads as fp32 does.
- Text detection (ppocr det): the first N pages at the service's input size (short side
  736+, x32); the map binarised at 0.3: intersection over union of the text pixels with
  fp32's, and the text regions of fp32 (connected components with 3+ px sides and a mean
  score >= 0.5, as DB keeps boxes) that the variant finds too (IoU >= 0.5).
- --latency: median of 5 calls (after one warm-up, the precisions taking turns) per
  model and precision on the CPU with 2 threads, on service-shaped inputs: det one
  1216x1600 page, rec and cls a batch of 6 crops (48x320, 48x192). fp16 is left out
  (CPU fp16 is not a serving choice).

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


sys.path.insert(0, str(REPO / "models"))
import quantize_ocr  # noqa: E402
from provision_variants import text_regions as regions  # noqa: E402


def precisions(manifest: Path) -> list[str]:
    """fp32 and the variants provisioning listed for `manifest`."""
    path = manifest.with_suffix(".variants.toml")
    listed = tomllib.loads(path.read_text()).get("variants", []) if path.exists() else []
    return ["fp32"] + [v["precision"] for v in listed]


def load(manifest: Path, precision: str):
    spec = tomllib.loads(manifest.read_text())
    file = spec["file"]
    if precision != "fp32":
        variants = tomllib.loads(manifest.with_suffix(".variants.toml").read_text())
        file = next(v["file"] for v in variants["variants"] if v["precision"] == precision)
    module = torch.jit.load(str(manifest.parent / file), map_location="cpu").eval()
    # int8 models quantize their f32 input themselves; only fp16 takes half input
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


def ocr() -> None:
    generated = REPO / "models" / "ocr" / "generated"
    reference = json.loads((REPO / "tests" / "ocr" / "reference.json").read_text())
    keys = (generated / "ppocr_keys_v4.txt").read_text().splitlines()
    alphabet = ["<blank>"] + keys + [" "]
    rec_manifest, cls_manifest = generated / "ppocr-v4-rec.toml", generated / "ppocr-mobile-v2-cls.toml"
    crops = [Image.open(REPO / "tests" / "ocr" / case["crop"]).convert("RGB") for case in reference["cases"]]
    read: dict[str, list[str]] = {}
    listed = {"rec": precisions(rec_manifest), "cls": precisions(cls_manifest)}
    for precision in dict.fromkeys(listed["cls"] + listed["rec"]):
        # a model without this variant runs in fp32 (and the label says so)
        use = {key: precision if precision in there else "fp32" for key, there in listed.items()}
        rec, _ = load(rec_manifest, use["rec"])
        cls, _ = load(cls_manifest, use["cls"])
        if len(set(use.values())) > 1:
            precision = f"{precision} (cls {use['cls']}, rec {use['rec']})"
        texts = []
        for crop in crops:
            with torch.no_grad():
                angle = cls(quantize_ocr.cls_batches([crop])[0])
                if angle.argmax(-1).item() == 1 and angle.max().item() > 0.9:
                    crop = crop.rotate(180)
                steps = rec(quantize_ocr.rec_batches([crop])[0])[0].argmax(-1).tolist()
            text, last = [], 0
            for index in steps:
                if index != last and index != 0:
                    text.append(alphabet[index])
                last = index
            texts.append("".join(text))
        read[precision] = texts
        right = sum(text == case["truth"] for text, case in zip(texts, reference["cases"]))
        print(f"ocr {precision}: {right}/{len(texts)} tags read exactly")
    for precision, texts in read.items():
        if precision != "fp32":
            same = sum(a == b for a, b in zip(read["fp32"], texts))
            print(f"ocr: {precision} reads the same text as fp32 on {same}/{len(texts)} crops")


def text_detect(pages: int) -> None:
    manifest = REPO / "models" / "ocr" / "generated" / "ppocr-v4-det.toml"
    runs = {p: load(manifest, p)[0] for p in precisions(manifest)}
    both = {p: 0 for p in runs}
    either = {p: 0 for p in runs}
    found = {p: 0 for p in runs}
    total = 0
    for batch in quantize_ocr.inputs("text-detect", range(pages)):
        with torch.no_grad():
            scores = {p: run(batch)[0, 0].numpy() for p, run in runs.items()}
        maps = {p: score > 0.3 for p, score in scores.items()}
        truth = regions(maps["fp32"], scores["fp32"])
        total += len(truth)
        for precision, binary in maps.items():
            both[precision] += int((binary & maps["fp32"]).sum())
            either[precision] += int((binary | maps["fp32"]).sum())
            mine = regions(binary, scores[precision])
            found[precision] += sum(any(iou(t, m) >= 0.5 for m in mine) for t in truth)
    for precision in runs:
        if precision != "fp32":
            print(
                f"text detector, {pages} pages, {precision}: text-pixel IoU with fp32 "
                f"{both[precision] / max(either[precision], 1):.3f}; {found[precision]}/{total} "
                "fp32 text regions found (IoU >= 0.5)"
            )


def latency() -> None:
    import statistics
    import time

    generated = REPO / "models" / "ocr" / "generated"
    shapes = {
        "ppocr-v4-det": quantize_ocr.inputs("text-detect", [0])[0],
        "ppocr-v4-rec": quantize_ocr.inputs("text-recognize", [0])[0],
        "ppocr-mobile-v2-cls": quantize_ocr.inputs("text-angle", [0])[0],
    }
    for name, batch in shapes.items():
        manifest = generated / f"{name}.toml"
        runs = {p: load(manifest, p)[0] for p in precisions(manifest) if p != "fp16"}
        samples: dict[str, list[float]] = {p: [] for p in runs}
        with torch.no_grad():
            for run in runs.values():
                run(batch)  # warm-up
            # precisions take turns, so the noise of a shared machine falls on all of them
            for _ in range(5):
                for precision, run in runs.items():
                    started = time.perf_counter()
                    run(batch)
                    samples[precision].append(time.perf_counter() - started)
        figures = [f"{p} {statistics.median(t) * 1000:.0f} ms" for p, t in samples.items()]
        print(f"latency {name} {list(batch.shape)}: " + ", ".join(figures))


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--latency", action="store_true", help="also time fp32 and int8 OCR models")
    parser.add_argument("--skip-detector", action="store_true", help="leave out hvac-yolov8n (slow in fp16)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ocr()
    text_detect(args.pages)
    if not args.skip_detector:
        detector(args.pages)
    if args.latency:
        latency()
    return 0


if __name__ == "__main__":
    sys.exit(main())
