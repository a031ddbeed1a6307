#!/usr/bin/env bash
# plenum-ocr (Rust, tch, gRPC over loopback) vs RapidOCR 1.4.4 (Python, onnxruntime) on the
# same inputs, 8 concurrent callers, 2 intra-op threads each side, one run:
#   ReadText on a 1280x960 drawing sheet; Recognize on 32 tag crops (angle classifier on).
# Usage: scripts/bench-ocr.sh [SECONDS per scenario, default 30] [CALLERS, default 8]
# The service is started fresh for each mode so its VmHWM (peak RSS) is per mode.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
SECONDS_PER="${1:-30}"
CALLERS="${2:-8}"
cargo build --quiet --release -p plenum-ocr --bin plenum-ocr --example bench_ocr
PORT=$((20000 + RANDOM % 20000))
for mode in read recognize; do
  echo "== $mode: plenum-ocr"
  target/release/plenum-ocr --listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
    --device cpu --intra-op-threads 2 --log-format text >/tmp/bench-ocr-$PORT.log 2>&1 &
  PID=$!
  target/release/examples/bench_ocr "127.0.0.1:$PORT" "$mode" "$CALLERS" "$SECONDS_PER"
  echo "{\"side\":\"plenum-ocr\",\"mode\":\"$mode\",\"peak_rss_mib\":$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$PID/status)}"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  echo "== $mode: RapidOCR"
  .venv/bin/python scripts/bench-ocr.py "$mode" "$CALLERS" "$SECONDS_PER"
done
