#!/usr/bin/env bash
# The GPU checks (issues 3 and 10). Build here:    scripts/gpu-check.sh --build
# Run on a GPU machine (no Rust there):           scripts/gpu-check.sh
#   1. every model on cuda:0 through a broker lease on NVML: granted against measured,
#      latency, one offload and promotion (plenum-gpu-check);
#   2. the old system's crash replayed (plenum-gpu-check burst): broker on NVML, detector
#      and OCR services on cuda, a burst of large pages, NVML sampled every 100 ms against
#      each process's leases, and one deliberate over-allocation that must stay within
#      the detector's leases (answered under them, from the CPU, or refused).
# Try the burst without a GPU: scripts/gpu-check.sh --burst-only --simulate "GTX 1070:8GiB"
# On the GPU machine, torch 2.11.0's libraries come from its own Python:
#   python3 -c 'import torch; print(torch.__path__)'
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--build" ]]; then
    cargo build --release --workspace --bins
    mkdir -p out/gpu-check
    for bin in plenum-gpu-check plenum-broker plenum-detector plenum-ocr; do
        cp "target/release/$bin" out/gpu-check/
    done
    echo "built out/gpu-check/ (carry out/ and models/ to the GPU machine)"
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
if [[ "${1:-}" == "--burst-only" ]]; then
    shift
    exec "$BIN" burst --bin "$(dirname "$BIN")" "$@"
fi
"$BIN" "$@"
exec "$BIN" burst --bin "$(dirname "$BIN")"
