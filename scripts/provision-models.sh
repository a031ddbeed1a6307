#!/usr/bin/env bash
# Provision generated model files (idempotent; see models/README.md).
#
#   scripts/provision-models.sh            # convert + verify only if something changed
#   scripts/provision-models.sh --force    # always reconvert + verify
#   scripts/provision-models.sh --check    # exit 0 if up to date, 3 if not, convert nothing
#
# Uses the project venv ($VENV, default ./.venv) which must have torch, onnx, onnxruntime,
# onnx2torch and rapidocr-onnxruntime installed. Works offline.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "error: no python in $VENV (create the project venv first, or set VENV=...)" >&2
    exit 1
fi

# libgomp spin-waits by default, which is 10-25x slower on shared/small VMs.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# OCR: PP-OCRv4 mobile (det/rec) + ppocr mobile v2 angle classifier -> TorchScript + manifests.
"$PY" "$ROOT/models/provision_ocr.py" --out "$ROOT/models/ocr/generated" "$@"

# fp16 variants of the detector and the OCR models, verified against fp32 (idempotent).
"$PY" "$ROOT/models/provision_variants.py" "$@"
# AOTInductor packages for the CPU, compiled here for this machine (~30-100 s per model,
# once): what the engine runs on the CPU when present; TorchScript stays the fallback. The
# detector's needs Ultralytics (python/requirements-train.txt) and is skipped without it.
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$ROOT/training/runs/yolo-config}"
mkdir -p "$YOLO_CONFIG_DIR"
"$PY" "$ROOT/models/provision_aoti.py" "$@"
# RapidOCR's ONNX files for ONNX Runtime, each timed here against its package and TorchScript:
# `--model-format auto` runs ONNX Runtime for a model only where it was the fastest (~1 min, once).
"$PY" "$ROOT/models/provision_onnx.py" "$@"

# The YOLO detector's TorchScript (models/detector, trained by training/) is provisioned separately.
