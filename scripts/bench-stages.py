"""Where a page's time goes inside a running stack: Analyze one page at a time through its
gateway, then each model's time per page from the services' own histograms
(`plenum_*_inference_seconds`, scraped before and after), beside the stage timings the
gateway reports. Run by scripts/bench-stages.sh; usage:

  bench-stages.py GATEWAY_ADDR METRICS_PORT_BASE ROUNDS PAGE.png...
"""
from __future__ import annotations

import importlib.util
import re
import statistics
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_pipeline", HERE / "bench-pipeline.py")
bench_pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_pipeline)

INFERENCE = re.compile(r'^plenum_\w+_inference_seconds_(sum|count)\{model="([^"]+)"\} (\S+)', re.M)


def model_seconds(base: int) -> dict[tuple[str, str], float]:
    """{(model, "sum" | "count"): value} over the stack's metrics ports (base + 0..3)."""
    found = {}
    for offset in range(4):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{base + offset}/metrics", timeout=2).read().decode()
        except OSError:
            continue
        for kind, model, value in INFERENCE.findall(text):
            found[(model, kind)] = float(value)
    return found


def main() -> int:
    addr, base, rounds, pages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [Path(p) for p in sys.argv[4:]]
    stack = bench_pipeline.Plenum("plenum", addr)
    stack.analyze(pages[0])  # warm
    before = model_seconds(base)
    stages = [stack.analyze(page)[1] for _ in range(rounds) for page in pages]
    after = model_seconds(base)
    calls = len(stages)
    print(f"{calls} calls, one at a time; gateway stage timings, p50 (mean):")
    for stage in ("detect", "ocr", "gateway_total"):
        values = [s[stage] for s in stages]
        print(f"  {stage:14s} {statistics.median(values):8.1f} ms ({statistics.mean(values):.1f})")
    print("time in each model per page (its calls per page):")
    for (model, kind) in sorted(after):
        if kind == "sum":
            seconds = after[(model, "sum")] - before.get((model, "sum"), 0.0)
            runs = after[(model, "count")] - before.get((model, "count"), 0.0)
            print(f"  {model:22s} {seconds * 1e3 / calls:8.1f} ms ({runs / calls:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
