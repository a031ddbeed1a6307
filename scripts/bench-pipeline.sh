#!/usr/bin/env bash
# The whole pipeline (Analyze through the gateway of a `plenum up` stack) against
# Ultralytics + RapidOCR in one Python process, same pages and thread count.
# Needs release binaries (`make build`) and Ultralytics (python/requirements-train.txt,
# installed here if missing). Usage: scripts/bench-pipeline.sh [PAGES] [ROUNDS] [--sweep]
# (--sweep: also the baseline alone at imgsz 960, 1280 and 1600).
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${1:-12}
ROUNDS=${2:-2}
SWEEP=${3:-}
export OMP_WAIT_POLICY=PASSIVE YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/training/runs/yolo-config"
mkdir -p "$YOLO_CONFIG_DIR"
.venv/bin/python -c 'import ultralytics' 2>/dev/null ||
    .venv/bin/python -m pip install --quiet -r python/requirements-train.txt

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gateway="127.0.0.1:$(free_port)"
log=$(mktemp)
target/release/plenum up --gateway "$gateway" --broker "127.0.0.1:$(free_port)" \
    --detector "127.0.0.1:$(free_port)" --ocr "127.0.0.1:$(free_port)" \
    --metrics-port-base 0 --log warn >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true; rm -f "$log"' EXIT
until grep -q '^ready:' "$log"; do
    kill -0 $up 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
mapfile -t pages < <(ls tests/pages/page_*.png | head -n "$PAGES")
echo "== $PAGES pages x $ROUNDS rounds, interleaved page by page; $(nproc) CPUs; load $(cut -d" " -f1-3 /proc/loadavg)"
.venv/bin/python scripts/bench-pipeline.py "$gateway" "$ROUNDS" $SWEEP "${pages[@]}"
