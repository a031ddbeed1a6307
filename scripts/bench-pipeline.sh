#!/usr/bin/env bash
# The whole pipeline (Analyze through the gateway of a `plenum up` stack) against the best
# configuration of Ultralytics + RapidOCR in one Python process, same pages and threads.
# Needs release binaries (`make build`) and Ultralytics (python/requirements-train.txt,
# installed here if missing). Usage: scripts/bench-pipeline.sh [PAGES] [ROUNDS] [--sweep]
# (--sweep: also the baseline alone at imgsz 960, 1280 and 1600).
# FORMATS="auto torchscript" starts one stack per --model-format (PLENUM_MODEL_FORMAT) and
# interleaves them all with the baseline: before and after AOTInductor in one run. An entry
# FORMAT@SCALE (e.g. auto@0.8) runs the detector at --pass-scale SCALE; a trailing /exact
# (auto/exact) turns OCR's fast reading within regions off (PLENUM_FAST_READ_WITHIN=false).
# ALL_TEXT=1 also calls each stack with include_unassigned_text, which reads every line of
# the page as the gateway did before it sent OCR only the symbols' search regions
# (read_within).
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${1:-12}
ROUNDS=${2:-2}
SWEEP=${3:-}
FORMATS=${FORMATS:-auto}
BIN=${BIN:-target/release}  # BIN=target/debug when no release build is at hand
export OMP_WAIT_POLICY=PASSIVE YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/training/runs/yolo-config"
mkdir -p "$YOLO_CONFIG_DIR"
.venv/bin/python -c 'import ultralytics' 2>/dev/null ||
    .venv/bin/python -m pip install --quiet -r python/requirements-train.txt

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
stacks=() ups=() logs=() pids=()
stop() {
    for up in "${ups[@]}"; do kill -INT "$up" 2>/dev/null || true; done
    for up in "${ups[@]}"; do wait "$up" 2>/dev/null || true; done
    rm -f "${logs[@]}"
}
trap stop EXIT
for entry in $FORMATS; do
    spec=${entry%/exact} fast=true
    if [[ $entry == */exact ]]; then fast=false; fi
    format=${spec%@*} scale=1
    if [[ $spec == *@* ]]; then scale=${spec#*@}; fi
    gateway="127.0.0.1:$(free_port)"
    log=$(mktemp)
    PLENUM_MODEL_FORMAT=$format PLENUM_PASS_SCALE=$scale PLENUM_FAST_READ_WITHIN=$fast "$BIN/plenum" up --gateway "$gateway" \
        --broker "127.0.0.1:$(free_port)" --detector "127.0.0.1:$(free_port)" \
        --ocr "127.0.0.1:$(free_port)" --metrics-port-base 0 --log warn >"$log" 2>&1 &
    ups+=($!) logs+=("$log") stacks+=("plenum-$entry=$gateway") pids+=("plenum-$entry=$!")
    if [[ ${ALL_TEXT:-} == 1 ]]; then stacks+=("plenum-$entry-all-text=$gateway+all-text"); fi
    until grep -q '^ready:' "$log"; do
        kill -0 "${ups[-1]}" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.5
    done
done
mapfile -t pages < <(ls tests/pages/page_*.png | head -n "$PAGES")
echo "== $PAGES pages x $ROUNDS rounds, interleaved page by page; $(nproc) CPUs; load $(cut -d" " -f1-3 /proc/loadavg)"
PLENUM_UP_PIDS="${pids[*]}" .venv/bin/python scripts/bench-pipeline.py "${stacks[*]}" "$ROUNDS" $SWEEP "${pages[@]}"
