#!/usr/bin/env bash
# The models on libtorch from Rust, as AOTInductor packages and as TorchScript, against
# onnxruntime (Python) where an ONNX source exists (the OCR models), in one run with the same
# input shapes and thread budget, then recognition throughput through the engine.
#
#   scripts/bench-models.sh [--threads 2] [--runs 10] [--warmup 3] [--rounds 2] [--requests 64]
#
# Each round runs both backends (in alternating order); the final table pools the samples
# of all rounds, so its medians are of rounds x runs runs per model and backend.
# Needs the project venv (.venv, `make setup`) and provisioned models
# and AOTInductor packages (scripts/provision-models.sh). Prints a final markdown table:
# model | input | AOTI ms | TorchScript ms | ORT ms | AOTI / ORT (< 1: AOTI is faster).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
THREADS=2
RUNS=10
WARMUP=3
REQUESTS=64
ROUNDS=2
MODELS="${MODELS:-det rec cls det-page yolo-page}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        *) echo "usage: $0 [--threads N] [--runs N] [--warmup N] [--rounds N] [--requests N]" >&2; exit 2 ;;
    esac
done

if [[ ! -x "$PY" ]]; then
    echo "error: no python in $VENV (run make setup, or set VENV=...)" >&2
    exit 1
fi
# libgomp reads this once, when libtorch / onnxruntime load it; spinning is 10-25x slower here.
export OMP_WAIT_POLICY=PASSIVE

cd "$ROOT"
# PROFILE=debug uses a debug build (the models' time is libtorch's either way).
PROFILE="${PROFILE:-release}"
if [[ $PROFILE == release ]]; then
    cargo build --release --quiet --workspace --example bench_models --example bench_batching
else
    cargo build --quiet --workspace --example bench_models --example bench_batching
fi
EXAMPLES="$ROOT/target/$PROFILE/examples"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The ORT side: the same shapes and thread budget; writes its samples as JSON.
cat >"$TMP/ort_bench.py" <<'PY'
import json, statistics, sys, time
from pathlib import Path

sys.path.insert(0, "models")
import provision_ocr as P  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

threads, runs, warmup, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
SHAPES = {"det": (1, 3, 960, 960), "rec": (8, 3, 48, 320), "cls": (6, 3, 48, 192),
          "det-page": (1, 3, 1216, 1600)}
SOURCE = {"det-page": "det"}
SHAPES = {key: SHAPES[key] for key in sys.argv[5].split(",") if key in SHAPES}
sources = P.check_sources()
rng = np.random.default_rng(0)
print(f"onnxruntime {ort.__version__} on CPU, intra-op {threads} / inter-op 1 threads, "
      f"median of {runs} runs after {warmup} warm-up")
print(f"{'model':<5} {'input':<14} {'median ms':>10} {'p90 ms':>10}")
models = []
for key, shape in SHAPES.items():
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(sources[SOURCE.get(key, key)]), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        samples.append((time.perf_counter() - t) * 1000.0)
    ordered = sorted(samples)
    med = statistics.median(ordered)
    p90 = ordered[max(1, -(-9 * len(ordered) // 10)) - 1]
    dims = "x".join(map(str, shape))
    print(f"{key:<5} {dims:<14} {med:>10.1f} {p90:>10.1f}", flush=True)
    models.append({"model": key, "input": dims, "median_ms": med, "p90_ms": p90, "samples_ms": samples})
out.write_text(json.dumps({"backend": "ort", "threads": threads, "models": models}))
PY

run_rust() { # format round model
    echo "== round $2, $3: $1 (Rust)"
    "$EXAMPLES/bench_models" --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" --model "$3" \
        --format "$1" | tee "$TMP/$1.out" | grep -v '^BENCH_JSON '
    grep '^BENCH_JSON ' "$TMP/$1.out" | sed 's/^BENCH_JSON //' >"$TMP/$1.$2.$3.json"
}
run_onnx() { # round model: ONNX Runtime inside the Rust process, as the engine runs it
    [[ $2 == yolo-page ]] && return
    run_rust onnx "$1" "$2"
}
run_ort() { # round model
    [[ $2 == yolo-page ]] && return  # no ONNX source for the detector
    echo "== round $1, $2: onnxruntime (Python)"
    "$PY" "$TMP/ort_bench.py" "$THREADS" "$RUNS" "$WARMUP" "$TMP/ort.$1.$2.json" "$2"
}

# The VM is shared and its load drifts by 2-4x within a minute: go model by model, reverse
# the backends' order every round (AOTI, TorchScript, ORT, then ORT, TorchScript, AOTI, ...),
# and pool every round's samples, so no side always gets the quieter moment.
for ((round = 1; round <= ROUNDS; round++)); do
    for model in $MODELS; do
        if ((round % 2)); then
            run_rust aoti "$round" "$model"; run_rust ts "$round" "$model"; run_onnx "$round" "$model"
            run_ort "$round" "$model"
        else
            run_ort "$round" "$model"; run_onnx "$round" "$model"; run_rust ts "$round" "$model"
            run_rust aoti "$round" "$model"
        fi
    done
done

echo
echo "== recognition through the engine (tch, batching)"
"$EXAMPLES/bench_batching" --threads "$THREADS" --requests "$REQUESTS"

echo
echo "== AOTInductor and TorchScript (Rust) vs onnxruntime: medians of $((ROUNDS * RUNS)) runs each ($ROUNDS alternating rounds of $RUNS), $THREADS threads"
"$PY" - "$TMP" <<'PY'
import json, statistics, sys
from pathlib import Path

tmp = Path(sys.argv[1])

def pooled(backend):
    models = {}
    for path in sorted(tmp.glob(f"{backend}.*.json")):
        for m in json.loads(path.read_text())["models"]:
            models.setdefault(m["model"], {"input": m["input"], "samples": []})["samples"] += m["samples_ms"]
    return models

aoti, ts, ort, onnx = pooled("aoti"), pooled("ts"), pooled("ort"), pooled("onnx")
print("| model | input | AOTInductor ms | TorchScript ms | ORT in Rust ms | ORT (Python) ms | AOTI / TorchScript | AOTI / ORT |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for key in ("det", "rec", "cls", "det-page", "yolo-page"):
    if key not in ts:
        continue
    a, t = statistics.median(aoti[key]["samples"]), statistics.median(ts[key]["samples"])
    o = statistics.median(ort[key]["samples"]) if key in ort else None
    if key in ort:
        assert ts[key]["input"] == ort[key]["input"], (ts[key], ort[key])
    orts, ratio = (f"{o:.1f}", f"{a / o:.2f}") if o else ("", "")
    inproc = f"{statistics.median(onnx[key]['samples']):.1f}" if key in onnx else ""
    print(f"| {key} | {ts[key]['input']} | {a:.1f} | {t:.1f} | {inproc} | {orts} | {a / t:.2f} | {ratio} |")
PY
