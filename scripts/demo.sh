#!/usr/bin/env bash
# The demo: the whole stack on this machine with `plenum up` (a simulated 8 GiB
# GTX 1070, the old system's card, so the leases are real while compute stays on the
# CPU), then a sample blueprint analyzed end to end: symbols found, tags read, a
# table printed and an annotated PNG written.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=${DEMO_OUT:-demo-out}
PAGE=${DEMO_PAGE:-tests/pages/page_0000.png}
mkdir -p "$OUT"
log="$OUT/plenum-up.log"

echo "== plenum up: broker, detector, OCR and gateway (logs in $OUT/logs)"
$BIN/plenum up --simulate-gpu "GTX 1070:8GiB" --log warn --log-dir "$OUT/logs" >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
until grep -q '^ready:' "$log"; do
    if ! kill -0 $up 2>/dev/null; then
        cat "$log"
        echo "plenum up failed" >&2
        exit 1
    fi
    sleep 0.5
done
sed -n '/^SERVICE/,/^$/p' "$log"

echo "== the GPU books: each model service holds a lease for its weights"
$BIN/plenum broker --broker http://127.0.0.1:7001 status

echo "== plenum analyze $PAGE"
$BIN/plenum analyze "$PAGE" --out "$OUT"

truth="${PAGE%.png}.json"
if [[ -f $truth ]]; then
    echo "== the generator's ground truth for this page, for comparison"
    python3 - "$truth" <<'PY'
import json, sys
tags = sorted(symbol["tag"] for symbol in json.load(open(sys.argv[1]))["symbols"])
print(f"   {len(tags)} symbols: " + ", ".join(tags))
PY
fi

echo "== stopping the stack"
kill -INT $up
wait $up || true
trap - EXIT
tail -n 5 "$log"
