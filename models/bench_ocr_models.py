#!/usr/bin/env python3
"""CPU speed check: converted TorchScript OCR models vs the source ONNX on onnxruntime.

Same inputs, same thread budget (torch.set_num_threads(N) / ORT intra_op_num_threads=N,
inter-op 1), warm-up runs first, then the median of --runs timed runs.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/bench_ocr_models.py [--threads 2] [--runs 10]
      [--baseline DIR]   # also time the TorchScript files in DIR (e.g. an older conversion)

Run scripts/provision-models.sh first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime load libgomp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provision_ocr as P  # noqa: E402

SHAPES = {"det": (1, 3, 960, 960), "rec": (8, 3, 48, 320), "cls": (6, 3, 48, 192)}


def timed(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=P.DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--baseline", type=Path, action="append", default=[],
                    help="also time the TorchScript files in this directory (not checked; repeatable)")
    args = ap.parse_args()

    ok, why = P.up_to_date(args.out)
    if not ok:
        print(f"generated models not up to date ({why}); run scripts/provision-models.sh", file=sys.stderr)
        return 1

    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    sources = P.check_sources()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__} / onnxruntime {ort.__version__}, {args.threads} threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print(f"{'model':<5} {'input':<14} {'torchscript ms':>15} {'onnxruntime ms':>15} {'ts/ort':>7} {'max|diff|':>10}"
          + "".join(f"  {d.name + ' ms':>14} {'/ort':>5}" for d in args.baseline))
    for key, shape in SHAPES.items():
        spec = P.MODELS[key]
        x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        xt = torch.from_numpy(x)

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(sources[key]), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        ts = torch.jit.load(str(args.out / spec["file"]), map_location="cpu").eval()

        def run_ts():
            with torch.no_grad():
                return ts(xt)

        def run_ort():
            return sess.run(None, {name: x})[0]

        t_ts = timed(run_ts, args.runs, args.warmup)
        t_ort = timed(run_ort, args.runs, args.warmup)
        diff = float(np.max(np.abs(run_ts().numpy() - run_ort())))
        extra = ""
        for d in args.baseline:
            base = torch.jit.load(str(d / spec["file"]), map_location="cpu").eval()

            def run_base():
                with torch.no_grad():
                    return base(xt)

            t_b = timed(run_base, args.runs, args.warmup)
            extra += f"  {t_b:>14.1f} {t_b / t_ort:>5.2f}"
        print(f"{key:<5} {'x'.join(map(str, shape)):<14} {t_ts:>15.1f} {t_ort:>15.1f} {t_ts / t_ort:>7.2f} {diff:>10.2e}"
              + extra, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
