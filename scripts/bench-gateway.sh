#!/usr/bin/env bash
# Gateway overhead with instant fake backends (no models, no GPU): Analyze latency
# against calling the fakes directly, and Analyze/s at saturation. Figures for
# BENCHMARKS.md ("Gateway"). Extra arguments go to the example, e.g. --seconds 10.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p plenum-gateway --example bench_gateway
echo "== small image (64x64 PNG)"
target/release/examples/bench_gateway "$@"
echo "== a 1600x1200 page (tests/pages/page_0000.png)"
target/release/examples/bench_gateway --image tests/pages/page_0000.png --calls 1000 "$@"
