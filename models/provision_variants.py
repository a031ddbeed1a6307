#!/usr/bin/env python3
"""Provision the fp16 variants of the served models, verified against fp32.

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


def up_to_date(manifest: Path, spec: dict) -> bool:
    path = variants_path(manifest)
    if not path.exists():
        return False
    listed = tomllib.loads(path.read_text())
    if listed.get("source_sha256") != spec["sha256"]:
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


def compare(task: str, fp32, fp16) -> dict:
    import torch

    reference = first_tensor(fp32).float()
    half = first_tensor(fp16).float()
    if not torch.isfinite(half).all():
        raise SystemExit(f"{task}: the fp16 model produced inf/nan")
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
        print(f"{name}: fp16 variant up to date")
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
    variants_path(manifest).write_text("\n".join(lines) + "\n")
    print(f"{name}: fp16 variant {target.name} written; {summary}")


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
        print("fp16 variants: " + (f"stale: {', '.join(stale)}" if stale else "up to date"))
        return 3 if stale else 0
    for manifest in args.manifests:
        provision(manifest, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
