#!/usr/bin/env bash
# Detector vs Ultralytics predict: same model, images and thread count (2), one run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/training/runs/yolo-config"
mkdir -p "$YOLO_CONFIG_DIR"
ROUNDS="${1:-40}"
echo "== plenum-detector (Rust, tch, gRPC over loopback)"
cargo run --quiet --release -p plenum-detector --example bench_detect -- "$ROUNDS"
echo "== Ultralytics predict (Python, same TorchScript)"
.venv/bin/python scripts/bench-detector.py "$ROUNDS"
