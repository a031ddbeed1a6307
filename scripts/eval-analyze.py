#!/usr/bin/env python3
"""Accuracy of a running stack through Analyze, on one or more folders of pages with
their truth (`page_*.png` + `page_*.json`, as training/blueprint_gen.py and
training/independent_gen.py write them): per-class recall, precision and exact tags,
scored as the end-to-end test scores them (right class at IoU >= 0.5, each detection
once; exact tags over all true symbols), then every miss, false detection and wrong
tag with its size, so a change can be judged on pages the test does not hold, such as
a fresh draw of the independent renderer:

    .venv/bin/python training/independent_gen.py --out /tmp/fresh --count 24 --seed 9002
    target/release/plenum up --gateway 127.0.0.1:50080 ... &
    .venv/bin/python scripts/eval-analyze.py 127.0.0.1:50080 tests/pages-independent /tmp/fresh

`-q` prints the tables only. `--score-threshold 0.25` sends that threshold (the detector's
default, but set: Analyze then keeps no weak detection the verifier confirms), to measure
what the confirmation adds. Needs grpcio and grpcio-tools (python/requirements.txt).
"""
import json
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]


def stubs():
    out = tempfile.mkdtemp()
    include = str(Path(protoc.__file__).parent / "_proto")
    protos = ["plenum/common/v1/common.proto", "plenum/gateway/v1/gateway.proto"]
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + protos) == 0
    sys.path.insert(0, out)
    from plenum.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    return gateway_pb2, gateway_pb2_grpc


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def side(box):
    return max(box[2] - box[0], box[3] - box[1])


def evaluate(stub, pb, folder, score_threshold):
    counts = {c: {"symbols": 0, "found": 0, "detections": 0, "tags": 0} for c in CLASSES}
    notes = []
    for truth_file in sorted(folder.glob("page_*.json")):
        truth = json.loads(truth_file.read_text())
        image = (folder / truth["image"]).read_bytes()
        options = pb.AnalyzeOptions(score_threshold=score_threshold)
        response = stub.Analyze(pb.AnalyzeRequest(image=image, options=options, request_id=str(truth_file)),
                                timeout=600)
        found = [
            (s.class_name, [s.box.x_min, s.box.y_min, s.box.x_max, s.box.y_max], s.tag, s.score,
             pb.TagMissingReason.Name(s.tag_missing_reason))
            for s in response.symbols
        ]
        for symbol in found:
            counts[symbol[0]]["detections"] += 1
        used = set()
        page = truth_file.stem
        for expected in truth["symbols"]:
            tally = counts[expected["class"]]
            tally["symbols"] += 1
            best, best_iou = None, 0.5
            for index, symbol in enumerate(found):
                overlap = iou(expected["box"], symbol[1])
                if index not in used and symbol[0] == expected["class"] and overlap >= best_iou:
                    best, best_iou = index, overlap
            where = f"@{expected['box'][0]},{expected['box'][1]} {side(expected['box'])} px"
            vertical = " (vertical tag)" if expected.get("vertical_tag") else ""
            if best is None:
                notes.append(f"{page} missed {expected['class']} {expected['tag']} {where}")
                continue
            used.add(best)
            tally["found"] += 1
            if found[best][2] == expected["tag"]:
                tally["tags"] += 1
            else:
                notes.append(f"{page} tag of {expected['class']} {expected['tag']}{vertical} read "
                             f"`{found[best][2]}` ({found[best][4]}) {where}")
        for index, symbol in enumerate(found):
            if index not in used:
                box = symbol[1]
                notes.append(f"{page} false {symbol[0]} score {symbol[3]:.2f} @{box[0]:.0f},{box[1]:.0f} "
                             f"{side(box):.0f} px, tag `{symbol[2]}`")
    return counts, notes


def main():
    args = [a for a in sys.argv[1:] if a != "-q"]
    score_threshold = 0.0
    if "--score-threshold" in args:
        at = args.index("--score-threshold")
        score_threshold = float(args[at + 1])
        del args[at:at + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    pb, pb_grpc = stubs()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    stub = pb_grpc.GatewayStub(grpc.insecure_channel(args[0], options=options))
    for folder in map(Path, args[1:]):
        counts, notes = evaluate(stub, pb, folder, score_threshold)
        counts["all"] = {k: sum(c[k] for c in counts.values()) for k in counts[CLASSES[0]]}
        print(f"\n{folder}\n| class | symbols | recall | precision | exact tags |\n|---|---:|---:|---:|---:|")
        for name, c in counts.items():
            print(f"| {name} | {c['symbols']} | {c['found'] / max(c['symbols'], 1):.3f} | "
                  f"{c['found'] / max(c['detections'], 1):.3f} | {c['tags'] / max(c['symbols'], 1):.3f} |")
        if "-q" not in sys.argv:
            for note in notes:
                print("  ", note)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
