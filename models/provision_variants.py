#!/usr/bin/env python3
"""Provision the fp16 and int8 variants of the served models, verified against fp32.

For each manifest (default: the detector and the three OCR models):

  1. load the fp32 TorchScript file, convert every floating-point parameter and buffer to
     half precision (`module.half()`), save it beside the original as `<stem>.fp16.pt`;
  2. run both on fixed-seed inputs of the shapes the services feed (on the CPU: libtorch
     2.11 runs fp16 convolutions there, slowly) and compare, relative to the largest
     fp32 output magnitude: the mean absolute difference must stay within MEAN_TOLERANCE
     and the largest within MAX_TOLERANCE; for the classifiers (text angle, text
     recognition) the arg-max per row/step, and for the text detector the binarised
     map (threshold 0.3, as the OCR service cuts it), must agree on at least
     AGREEMENT of them;
  3. write `<manifest stem>.variants.toml` beside the manifest: the variant's file,
     sha256, VRAM estimate (half the fp32 estimate: weights and activations halve; an
     estimate until a GPU measures it, see scripts/gpu-check.sh) and the measured
     difference. The engine reads it with the manifest (`--precision fp16`).

The OCR models also get an int8 variant, `<stem>.int8.pt` (models/quantize_ocr.py: static
post-training quantization calibrated on real pages). Quantized kernels run only on the
CPU in libtorch, so the variant is for the CPU: its `vram_estimate_bytes` is 0 and the
engine never asks for a lease with `--precision int8`. It is verified against fp32 on
real inputs the calibration never saw (tests/pages 0-2, shaped as the service feeds
them), on the decisions taken from the outputs (INT8_MINIMUM). A variant that misses
is not listed (the reason is printed); the fp16 variant still is.

Idempotent: a variant whose file still matches its checksum and whose fp32 source is
unchanged is left alone.  Usage:

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/provision_variants.py [--force|--check] [MANIFEST...]

--check converts nothing and exits 3 when a variant is missing or stale.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFESTS = [
    REPO / "models" / "detector" / "hvac-yolov8n.toml",
    REPO / "models" / "ocr" / "generated" / "ppocr-v4-det.toml",
    REPO / "models" / "ocr" / "generated" / "ppocr-v4-rec.toml",
    REPO / "models" / "ocr" / "generated" / "ppocr-mobile-v2-cls.toml",
]
# fp16 has an 11-bit mantissa (~5e-4 relative per operation); through tens of layers
# single outputs drift by a few 1e-2 of their range, the mean far less. Larger means
# a layer overflowed or lost its range.
MEAN_TOLERANCE = 5e-3
MAX_TOLERANCE = 1e-1
AGREEMENT = 0.99
DET_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5  # DB's box_thresh, as services/ocr/src/detect.rs keeps boxes
# int8 steps are ~1/256 of each activation's range: single outputs move far more than
# fp16's, so int8 is judged on the decisions the services take from the outputs, each
# at least this often the same as fp32's. Worst batch for the per-row/step/pixel
# figures; over all crops/pages for the others.
INT8_MINIMUM = {
    # the crop's side (0 or 180 degrees)
    "text-angle": {"agreement": 0.97},
    # each step's character; and the crops' text after CTC decoding: right (the tag's
    # true text) at most 1 in 36 less often than fp32 ("tags_read" is int8's share
    # minus fp32's; int8 also reads some tags right that fp32 misreads)
    "text-recognize": {"agreement": 0.95, "tags_read": -1 / 36},
    # the binarised map's pixels, the text pixels' IoU (most of a page is background:
    # plain agreement would hide a lost word), and fp32's text regions (connected
    # components, IoU >= 0.5), which DB post-processing turns into boxes
    "text-detect": {"agreement": 0.99, "text_iou": 0.85, "regions_found": 0.97},
}
INT8_VERIFY_PAGES = range(0, 3)

# Input shapes and value ranges as the services feed them (after normalisation).
INPUTS = {
    "detect": ([2, 3, 640, 640], (0.0, 1.0)),
    "text-detect": ([1, 3, 640, 640], (-1.0, 1.0)),
    "text-recognize": ([8, 3, 48, 320], (-1.0, 1.0)),
    "text-angle": ([8, 3, 48, 192], (-1.0, 1.0)),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def variants_path(manifest: Path) -> Path:
    return manifest.with_suffix(".variants.toml")


def recipe_sha256() -> str:
    """The scripts that make the variants: a change to either makes them again."""
    scripts = [Path(__file__).resolve(), REPO / "models" / "quantize_ocr.py"]
    return hashlib.sha256(b"".join(sha256(path).encode() for path in scripts)).hexdigest()


def up_to_date(manifest: Path, spec: dict) -> bool:
    path = variants_path(manifest)
    if not path.exists():
        return False
    listed = tomllib.loads(path.read_text())
    if listed.get("source_sha256") != spec["sha256"]:
        return False
    if listed.get("recipe_sha256") != recipe_sha256():
        return False
    for variant in listed.get("variants", []):
        file = manifest.parent / variant["file"]
        if not file.exists() or sha256(file) != variant["sha256"]:
            return False
    return bool(listed.get("variants"))


def first_tensor(output):
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def compare(task: str, fp32, fp16, label: str = "fp16") -> dict:
    import torch

    reference = first_tensor(fp32).float()
    half = first_tensor(fp16).float()
    if not torch.isfinite(half).all():
        raise SystemExit(f"{task}: the {label} model produced inf/nan")
    scale = reference.abs().max().item() or 1.0
    diff = (half - reference).abs()
    result = {
        "max_rel_diff": diff.max().item() / scale,
        "mean_rel_diff": diff.mean().item() / scale,
    }
    if task in ("text-recognize", "text-angle"):
        result["agreement"] = (half.argmax(-1) == reference.argmax(-1)).float().mean().item()
    if task == "text-detect":
        same = (half > DET_THRESHOLD) == (reference > DET_THRESHOLD)
        result["agreement"] = same.float().mean().item()
    return result


def provision(manifest: Path, force: bool) -> None:
    spec = tomllib.loads(manifest.read_text())
    name = spec["name"]
    if not force and up_to_date(manifest, spec):
        print(f"{name}: variants up to date")
        return
    import torch

    source = manifest.parent / spec["file"]
    if sha256(source) != spec["sha256"]:
        raise SystemExit(f"{source}: sha256 differs from {manifest}; re-provision fp32 first")
    target = source.with_name(Path(spec["file"]).stem + ".fp16.pt")
    module = torch.jit.load(str(source), map_location="cpu").eval()
    half = torch.jit.load(str(source), map_location="cpu").eval().half()
    torch.jit.save(half, str(target))
    half = torch.jit.load(str(target), map_location="cpu").eval()

    shape, (low, high) = INPUTS[spec["task"]]
    worst: dict = {}
    with torch.no_grad():
        for seed in (0, 1):
            generator = torch.Generator().manual_seed(seed)
            x = torch.rand(shape, generator=generator) * (high - low) + low
            measured = compare(spec["task"], module(x), half(x.half()))
            for key, value in measured.items():
                pick = min if key == "agreement" else max
                worst[key] = pick(worst.get(key, value), value)
    summary = ", ".join(f"{key} {value:.3g}" for key, value in worst.items())
    if worst["mean_rel_diff"] > MEAN_TOLERANCE or worst["max_rel_diff"] > MAX_TOLERANCE:
        raise SystemExit(
            f"{name}: fp16 outside tolerance (mean {MEAN_TOLERANCE}, max {MAX_TOLERANCE}): {summary}"
        )
    if worst.get("agreement", 1.0) < AGREEMENT:
        raise SystemExit(f"{name}: fp16 agrees on fewer than {AGREEMENT:.0%}: {summary}")
    estimate = int(spec["vram_estimate_bytes"]) // 2
    lines = [
        "# generated by models/provision_variants.py -- do not edit",
        f'source_sha256 = "{spec["sha256"]}"',
        f'recipe_sha256 = "{recipe_sha256()}"',
        "",
        "[[variants]]",
        'precision = "fp16"',
        f'file = "{target.name}"',
        f'sha256 = "{sha256(target)}"',
        f"vram_estimate_bytes = {estimate}",
        f"verified_max_rel_diff = {worst['max_rel_diff']:.6f}",
        f"verified_mean_rel_diff = {worst['mean_rel_diff']:.6f}",
    ]
    if "agreement" in worst:
        lines.append(f"verified_agreement = {worst['agreement']:.6f}")
    print(f"{name}: fp16 variant {target.name} written; {summary}")
    if spec["task"] in INT8_TASKS:
        lines += int8_variant(manifest, spec, module)
    variants_path(manifest).write_text("\n".join(lines) + "\n")


INT8_TASKS = ("text-detect", "text-recognize", "text-angle")


def int8_variant(manifest: Path, spec: dict, fp32) -> list[str]:
    """The int8 variant's lines for the variants file, or none when it fails to convert
    or verify (printed; the other variants are still listed)."""
    import time

    import torch

    sys.path.insert(0, str(REPO / "models"))
    import quantize_ocr

    name, task = spec["name"], spec["task"]
    target = manifest.parent / (Path(spec["file"]).stem + ".int8.pt")
    started = time.perf_counter()
    try:
        traced, calibrated = quantize_ocr.quantize(task)
        torch.jit.save(traced, str(target))
        int8 = torch.jit.load(str(target), map_location="cpu").eval()
        measured = verify_int8(manifest, spec, fp32, int8)
    except (Exception, SystemExit) as error:  # noqa: BLE001  (one variant must not fail the setup)
        target.unlink(missing_ok=True)
        print(f"{name}: int8 variant not made: {type(error).__name__}: {error}")
        return []
    summary = ", ".join(f"{key} {value:.3g}" for key, value in measured.items())
    took = time.perf_counter() - started
    missed = [f"{key} {measured[key]:.3g} < {low}" for key, low in INT8_MINIMUM[task].items() if measured[key] < low]
    if missed:
        target.unlink(missing_ok=True)
        print(f"{name}: int8 variant not listed ({took:.0f}s), outside tolerance ({'; '.join(missed)}): {summary}")
        return []
    print(f"{name}: int8 variant {target.name} written ({calibrated} calibration batches, {took:.0f}s); {summary}")
    return [
        "",
        "# CPU only: libtorch has no CUDA kernels for quantized convolutions; the engine",
        "# runs --precision int8 on the CPU and never asks for a lease, so no VRAM estimate.",
        "[[variants]]",
        'precision = "int8"',
        f'file = "{target.name}"',
        f'sha256 = "{sha256(target)}"',
        "vram_estimate_bytes = 0",
        f"verified_max_rel_diff = {measured['max_rel_diff']:.6f}",
        f"verified_mean_rel_diff = {measured['mean_rel_diff']:.6f}",
    ] + [f"verified_{key} = {value:.6f}" for key, value in measured.items() if key not in ("max_rel_diff", "mean_rel_diff")]


def verify_int8(manifest: Path, spec: dict, fp32, int8) -> dict:
    """Worst-case differences and agreement of int8 with fp32 over INT8_VERIFY_PAGES."""
    import torch

    import quantize_ocr

    task = spec["task"]
    worst: dict = {}
    text_both = text_either = regions = recovered = rows = same_rows = 0
    right = {"fp32": 0, "int8": 0}
    batches, truths = quantize_ocr.labelled_inputs(task, INT8_VERIFY_PAGES)
    alphabet = dictionary(manifest.parent / spec["labels"]["dictionary"]) if task == "text-recognize" else []
    with torch.no_grad():
        for number, batch in enumerate(batches):
            reference, quantized = first_tensor(fp32(batch)), first_tensor(int8(batch))
            measured = compare(task, reference, quantized, "int8")
            if task == "text-recognize":
                steps = zip(reference.argmax(-1).tolist(), quantized.argmax(-1).tolist(), truths[number])
                for a, b, truth in steps:
                    rows += 1
                    same_rows += ctc(a) == ctc(b)
                    right["fp32"] += "".join(alphabet[i] for i in ctc(a)) == truth
                    right["int8"] += "".join(alphabet[i] for i in ctc(b)) == truth
            if task == "text-detect":
                a, b = reference > DET_THRESHOLD, quantized > DET_THRESHOLD
                text_both += (a & b).sum().item()
                text_either += (a | b).sum().item()
                truth = text_regions(a[0, 0].numpy(), reference[0, 0].numpy())
                found = text_regions(b[0, 0].numpy(), quantized[0, 0].numpy())
                regions += len(truth)
                recovered += sum(any(box_iou(t, f) >= 0.5 for f in found) for t in truth)
            for key, value in measured.items():
                pick = min if key == "agreement" else max
                worst[key] = pick(worst.get(key, value), value)
    if task == "text-recognize":
        worst["sequences"] = same_rows / max(rows, 1)
        worst["tags_read"] = (right["int8"] - right["fp32"]) / max(rows, 1)
        worst["tags_read_fp32"] = right["fp32"] / max(rows, 1)
    if task == "text-detect":
        worst["text_iou"] = text_both / max(text_either, 1)
        worst["regions_found"] = recovered / max(regions, 1)
    return worst


def dictionary(path: Path) -> list[str]:
    """The recognizer's classes: blank, the dictionary's lines, space."""
    return [""] + path.read_text(encoding="utf-8").splitlines() + [" "]


def ctc(steps: list[int]) -> list[int]:
    """Greedy CTC: repeats merged, blanks (0) dropped."""
    return [index for i, index in enumerate(steps) if index != 0 and (i == 0 or index != steps[i - 1])]


def text_regions(binary, scores) -> list[list[int]]:
    """Bounding boxes of the connected text regions of a binarised map that DB
    post-processing keeps as text boxes: sides of 3+ px, mean score >= 0.5 inside."""
    import cv2
    import numpy as np

    count, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(binary, np.uint8), connectivity=8)
    return [
        [x, y, x + w, y + h]
        for x, y, w, h, _ in stats[1:count].tolist()
        if min(w, h) >= 3 and scores[y : y + h, x : x + w].mean() >= BOX_THRESHOLD
    ]


def box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="*", type=Path, default=DEFAULT_MANIFESTS)
    parser.add_argument("--force", action="store_true", help="convert and verify again")
    parser.add_argument("--check", action="store_true", help="exit 3 if anything is stale")
    args = parser.parse_args()
    if args.check:
        stale = [
            m.name for m in args.manifests if not up_to_date(m, tomllib.loads(m.read_text()))
        ]
        print("variants: " + (f"stale: {', '.join(stale)}" if stale else "up to date"))
        return 3 if stale else 0
    for manifest in args.manifests:
        provision(manifest, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
