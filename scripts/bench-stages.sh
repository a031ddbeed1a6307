#!/usr/bin/env bash
# Where a page's time goes in a `plenum up` stack: each model's time per page (from the
# services' inference histograms) beside the gateway's stage timings, pages one at a time.
# Needs release binaries (`make build`). The stack takes its settings from the environment
# (PLENUM_MODEL_FORMAT, PLENUM_FAST_READ_WITHIN, PLENUM_PASS_SCALE, ...).
# Usage: scripts/bench-stages.sh [PAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${1:-12}
ROUNDS=${2:-1}
BIN=${BIN:-target/release}
export OMP_WAIT_POLICY=PASSIVE
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Four metrics ports from the base (gateway, broker, detector, OCR): a free range.
base=$(python3 -c 'import random; print(random.randrange(20000, 30000, 10))')
gateway="127.0.0.1:$(free_port)"
log=$(mktemp)
"$BIN/plenum" up --gateway "$gateway" --broker "127.0.0.1:$(free_port)" \
    --detector "127.0.0.1:$(free_port)" --ocr "127.0.0.1:$(free_port)" \
    --metrics-port-base "$base" --log warn >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null || true; wait $up 2>/dev/null || true; rm -f "$log"' EXIT
until grep -q '^ready:' "$log"; do
    kill -0 "$up" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
mapfile -t pages < <(ls tests/pages/page_*.png | head -n "$PAGES")
echo "== $PAGES pages x $ROUNDS rounds; $(nproc) CPUs; load $(cut -d" " -f1-3 /proc/loadavg)"
.venv/bin/python scripts/bench-stages.py "$gateway" "$base" "$ROUNDS" "${pages[@]}"
