#!/usr/bin/env bash
# Memory of each service after real work: a `plenum up` stack on the CPU (no GPU, every
# model service with libtorch's 2 threads) analyses sample pages CONCURRENCY at a time,
# then each process's peak RSS (VmHWM) and current RSS are read from /proc. These are
# the figures behind the Helm chart's memory requests and limits (docs/deploy.md).
#
#   scripts/bench-rss.sh [PAGES, default 10] [CONCURRENCY, default 4]
#
# Needs release binaries (make build; BIN=DIR for others) and the provisioned models.
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${1:-10}
CONCURRENCY=${2:-4}
BIN=${BIN:-target/release}
export OMP_WAIT_POLICY=PASSIVE PLENUM_INTRA_OP_THREADS=2
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gateway="127.0.0.1:$(free_port)"
log=$(mktemp)
out=$(mktemp -d)
"$BIN/plenum" up --gateway "$gateway" --broker "127.0.0.1:$(free_port)" \
    --detector "127.0.0.1:$(free_port)" --ocr "127.0.0.1:$(free_port)" \
    --metrics-port-base 0 --log warn >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true; rm -rf "$log" "$out"' EXIT
until grep -q '^ready:' "$log"; do
    kill -0 $up 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
# The table `plenum up` prints: SERVICE GRPC METRICS PID.
mapfile -t services < <(awk '$1 ~ /^plenum-/ && $4 ~ /^[0-9]+$/ {print $1 " " $4}' "$log")
# A table whose shape changed would otherwise give a report with no rows, silently.
((${#services[@]} == 4)) || { echo "expected 4 services in plenum up's table, parsed ${#services[@]}:" >&2; cat "$log" >&2; exit 1; }
memory() { # memory PID FIELD: the field of /proc/PID/status in MiB
    awk -v field="$2:" '$1 == field {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}
echo "== after start (models loaded and warm)"
for entry in "${services[@]}"; do
    read -r name pid <<<"$entry"
    printf '%-16s rss %5s MiB\n' "$name" "$(memory "$pid" VmRSS)"
done
mapfile -t pages < <(ls tests/pages/page_*.png | head -n "$PAGES")
echo "== Analyze on ${#pages[@]} pages, $CONCURRENCY at a time; $(nproc) CPUs"
"$BIN/plenum" analyze "${pages[@]}" --gateway "$gateway" --concurrency "$CONCURRENCY" --out "$out" >/dev/null
printf '%-16s %12s %12s\n' SERVICE "PEAK (MiB)" "NOW (MiB)"
for entry in "${services[@]}"; do
    read -r name pid <<<"$entry"
    printf '%-16s %12s %12s\n' "$name" "$(memory "$pid" VmHWM)" "$(memory "$pid" VmRSS)"
done
