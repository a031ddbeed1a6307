"""Prints a Detect response (grpcurl JSON on stdin) as a table, beside the page's truth."""
import json
import sys

truth = json.load(open(sys.argv[1]))["symbols"]
result = json.load(sys.stdin)["results"][0]
found = result.get("detections", [])
inputs = result.get("tiles", 1)
print(f"{len(found)} symbols found ({inputs} model input{'s' if inputs > 1 else ''}); the page has {len(truth)}")
print(f"{'CLASS':<12} {'SCORE':>5}  BOX")
for d in sorted(found, key=lambda d: (d["box"].get("yMin", 0), d["box"].get("xMin", 0)))[:12]:
    b = {k: b for k, b in d["box"].items()}
    print(f"{d['className']:<12} {d['score']:>5.2f}  ({b.get('xMin', 0):.0f}, {b.get('yMin', 0):.0f}) - "
          f"({b.get('xMax', 0):.0f}, {b.get('yMax', 0):.0f})")
if len(found) > 12:
    print(f"... and {len(found) - 12} more")
