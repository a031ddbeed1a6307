"""The whole pipeline on sample pages, Plenum against the best configuration of the
Python system it replaces, in one run, page by page (BENCHMARKS.md "Pipeline"):

  plenum     Analyze through the gateway of a running stack (`plenum up`), called by
             grpcio; its stage timings come from the response.
  baseline   Ultralytics + RapidOCR 1.4.4 in one Python process, tuned as well as we
             know how (issue 13): `predict(page, imgsz=1280, conf=0.5, iou=0.7)` with
             Ultralytics' NUM_THREADS = 2 and torch set back to 2 threads after the first
             predict (its select_device drops torch to 1 thread on 2-core machines);
             `RapidOCR(intra_op_num_threads=2, inter_op_num_threads=1)` once on a copy of
             the page with every detected box, padded 2 px, painted white; then whitespace
             is removed from each line and each line goes to its nearest symbol, greedy,
             nearest pair first, at most 60 px apart (the gap between the boxes).

The two sides alternate page by page (and which goes first), so load on a shared machine
falls on both alike. Beside wall time, each call's CPU time is counted: the baseline's
process, and a stack's whole process tree (gateway, detector, OCR, broker; its `plenum up`
pid comes in PLENUM_UP_PIDS="NAME=PID ..."). CPU-seconds per page bound throughput once
every core is busy: pages/s <= cores / CPU-s per page. Both are scored against the generator's ground truth: recall
(right class at IoU >= 0.5) and exact tags. Then throughput: Plenum with 4 callers at
once against the baseline's one process.

Usage: bench-pipeline.py "NAME=GATEWAY_ADDR[+all-text] ..." ROUNDS [--sweep] PAGE.png...
  one or more stacks (e.g. plenum-auto and plenum-torchscript), all interleaved;
  +all-text asks for `include_unassigned_text`, so OCR reads every line of the page
  instead of only those within a symbol's reach (the gateway before `read_within`).
  --sweep  also run the baseline alone at imgsz 960, 1280 and 1600 (recall, p50).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
CALLERS = 4
BASELINE_IMGSZ = 1280
MASK_PAD = 2
TAG_REACH = 60.0


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(pages, predictions):
    """Recall and exact-tag accuracy: each true symbol matched to the best unused
    prediction of its class with IoU >= 0.5."""
    found = tagged = total = 0
    for page, predicted in zip(pages, predictions):
        truth = json.loads(page.with_suffix(".json").read_text())["symbols"]
        used = set()
        for symbol in truth:
            total += 1
            best, best_iou = None, 0.5
            for index, (cls, box, tag) in enumerate(predicted):
                overlap = iou(symbol["box"], box)
                if index not in used and cls == symbol["class"] and overlap >= best_iou:
                    best, best_iou = index, overlap
            if best is not None:
                used.add(best)
                found += 1
                tagged += predicted[best][2] == symbol["tag"]
    return found / total, tagged / total, total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """User + system CPU time of `pid` and every descendant, in seconds (0 if gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / CLOCK_TICKS


def own_cpu_seconds():
    """This process's CPU time, every thread (ONNX Runtime's and torch's pools) included."""
    return time.process_time()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Plenum:
    """Analyze through the gateway."""

    def __init__(self, name, addr):
        self.name = name
        addr, _, variant = addr.partition("+")
        self.all_text = variant == "all-text"
        pids = dict(spec.split("=", 1) for spec in os.environ.get("PLENUM_UP_PIDS", "").split())
        stack = name.removesuffix("-all-text")
        self.pid = int(pids[stack]) if stack in pids else None
        import grpc
        from grpc_tools import protoc

        out = tempfile.mkdtemp()
        include = str(Path(protoc.__file__).parent / "_proto")
        protos = ["plenum/common/v1/common.proto", "plenum/gateway/v1/gateway.proto"]
        args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        assert protoc.main(args + protos) == 0
        sys.path.insert(0, out)
        from plenum.gateway.v1 import gateway_pb2, gateway_pb2_grpc

        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.pb = gateway_pb2
        self.stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(addr, options=options))

    def call(self, image):
        options = self.pb.AnalyzeOptions(include_unassigned_text=self.all_text)
        return self.stub.Analyze(self.pb.AnalyzeRequest(image=image, options=options), timeout=600)

    def analyze(self, path):
        image = path.read_bytes()
        response = self.call(image)
        symbols = [
            (s.class_name, [s.box.x_min, s.box.y_min, s.box.x_max, s.box.y_max], s.tag)
            for s in response.symbols
        ]
        t = response.timings
        stages = {"decode": t.decode_us / 1e3, "detect": t.detect_us / 1e3, "ocr": t.ocr_us / 1e3,
                  "gateway_total": t.total_us / 1e3}
        return symbols, stages

    def cpu_seconds(self):
        """CPU time the stack has used so far (None when its pid is unknown)."""
        return tree_cpu_seconds(self.pid) if self.pid else None

    def throughput(self, pages, callers=CALLERS):
        """Pages per second with `callers` clients at once: the stack overlaps one
        page's detection with another's reading, which one Python process cannot."""
        from concurrent.futures import ThreadPoolExecutor

        work = [page.read_bytes() for page in pages] * 2
        start = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(self.call, work))
        return round(len(work) / (time.perf_counter() - start), 3)


class Baseline:
    """Ultralytics + RapidOCR in this process, the best configuration (module doc)."""

    name = "ultralytics+rapidocr"

    @staticmethod
    def cpu_seconds():
        return own_cpu_seconds()

    def __init__(self, imgsz=BASELINE_IMGSZ):
        import torch
        import ultralytics.utils.torch_utils as torch_utils

        os.environ.setdefault("YOLO_OFFLINE", "1")
        from rapidocr_onnxruntime import RapidOCR
        from ultralytics import YOLO

        torch_utils.NUM_THREADS = THREADS
        torch.set_num_threads(THREADS)
        self.torch = torch
        self.imgsz = imgsz
        self.model = YOLO(str(REPO / "models/detector/hvac-yolov8n.torchscript"), task="detect")
        self.ocr = RapidOCR(intra_op_num_threads=THREADS, inter_op_num_threads=1)
        self.threads_restored = False

    def analyze(self, path):
        import cv2

        t0 = time.perf_counter()
        page = cv2.imread(str(path))  # BGR, as both libraries take it
        t1 = time.perf_counter()
        result = self.model.predict(page, imgsz=self.imgsz, conf=0.5, iou=0.7, device="cpu", verbose=False)[0]
        if not self.threads_restored:
            # select_device set torch to 1 thread on this 2-core machine; put 2 back.
            self.torch.set_num_threads(THREADS)
            self.threads_restored = True
        boxes = result.boxes.xyxy.tolist()
        classes = [self.model.names[int(c)] for c in result.boxes.cls.tolist()]
        t2 = time.perf_counter()
        masked = page.copy()
        height, width = masked.shape[:2]
        for x0, y0, x1, y1 in boxes:
            masked[max(0, int(y0) - MASK_PAD):min(height, int(y1) + 1 + MASK_PAD),
                   max(0, int(x0) - MASK_PAD):min(width, int(x1) + 1 + MASK_PAD)] = 255
        t3 = time.perf_counter()
        lines, _ = self.ocr(masked)
        t4 = time.perf_counter()
        tags = assign_tags(boxes, lines or [])
        t5 = time.perf_counter()
        symbols = [(cls, box, tag) for cls, box, tag in zip(classes, boxes, tags)]
        stages = {"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3, "mask": (t3 - t2) * 1e3,
                  "ocr": (t4 - t3) * 1e3, "tags": (t5 - t4) * 1e3}
        return symbols, stages


def assign_tags(boxes, lines):
    """Each line (whitespace removed) to its nearest symbol, nearest pair first, each
    symbol and line used once, at most TAG_REACH px between the boxes."""
    texts = []
    for quad, text, _ in lines:
        xs, ys = [p[0] for p in quad], [p[1] for p in quad]
        texts.append(([min(xs), min(ys), max(xs), max(ys)], "".join(text.split())))
    pairs = []
    for s, box in enumerate(boxes):
        for t, (tb, _) in enumerate(texts):
            dx = max(tb[0] - box[2], box[0] - tb[2], 0)
            dy = max(tb[1] - box[3], box[1] - tb[3], 0)
            gap = (dx * dx + dy * dy) ** 0.5
            if gap <= TAG_REACH:
                pairs.append((gap, s, t))
    tags = [""] * len(boxes)
    taken_symbols, taken_lines = set(), set()
    for _, s, t in sorted(pairs):
        if s not in taken_symbols and t not in taken_lines:
            taken_symbols.add(s)
            taken_lines.add(t)
            tags[s] = texts[t][1]
    return tags


def run_interleaved(systems, pages, rounds):
    """Every page through each system in turn; the order reverses from page to page."""
    for system in systems:
        system.analyze(pages[0])  # warm
    latencies = {s.name: [] for s in systems}
    stages = {s.name: {} for s in systems}
    predictions = {s.name: [] for s in systems}
    for round_ in range(rounds):
        for index, page in enumerate(pages):
            order = systems if (index + round_) % 2 == 0 else systems[::-1]
            for system in order:
                cpu_before = system.cpu_seconds()
                start = time.perf_counter()
                symbols, times = system.analyze(page)
                latencies[system.name].append(time.perf_counter() - start)
                if cpu_before is not None:
                    times["cpu_s"] = system.cpu_seconds() - cpu_before
                for stage, ms in times.items():
                    stages[system.name].setdefault(stage, []).append(ms)
                if round_ == 0:
                    predictions[system.name].append(symbols)
    return latencies, stages, predictions


def report(name, pages, latencies, stages, predictions, concurrent_pages_per_s=None):
    recall, tags, total = score(pages, predictions)
    row = {
        "system": name,
        "pages": len(pages),
        "calls": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1e3, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
        "pages_per_s": round(len(latencies) / sum(latencies), 3),
        f"pages_per_s_{CALLERS}_callers": concurrent_pages_per_s,
        "stages_p50_ms": {stage: round(statistics.median(ms), 1) for stage, ms in stages.items()
                          if stage != "cpu_s"},
        "cpu_s_per_page": round(statistics.mean(stages["cpu_s"]), 3) if "cpu_s" in stages else None,
        "recall": round(recall, 3),
        "tag_accuracy": round(tags, 3),
        "symbols": total,
    }
    print(json.dumps(row), flush=True)
    return row


def sweep(pages, sizes=(960, 1280, 1600)):
    """The baseline alone at several detector input sizes: is 1280 its best?"""
    for imgsz in sizes:
        baseline = Baseline(imgsz)
        latencies, stages, predictions = run_interleaved([baseline], pages, 1)
        report(f"baseline imgsz {imgsz}", pages, latencies[baseline.name],
               stages[baseline.name], predictions[baseline.name])


def main():
    args = sys.argv[1:]
    do_sweep = "--sweep" in args
    args = [a for a in args if a != "--sweep"]
    rounds, pages = int(args[1]), [Path(p) for p in args[2:]]
    stacks = [Plenum(*spec.split("=", 1)) for spec in args[0].split()]
    baseline = Baseline()
    latencies, stages, predictions = run_interleaved(stacks + [baseline], pages, rounds)
    theirs = report(baseline.name, pages, latencies[baseline.name], stages[baseline.name],
                    predictions[baseline.name])
    for plenum in stacks:
        ours = report(plenum.name, pages, latencies[plenum.name], stages[plenum.name],
                      predictions[plenum.name], plenum.throughput(pages))
        print(f"one page at a time: {plenum.name} {ours['p50_ms']} ms vs {theirs['p50_ms']} ms at p50 "
              f"({plenum.name}/baseline {ours['p50_ms'] / theirs['p50_ms']:.2f}; target <= 0.67)")
        many = ours[f"pages_per_s_{CALLERS}_callers"]
        print(f"throughput: {plenum.name} {many} pages/s with {CALLERS} callers vs "
              f"{theirs['pages_per_s']} pages/s for the one-process baseline "
              f"({many / theirs['pages_per_s']:.2f}x; target >= 1.5x)", flush=True)
        if ours["cpu_s_per_page"] is not None:
            print(f"CPU per page: {plenum.name} {ours['cpu_s_per_page']} s vs {theirs['cpu_s_per_page']} s "
                  f"(with {os.cpu_count()} cores busy, at most {os.cpu_count() / ours['cpu_s_per_page']:.2f} "
                  f"against {os.cpu_count() / theirs['cpu_s_per_page']:.2f} pages/s)", flush=True)
    if do_sweep:
        sweep(pages)


if __name__ == "__main__":
    main()
