#!/usr/bin/env bash
# The demo: a broker on the old system's machine (a simulated 8 GiB GTX 1070 with
# 1 GiB reserve), a lease taken and released with the CLI, the books shown in between;
# then the detector takes its own lease, and finds the symbols on a sample blueprint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
export PLENUM_BROKER="http://$addr"

echo "== starting plenum-broker on $addr with a simulated GTX 1070 (8 GiB, 1 GiB reserve)"
$BIN/plenum-broker --listen "$addr" --metrics-listen 127.0.0.1:0 --simulate "GTX 1070:8GiB" \
    --reserve 1GiB --recovery-window 0s --log warn &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
until $BIN/plenum health "$addr" >/dev/null 2>&1; do sleep 0.1; done

echo "== the detector takes 2 GiB, loads, and commits the 1.7 GiB it really uses"
fifo=$(mktemp -u); mkfifo "$fifo"
$BIN/plenum broker lease --bytes 2GiB --model detector/hvac-yolov8n --commit 1.7GiB --hold 2s >"$fifo" &
holder=$!
while read -r line; do
    echo "   $line"
    [[ $line == committed* ]] && break
done <"$fifo"

echo "== the books while the lease is held"
$BIN/plenum broker status

echo "== ocr asks for 6 GiB: it does not fit, so it is told to use the CPU"
$BIN/plenum broker lease --bytes 6GiB --model ocr/ppocr-v4 2>&1 | sed 's/^/   /' || true

cat "$fifo" | sed 's/^/   /'
wait $holder
rm -f "$fifo"
echo "== the books after the release"
$BIN/plenum broker status

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
det="127.0.0.1:$(free_port)"
echo "== starting plenum-detector on $det: it asks the broker for a lease (GPU simulated, compute on CPU)"
$BIN/plenum-detector --listen "$det" --metrics-listen 127.0.0.1:0 --broker "$PLENUM_BROKER" \
    --device sim-gpu --log warn &
detector=$!
trap 'kill $detector $broker 2>/dev/null; wait 2>/dev/null || true' EXIT
until $BIN/plenum health "$det" >/dev/null 2>&1; do sleep 0.2; done
$BIN/plenum broker status

page=tests/pages/page_0000
echo "== Detect on $page.png (1600x1200, fed at its own scale: the symbols are small)"
printf '{"images": ["%s"]}' "$(base64 -w0 "$page.png")" |
    .venv/bin/grpcurl -plaintext -max-msg-sz 67108864 -d @ "$det" plenum.detector.v1.Detector/Detect |
    python3 scripts/show-detections.py "$page.json"
