#!/usr/bin/env bash
# The GPU check (issue 3). Build here:    scripts/gpu-check.sh --build
# Run on a GPU machine (no Rust there):  scripts/gpu-check.sh
# On the GPU machine, torch 2.11.0's libraries come from its own Python:
#   python3 -c 'import torch; print(torch.__path__)'
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--build" ]]; then
    cargo build --release -p plenum-gpu-check
    mkdir -p out/gpu-check
    cp target/release/plenum-gpu-check out/gpu-check/
    echo "built out/gpu-check/plenum-gpu-check (carry out/ and models/ to the GPU machine)"
    exit 0
fi
BIN="${BIN:-out/gpu-check/plenum-gpu-check}"
[[ -x "$BIN" ]] || BIN=target/release/plenum-gpu-check
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
if [[ -n "$TORCH_LIB" ]]; then
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || echo "nvidia-smi: not available"
exec "$BIN" "$@"
