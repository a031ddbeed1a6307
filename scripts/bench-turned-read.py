#!/usr/bin/env python3
"""The cost of the turned read (docs/ocr.md, `read_turned`): p50 time of one ReadText of a
page within every symbol's reach (as the gateway reads it, symbols masked) against one turned
read of the first 1, 3 and 8 of those reaches, on a folder of pages with their truth, two
rounds interleaved, straight to a running OCR service:

    .venv/bin/python scripts/bench-turned-read.py 127.0.0.1:50083 tests/pages-independent
"""
import json, sys, tempfile, time, statistics
from pathlib import Path
import grpc
from grpc_tools import protoc
REPO = Path(__file__).resolve().parents[1]
out = tempfile.mkdtemp(); include = str(Path(protoc.__file__).parent / "_proto")
assert protoc.main(["protoc", f"-I{REPO/'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", "plenum/common/v1/common.proto", "plenum/ocr/v1/ocr.proto"]) == 0
sys.path.insert(0, out)
from plenum.ocr.v1 import ocr_pb2 as pb, ocr_pb2_grpc
from plenum.common.v1 import common_pb2 as common
stub = ocr_pb2_grpc.OcrStub(grpc.insecure_channel(sys.argv[1], options=[("grpc.max_send_message_length", 64<<20), ("grpc.max_receive_message_length", 64<<20)]))
folder = Path(sys.argv[2]); times = {}
for rnd in range(2):
    for js in sorted(folder.glob("page_*.json")):
        t = json.loads(js.read_text()); img = (folder / t["image"]).read_bytes()
        masks = [common.Box(x_min=s["box"][0]-2, y_min=s["box"][1]-2, x_max=s["box"][2]+2, y_max=s["box"][3]+2) for s in t["symbols"]]
        reach = []
        for s in t["symbols"]:
            x0, y0, x1, y1 = s["box"]; pad = max(12, 1.6 * max(x1-x0, y1-y0))
            reach.append(common.Box(x_min=x0-pad, y_min=y0-pad, x_max=x1+pad, y_max=y1+pad))
        for name, req in [("page", pb.ReadTextRequest(image=img, classify_angle=True, ignore_regions=masks, read_within=reach, join_broken_lines=True))] + \
                [(f"turned {k}", pb.ReadTextRequest(image=img, classify_angle=True, ignore_regions=masks, read_turned=reach[:k], join_broken_lines=True)) for k in (1, 3, 8)]:
            try:
                t0 = time.perf_counter(); stub.ReadText(req); dt = time.perf_counter() - t0
            except grpc.RpcError as e:
                continue  # regions too large for the page
            times.setdefault(name, []).append(dt * 1000)
for name, v in times.items():
    print(f"{name}: p50 {statistics.median(v):.0f} ms over {len(v)} calls")
