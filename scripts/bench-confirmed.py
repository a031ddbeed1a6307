#!/usr/bin/env python3
"""The cost of confirming weak detections: Detect as Analyze calls it (verify, the
large-symbol pass, contrast stretch), without and with `confirmed_score_threshold` 0.1,
on every page of a folder, the two interleaved page by page for ROUNDS rounds; p50 of a
call for each, their ratio, and the detections confirmed per page.

    target/release/plenum-detector --listen 127.0.0.1:50082 --metrics-listen 127.0.0.1:0 --device cpu &
    .venv/bin/python scripts/bench-confirmed.py 127.0.0.1:50082 tests/pages-independent 3
"""
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]


def stubs():
    out = tempfile.mkdtemp()
    include = str(Path(protoc.__file__).parent / "_proto")
    protos = ["plenum/detector/v1/detector.proto", "plenum/common/v1/common.proto"]
    if protoc.main(["protoc", f"-I{include}", f"-I{REPO / 'proto'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", *protos]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("plenum.detector.v1.detector_pb2"),
            importlib.import_module("plenum.detector.v1.detector_pb2_grpc"))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    address, folder = sys.argv[1], Path(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    pb, pb_grpc = stubs()
    stub = pb_grpc.DetectorStub(grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]))
    pages = [p.read_bytes() for p in sorted(folder.glob("*.png"))]
    settings = {"without": 0.0, "with": 0.1}
    times = {name: [] for name in settings}
    confirmed = []
    for page in pages:  # warm-up
        stub.Detect(pb.DetectRequest(images=[page], options=pb.DetectOptions(verify=True)))
    for _ in range(rounds):
        for page in pages:
            for name, threshold in settings.items():
                options = pb.DetectOptions(verify=True, large_symbol_pass=True, normalize_contrast=True,
                                           confirmed_score_threshold=threshold)
                started = time.perf_counter()
                answer = stub.Detect(pb.DetectRequest(images=[page], options=options))
                times[name].append(time.perf_counter() - started)
                if name == "with":
                    confirmed.append(answer.results[0].confirmed)
    p50 = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"{folder}: {len(pages)} pages x {rounds} rounds; p50 per call without {p50['without']:.0f} ms, "
          f"with {p50['with']:.0f} ms (x{p50['with'] / p50['without']:.3f}); "
          f"confirmed per page {statistics.mean(confirmed):.2f}")


if __name__ == "__main__":
    main()
