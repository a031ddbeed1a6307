#!/usr/bin/env python3
"""Peak resident memory of the detector and the OCR service for large pages sent at once.

Starts `plenum-detector` and `plenum-ocr` on the CPU (no broker), waits until they serve,
sends CONCURRENCY copies of a 6000x6000 PNG (mostly white with lines, ~100 KB on the
wire, 36 MP decoded: under the 40 MP input limit) to Detect and to ReadText at once, and
prints each service's resident memory at rest and its peak (VmHWM) after, with what the
calls answered. Run it once per concurrency; the figures go to BENCHMARKS.md.

    .venv/bin/python scripts/bench_work_memory.py [--bin target/release] [--concurrency 1 4]
    extra service flags: --service-arg=--work-memory=1GiB
"""
import argparse
import importlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_tools import protoc
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PROTOS = ["plenum/common/v1/common.proto", "plenum/detector/v1/detector.proto", "plenum/ocr/v1/ocr.proto"]


def stubs():
    out = tempfile.mkdtemp(prefix="plenum-bench-stubs-")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + PROTOS) != 0:
        raise RuntimeError("grpcio-tools could not compile the protos")
    sys.path.insert(0, out)
    names = {
        "det": "plenum.detector.v1.detector_pb2",
        "det_grpc": "plenum.detector.v1.detector_pb2_grpc",
        "ocr": "plenum.ocr.v1.ocr_pb2",
        "ocr_grpc": "plenum.ocr.v1.ocr_pb2_grpc",
    }
    return {key: importlib.import_module(name) for key, name in names.items()}


def large_page(side: int = 6000) -> bytes:
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    for i in range(0, side, 150):
        draw.line([(0, i), (side, i)], fill="black", width=2)
        draw.line([(i, 0), (i, side)], fill="black", width=2)
    for i in range(0, side - 400, 600):
        draw.text((i + 20, i + 40), "AHU-1 SUPPLY 24x12", fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def start(binary: Path, extra: list) -> tuple:
    addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PLENUM_INTRA_OP_THREADS="2")
    process = subprocess.Popen(
        [str(binary), "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}", "--device", "cpu",
         "--log", "warn", *extra],
        env=env, cwd=REPO,
    )
    return process, addr


def wait_serving(channel, call, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            call()
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                return
        time.sleep(0.5)
    raise RuntimeError("the service did not start serving")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.environ.get("BIN", "target/release"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--service-arg", action="append", default=[])
    parser.add_argument("--latency", type=int, default=0,
                        help="instead: median Detect latency over N sequential calls on a 1600x1200 page")
    args = parser.parse_args()
    pb = stubs()
    if args.latency:
        return latency(pb, args)
    page = large_page()
    small = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(small, format="PNG")
    print(f"page: 6000x6000 PNG, {len(page) // 1024} KiB; {os.cpu_count()} CPUs; bin {args.bin}")
    print(f"{'SERVICE':10} {'CALLS':>5} {'AT REST MiB':>12} {'PEAK MiB':>9}  ANSWERS")
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    for concurrency in args.concurrency:
        for name, binary in (("detector", "plenum-detector"), ("ocr", "plenum-ocr")):
            process, addr = start(REPO / args.bin / binary, args.service_arg)
            try:
                channel = grpc.insecure_channel(addr, options=options)
                if name == "detector":
                    stub = pb["det_grpc"].DetectorStub(channel)
                    call = lambda image: stub.Detect(pb["det"].DetectRequest(images=[image]), timeout=600)
                else:
                    stub = pb["ocr_grpc"].OcrStub(channel)
                    call = lambda image: stub.ReadText(pb["ocr"].ReadTextRequest(image=image), timeout=600)
                wait_serving(channel, lambda: call(small.getvalue()))
                rest = memory_mib(process.pid, "VmRSS")
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")

                def one(_):
                    try:
                        call(page)
                        return "ok"
                    except grpc.RpcError as error:
                        return error.code().name

                with ThreadPoolExecutor(concurrency) as pool:
                    answers = list(pool.map(one, range(concurrency)))
                peak = memory_mib(process.pid, "VmHWM")
                summary = ", ".join(f"{answers.count(a)} {a}" for a in sorted(set(answers)))
                print(f"{name:10} {concurrency:5} {rest:12} {peak:9}  {summary}", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)


def latency(pb, args):
    """Median and spread of sequential Detect calls on one normal 1600x1200 page."""
    page = (REPO / "tests" / "pages" / "page_0000.png").read_bytes()
    process, addr = start(REPO / args.bin / "plenum-detector", args.service_arg)
    try:
        stub = pb["det_grpc"].DetectorStub(grpc.insecure_channel(addr))
        call = lambda: stub.Detect(pb["det"].DetectRequest(images=[page]), timeout=600)
        wait_serving(None, call)
        for _ in range(3):
            call()
        times = []
        for _ in range(args.latency):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        times.sort()
        print(f"detector 1600x1200 page, {args.latency} calls: median {times[len(times) // 2] * 1000:.1f} ms, "
              f"p10 {times[len(times) // 10] * 1000:.1f} ms, p90 {times[len(times) * 9 // 10] * 1000:.1f} ms")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
