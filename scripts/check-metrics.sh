#!/usr/bin/env bash
# The metrics as a real Prometheus sees them: starts the broker (simulated GPU), the
# detector and OCR under leases (and the gateway when it is built), a Prometheus
# (Debian's `prometheus` package) scraping their /metrics every second with a config
# generated in a temp dir, makes a few calls with grpcurl, then asks Prometheus'
# HTTP API (/api/v1/query) for every expected series and fails naming each missing one.
#
#   scripts/check-metrics.sh            # binaries from target/release (make build)
#   BIN=target/debug scripts/check-metrics.sh
#
# Needs: prometheus (apt-get install prometheus), curl, python3, grpcurl (.venv/bin/grpcurl
# from `make test`, or GRPCURL=...). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
GRPCURL="${GRPCURL:-.venv/bin/grpcurl}"
PROMETHEUS="${PROMETHEUS:-prometheus}"
export OMP_WAIT_POLICY=PASSIVE

command -v "$PROMETHEUS" >/dev/null || { echo "no prometheus binary: apt-get install prometheus (or PROMETHEUS=path)" >&2; exit 2; }
[[ -x "$GRPCURL" ]] || { echo "no grpcurl at $GRPCURL (make test installs it)" >&2; exit 2; }
for bin in plenum-broker plenum-detector plenum-ocr plenum; do
    [[ -x "$BIN/$bin" ]] || { echo "$BIN/$bin is not built (make build, or BIN=target/debug)" >&2; exit 2; }
done
gateway=false
[[ -x "$BIN/plenum-gateway" ]] && gateway=true

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

declare -A grpc metrics
for svc in broker detector ocr gateway prometheus; do
    grpc[$svc]="127.0.0.1:$(free_port)"
    metrics[$svc]="127.0.0.1:$(free_port)"
done

start() { # start NAME BINARY ARGS...
    local name=$1 binary=$2; shift 2
    "$BIN/$binary" --listen "${grpc[$name]}" --metrics-listen "${metrics[$name]}" --log warn "$@" \
        >"$tmp/$name.log" 2>&1 &
    pids+=($!)
}
wait_serving() { # wait_serving NAME
    for _ in $(seq 600); do
        "$BIN/plenum" health "${grpc[$1]}" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$1 not SERVING after 120 s; its log:" >&2; tail -20 "$tmp/$1.log" >&2; exit 1
}

started=$(date +%s.%N)
start broker plenum-broker --simulate "GTX 1070:8GiB" --recovery-window 0s
wait_serving broker
start detector plenum-detector --broker "http://${grpc[broker]}" --device sim-gpu
start ocr plenum-ocr --broker "http://${grpc[broker]}" --device sim-gpu
wait_serving detector
wait_serving ocr
jobs=(broker detector ocr)
if $gateway; then
    start gateway plenum-gateway --detector "http://${grpc[detector]}" --ocr "http://${grpc[ocr]}"
    wait_serving gateway
    jobs+=(gateway)
else
    echo "note: $BIN/plenum-gateway is not built; the gateway's series are not checked"
fi

{
    echo "global: { scrape_interval: 1s, evaluation_interval: 1s }"
    echo "scrape_configs:"
    for job in "${jobs[@]}"; do
        echo "  - job_name: $job"
        echo "    static_configs: [ { targets: ['${metrics[$job]}'] } ]"
    done
} >"$tmp/prometheus.yml"
"$PROMETHEUS" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="${grpc[prometheus]}" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
prom="http://${grpc[prometheus]}"
for _ in $(seq 100); do curl -fs "$prom/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$prom/-/ready" >/dev/null || { echo "prometheus did not start:" >&2; tail -20 "$tmp/prometheus.log" >&2; exit 1; }

# A few calls: good ones, and one bad one per model service so a non-OK code shows up.
page=tests/pages/page_0000.png
printf '{"images": ["%s"]}' "$(base64 -w0 "$page")" >"$tmp/detect.json"
printf '{"crops": ["%s", "%s"]}' "$(base64 -w0 tests/ocr/crops/p0_00.png)" \
    "$(base64 -w0 tests/ocr/crops/p0_01.png)" >"$tmp/recognize.json"
call() { "$GRPCURL" -plaintext -max-msg-sz 67108864 "$@" >/dev/null; }
for _ in 1 2 3; do
    call -d @ "${grpc[detector]}" plenum.detector.v1.Detector/Detect <"$tmp/detect.json"
    call -d @ "${grpc[ocr]}" plenum.ocr.v1.Ocr/Recognize <"$tmp/recognize.json"
done
call -d '{"images": ["bm90IGFuIGltYWdl"]}' "${grpc[detector]}" plenum.detector.v1.Detector/Detect 2>/dev/null || true
call -d '{"crops": ["bm90IGFuIGltYWdl"]}' "${grpc[ocr]}" plenum.ocr.v1.Ocr/Recognize 2>/dev/null || true
call -d '{}' "${grpc[broker]}" plenum.broker.v1.Broker/Status
if $gateway; then
    printf '{"image": "%s"}' "$(base64 -w0 "$page")" >"$tmp/analyze.json"
    call -d @ "${grpc[gateway]}" plenum.gateway.v1.Gateway/Analyze <"$tmp/analyze.json"
    call -d '{"image": "bm90IGFuIGltYWdl"}' "${grpc[gateway]}" plenum.gateway.v1.Gateway/Analyze 2>/dev/null || true
fi

# name|PromQL that must return at least one sample
checks=(
    "broker scraped|up{job=\"broker\"} == 1"
    "detector scraped|up{job=\"detector\"} == 1"
    "ocr scraped|up{job=\"ocr\"} == 1"
    "requests per RPC and code: Detect OK|plenum_grpc_server_requests_total{job=\"detector\",grpc_service=\"plenum.detector.v1.Detector\",grpc_method=\"Detect\",grpc_code=\"OK\"} >= 3"
    "requests per RPC and code: Detect InvalidArgument|plenum_grpc_server_requests_total{job=\"detector\",grpc_method=\"Detect\",grpc_code=\"InvalidArgument\"} >= 1"
    "requests per RPC and code: Recognize OK|plenum_grpc_server_requests_total{job=\"ocr\",grpc_method=\"Recognize\",grpc_code=\"OK\"} >= 3"
    "requests per RPC and code: Recognize InvalidArgument|plenum_grpc_server_requests_total{job=\"ocr\",grpc_method=\"Recognize\",grpc_code=\"InvalidArgument\"} >= 1"
    "requests per RPC and code: broker Acquire OK|plenum_grpc_server_requests_total{job=\"broker\",grpc_method=\"Acquire\",grpc_code=\"OK\"} >= 2"
    "requests per RPC and code: broker Commit OK|plenum_grpc_server_requests_total{job=\"broker\",grpc_method=\"Commit\",grpc_code=\"OK\"} >= 2"
    "latency histogram per RPC and code: Detect|plenum_grpc_server_handling_seconds_bucket{job=\"detector\",grpc_method=\"Detect\",grpc_code=\"OK\",le=\"+Inf\"} >= 3"
    "latency histogram per RPC and code: Recognize|plenum_grpc_server_handling_seconds_bucket{job=\"ocr\",grpc_method=\"Recognize\",grpc_code=\"OK\",le=\"+Inf\"} >= 3"
    "latency histogram per RPC and code: broker Status|histogram_quantile(0.5, plenum_grpc_server_handling_seconds_bucket{job=\"broker\",grpc_method=\"Status\"})"
    "queue depth: detector|plenum_detector_queue_depth{model=\"hvac-yolov8n\"}"
    "queue depth: ocr|plenum_ocr_queue_depth"
    "batch sizes: detector|plenum_detector_batch_rows_count > 0"
    "batch sizes: ocr|plenum_ocr_batch_rows_count > 0"
    "batch sizes: detector histogram|plenum_detector_batch_rows_bucket"
    "inference time: detector|plenum_detector_inference_seconds_bucket"
    "queue wait: ocr|plenum_ocr_queue_wait_seconds_bucket"
    "shed counts: detector queue full|plenum_detector_queue_rejected_total"
    "shed counts: ocr queue full|plenum_ocr_queue_rejected_total"
    "lease granted bytes per holder: detector|plenum_broker_holder_granted_bytes{holder=\"detector\"} > 0"
    "lease measured bytes per holder: detector|plenum_broker_holder_measured_bytes{holder=\"detector\"} > 0"
    "lease granted bytes per holder: ocr|plenum_broker_holder_granted_bytes{holder=\"ocr\"} > 0"
    "lease measured bytes per holder: ocr|plenum_broker_holder_measured_bytes{holder=\"ocr\"} > 0"
    "free bytes per device|plenum_broker_device_free_bytes{device=\"0\",name=\"GTX 1070\"} > 0"
    "external bytes per device|plenum_broker_device_external_bytes{device=\"0\"}"
    "total bytes per device|plenum_broker_device_total_bytes{device=\"0\"} == 8589934592"
    "leases by state|plenum_broker_leases"
    "broker grants counted|plenum_broker_grants_total >= 2"
    "placement per model: detector on the (simulated) GPU|plenum_detector_placement{model=\"hvac-yolov8n\",placement=\"gpu\"} == 1"
    "placement per model: ocr|plenum_ocr_placement{placement=\"gpu\"}"
)
if $gateway; then
    checks+=(
        "gateway scraped|up{job=\"gateway\"} == 1"
        "requests per RPC and code: Analyze OK|plenum_grpc_server_requests_total{job=\"gateway\",grpc_method=\"Analyze\",grpc_code=\"OK\"} >= 1"
        "requests per RPC and code: Analyze InvalidArgument|plenum_grpc_server_requests_total{job=\"gateway\",grpc_method=\"Analyze\",grpc_code=\"InvalidArgument\"} >= 1"
        "latency histogram per RPC and code: Analyze|plenum_grpc_server_handling_seconds_bucket{job=\"gateway\",grpc_method=\"Analyze\"}"
        "gateway Analyze by code|plenum_gateway_analyze_requests_total"
        "gateway Analyze latency|plenum_gateway_analyze_duration_seconds_bucket"
        "gateway calls per backend: detector|plenum_gateway_backend_requests_total{backend=\"detector\"}"
        "gateway calls per backend: ocr|plenum_gateway_backend_requests_total{backend=\"ocr\"}"
        "gateway backend latency|plenum_gateway_backend_duration_seconds_bucket"
        "shed counts: gateway per backend|plenum_gateway_backend_shed_total"
    )
fi

query() { # prints the number of samples PromQL $1 returns now
    curl -fsG "$prom/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r["data"]["result"]) if r["status"]=="success" else -1)'
}
# Everything was called already; wait up to 15 s for scrapes to show it.
missing=()
deadline=$(( $(date +%s) + 15 ))
for check in "${checks[@]}"; do
    name=${check%%|*}
    promql=${check#*|}
    until [[ $(query "$promql") -gt 0 ]]; do
        if (( $(date +%s) >= deadline )); then
            missing+=("$name: $promql")
            continue 2
        fi
        sleep 0.5
    done
    echo "ok - $name"
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
if (( ${#missing[@]} )); then
    echo "MISSING in Prometheus (${#missing[@]} of ${#checks[@]}):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "metrics check: all ${#checks[@]} series found in Prometheus in ${elapsed}s"
