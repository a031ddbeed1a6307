#!/usr/bin/env bash
# Runs the benchmarks behind BENCHMARKS.md, one after another, each printing its own
# figures. `make bench` runs them all (after `make build`); name some to run only those.
#
#   scripts/bench.sh                 # all, in the order below
#   scripts/bench.sh broker gateway  # some
#   scripts/bench.sh --list
#
# The detector and pipeline benchmarks compare against Ultralytics, which `make setup`
# does not install: python/requirements-train.txt goes into .venv the first time.
# Timing on a shared machine is noisy: rerun before comparing (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE

# name | what it measures | command
BENCHMARKS=(
    "broker|lease round trips at 1, 16, 64 holders; the ledger alone|cargo run --quiet --release -p plenum-broker --example bench_leases -- 3"
    "models|OCR models on libtorch against onnxruntime; batching through the engine|scripts/bench-models.sh"
    "detector|plenum-detector against Ultralytics predict, one caller and 8|scripts/bench-detector.sh 40"
    "ocr|plenum-ocr against RapidOCR, ReadText and Recognize, 8 callers|scripts/bench-ocr.sh 30 8"
    "gateway|the gateway's overhead over instant fake backends|scripts/bench-gateway.sh"
    "pipeline|Analyze end to end against Ultralytics + RapidOCR|scripts/bench-pipeline.sh 10 2"
    "rss|each service's peak memory after Analyze calls (the Helm chart's requests)|scripts/bench-rss.sh 10 4"
)

list() {
    for entry in "${BENCHMARKS[@]}"; do
        IFS='|' read -r name what command <<<"$entry"
        printf '%-9s %s\n          %s\n' "$name" "$what" "$command"
    done
}

if [[ ${1:-} == --list ]]; then
    list
    exit 0
fi
wanted=("$@")
if [[ ${#wanted[@]} -eq 0 ]]; then
    for entry in "${BENCHMARKS[@]}"; do wanted+=("${entry%%|*}"); done
fi
for name in "${wanted[@]}"; do
    grep -q "^$name|" < <(printf '%s\n' "${BENCHMARKS[@]}") || { echo "no benchmark \`$name\`; these exist:" >&2; list >&2; exit 2; }
done

needs_ultralytics() { [[ $1 == detector || $1 == pipeline ]]; }
for name in "${wanted[@]}"; do
    if needs_ultralytics "$name" && ! .venv/bin/python -c 'import ultralytics' 2>/dev/null; then
        echo "== installing python/requirements-train.txt (Ultralytics, the reference for $name)"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-train.txt
    fi
done

failed=()
for name in "${wanted[@]}"; do
    entry=$(printf '%s\n' "${BENCHMARKS[@]}" | grep "^$name|")
    IFS='|' read -r _ what command <<<"$entry"
    printf '\n######## %s: %s\n######## %s\n' "$name" "$what" "$command"
    started=$(date +%s)
    if bash -c "$command"; then
        echo "######## $name done in $(( $(date +%s) - started ))s"
    else
        echo "######## $name FAILED (exit $?)" >&2
        failed+=("$name")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
