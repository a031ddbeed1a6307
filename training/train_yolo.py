#!/usr/bin/env python3
"""Train a YOLOv8n detector FROM SCRATCH on synthetic HVAC blueprints, validate, export, publish.

    python training/train_yolo.py                          # the shipped hvac-yolov8n (4 classes)
    python training/train_yolo.py --name test-2class --classes diffuser damper \
        --init training/runs/hvac-yolov8n/weights/last.pt --seed 7 --epochs 4 --imgsz 320 \
        --batch 16 --train-count 200 --val-count 60 --min-symbols 3 --max-symbols 7

Steps: generate seeded datasets with blueprint_gen (training/datasets/, git-ignored); train
yolov8n.yaml on CPU (no pretrained weights, no downloads) in stages (--epochs 16 8 6: each stage
on a fresh dataset with seed+i, starting from the previous stage's weights, with its own LR
schedule); validate on held-out generated images and on whole 1600x1200 pages (native, letterboxed
to 1280, to 640); export TorchScript with dynamic=True; check the export (torch.jit.load, any
batch, non-square sizes, and a decode+NMS pass over the pages independent of ultralytics); write
models/detector/<name>.torchscript + <name>.toml. Report: training/runs/<name>-report.json.

Scale: training images are imgsz x imgsz small pages drawn at the page's native resolution, so a
symbol has the same pixel size in training as in a native-scale tile of a page. The scale
augmentation (+-30%) also covers a whole 1600x1200 page letterboxed to 1280 (symbols x0.8).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Before torch loads: libgomp's busy-wait makes this VM 10-25x slower, and nothing may download.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
TRAINING = Path(__file__).resolve().parent
ROOT = TRAINING.parent
RUNS = TRAINING / "runs"
CONFIG_DIR = RUNS / "yolo-config"
os.environ.setdefault("YOLO_CONFIG_DIR", str(CONFIG_DIR))
CONFIG_DIR.mkdir(parents=True, exist_ok=True)
_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
for _name in ("Arial.ttf", "Arial.Unicode.ttf"):  # ultralytics would download these otherwise
    if not (CONFIG_DIR / _name).exists():
        shutil.copyfile(_FONT, CONFIG_DIR / _name)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(TRAINING))
import blueprint_gen as gen  # noqa: E402


def build_dataset(root: Path, classes: list[str], draw_classes: list[str], imgsz: int, seed: int,
                  n_train: int, n_val: int, min_symbols: int, max_symbols: int, randomize: float = 0.0) -> Path:
    """Generate train/val splits once (reused when the folder is complete) and write data.yaml."""
    stamp = root / "done.json"
    want = {"classes": classes, "draw": draw_classes, "imgsz": imgsz, "seed": seed, "train": n_train,
            "val": n_val, "symbols": [min_symbols, max_symbols]}
    if randomize:
        want["randomize"] = randomize
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        if root.exists():
            shutil.rmtree(root)
        t = time.time()
        # train and val come from different seeds: val is held out
        gen.write_yolo_split(root / "images/train", root / "labels/train", n_train, seed, imgsz,
                             classes, min_symbols, max_symbols, draw_classes, randomize)
        gen.write_yolo_split(root / "images/val", root / "labels/val", n_val, seed + 100_000, imgsz,
                             classes, min_symbols, max_symbols, draw_classes, randomize)
        stamp.write_text(json.dumps(want))
        print(f"dataset: {n_train} train + {n_val} val images in {time.time() - t:.0f}s -> {root}", flush=True)
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def build_page_set(root: Path, classes: list[str], count: int, seed: int) -> Path:
    """Whole 1600x1200 pages (the shape the service gets) as a YOLO val set. The pages are made
    once; the labels are rewritten on every call for this model's class list."""
    img_dir, lbl_dir = root / "images/val", root / "labels/val"
    if not (root / "done").exists():
        if root.exists():
            shutil.rmtree(root)
        gen.write_pages(img_dir, count, seed)
        for j in sorted(img_dir.glob("*.json")):
            j.rename(root / j.name)  # keep the JSON next to, not inside, the image folder
        (root / "done").write_text("")
    if lbl_dir.exists():
        shutil.rmtree(lbl_dir)
    (root / "labels/val.cache").unlink(missing_ok=True)
    lbl_dir.mkdir(parents=True)
    for j in sorted(root.glob("*.json")):
        gt = json.loads(j.read_text())
        (lbl_dir / f"{j.stem}.txt").write_text(gen.yolo_label_text(gt["symbols"], gt["width"], gt["height"], classes))
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
    data.write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n{names}\n")
    return data


def checkpoint_from_torchscript(ts_path: Path, classes: list[str], out: Path) -> Path:
    """An ultralytics checkpoint holding the weights of an exported TorchScript file, so a
    shipped model can be fine-tuned without its training run. Export fuses each BatchNorm
    into its convolution; it is put back as an identity BatchNorm carrying the fused bias
    (mean 0, var 1 - eps, weight 1), which computes exactly what the fused layer did."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    fused = torch.jit.load(str(ts_path), map_location="cpu").state_dict()
    model = DetectionModel("yolov8n.yaml", nc=len(classes), verbose=False)
    state = model.state_dict()
    for key in list(state):
        if key.endswith(".bn.weight"):
            conv = key[: -len(".bn.weight")] + ".conv"
            bn = model.get_submodule(key[: -len(".weight")])
            state[conv + ".weight"] = fused[conv + ".weight"]
            state[key] = torch.ones_like(state[key])
            state[key[: -len("weight")] + "bias"] = fused[conv + ".bias"]
            state[key[: -len("weight")] + "running_mean"] = torch.zeros_like(state[key])
            state[key[: -len("weight")] + "running_var"] = torch.full_like(state[key], 1.0 - bn.eps)
        elif key in fused and ".bn." not in key and not key.endswith(".conv.weight"):
            state[key] = fused[key]
    model.load_state_dict(state)
    model.names = dict(enumerate(classes))
    model.eval()
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model(x)[0] - torch.jit.load(str(ts_path), map_location="cpu")(x)[0]).abs().max())
    assert diff < 1e-2, f"the rebuilt model differs from {ts_path} by {diff}"
    torch.save({"model": model.half(), "epoch": -1, "train_args": {}, "date": None}, out)
    print(f"{ts_path.name} -> {out} (max abs output difference {diff:.2e})", flush=True)
    return out


def per_class(metrics, classes: list[str]) -> dict:
    box = metrics.box
    out = {"map50": round(float(box.map50), 4), "map50_95": round(float(box.map), 4), "classes": {}}
    index = [int(i) for i in box.ap_class_index]  # classes with labels or predictions, in ap50/ap order
    for k, cls in enumerate(classes):
        j = index.index(k) if k in index else None
        out["classes"][cls] = {"map50": round(float(box.ap50[j]), 4) if j is not None else 0.0,
                               "map50_95": round(float(box.ap[j]), 4) if j is not None else 0.0}
    return out


def check_export(ts_path: Path, eager, nc: int, imgsz: int) -> dict:
    """The exported file loads with torch.jit.load, accepts any batch and any /32 size (none of
    them the traced shape), and matches the eager PyTorch model on the same input."""
    import torch

    m = torch.jit.load(str(ts_path), map_location="cpu").eval()
    eager = eager.float().eval()
    out = {}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(2, 3, imgsz, imgsz * 3 // 4 // 32 * 32), (1, 3, 960, 1280), (3, 3, 320, 320)]:
            x = torch.rand(*shape, generator=g)
            y = m(x)
            y = y[0] if isinstance(y, (list, tuple)) else y
            a = sum((shape[2] // s) * (shape[3] // s) for s in (8, 16, 32))
            assert tuple(y.shape) == (shape[0], 4 + nc, a), (shape, tuple(y.shape))
            ref = eager(x)
            ref = ref[0] if isinstance(ref, (list, tuple)) else ref
            box_diff = float((y[:, :4] - ref[:, :4]).abs().max())  # pixels
            cls_diff = float((y[:, 4:] - ref[:, 4:]).abs().max())  # probabilities
            assert box_diff < 0.05 and cls_diff < 1e-3, (shape, box_diff, cls_diff)
            out["x".join(map(str, shape))] = {"output": list(y.shape), "max_abs_diff_box_px": round(box_diff, 6),
                                             "max_abs_diff_scores": round(cls_diff, 8)}
    return out


def page_check(ts_path: Path, classes: list[str], page_dir: Path, size: int = 1280, conf: float = 0.25) -> dict:
    """Run the exported TorchScript the way the service will: letterbox a page to `size`, decode,
    class-wise NMS; match to ground truth (IoU >= 0.5, same class). Independent of ultralytics."""
    import torch
    import torchvision
    from PIL import Image

    m = torch.jit.load(str(ts_path), map_location="cpu").eval()
    tp = fp = fn = 0
    for j in sorted(page_dir.glob("*.json")):
        gt = json.loads(j.read_text())
        path = page_dir / "images/val" / gt["image"]
        img = Image.open(path if path.exists() else page_dir / gt["image"]).convert("RGB")
        w, h = img.size
        r = min(size / w, size / h)
        nw, nh = round(w * r), round(h * r)
        ph, pw = (-nh) % 32, (-nw) % 32  # minimal padding to a multiple of 32 (any size works)
        canvas = Image.new("RGB", (nw + pw, nh + ph), (114, 114, 114))
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), (pw // 2, ph // 2))
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = m(x)
        y = (y[0] if isinstance(y, (list, tuple)) else y)[0].T  # [A, 4+nc]
        scores, cls = y[:, 4:].max(1)
        keep = scores > conf
        b, scores, cls = y[keep, :4], scores[keep], cls[keep]
        xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
        keep = torchvision.ops.batched_nms(xyxy, scores, cls, 0.45)
        xyxy, cls = xyxy[keep], cls[keep]
        xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - pw // 2) / r
        xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - ph // 2) / r
        want = [s for s in gt["symbols"] if s["class"] in classes]
        used = set()
        for s in want:
            g = torch.tensor([s["box"]], dtype=torch.float32)
            if len(xyxy) == 0:
                fn += 1
                continue
            iou = torchvision.ops.box_iou(g, xyxy)[0]
            iou[cls != classes.index(s["class"])] = 0
            for k in used:
                iou[k] = 0
            k = int(iou.argmax())
            if iou[k] >= 0.5:
                tp += 1
                used.add(k)
            else:
                fn += 1
        fp += len(xyxy) - len(used)
    return {"size": size, "conf": conf, "tp": tp, "fp": fp, "fn": fn,
            "recall": round(tp / max(tp + fn, 1), 4), "precision": round(tp / max(tp + fp, 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="hvac-yolov8n")
    ap.add_argument("--classes", nargs="+", default=gen.CLASSES, choices=gen.CLASSES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, nargs="+", default=[16, 8, 6],
                    help="epochs per stage; each stage trains on a fresh dataset (seed + stage index) "
                         "starting from the previous stage's weights")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train-count", type=int, default=180)
    ap.add_argument("--val-count", type=int, default=100)
    ap.add_argument("--min-symbols", type=int, default=8)
    ap.add_argument("--max-symbols", type=int, default=22)
    ap.add_argument("--pages", type=int, default=40, help="whole-page eval pages (0: skip)")
    ap.add_argument("--pages-seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "models/detector")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from our own earlier weights (e.g. runs/hvac-yolov8n/weights/last.pt, or a "
                         "shipped models/detector/*.torchscript); layers whose shape matches are copied")
    ap.add_argument("--randomize", type=float, default=0.0,
                    help="share of domain-randomized training images (blueprint_gen.Style)")
    ap.add_argument("--scale-aug", type=float, default=0.3, help="ultralytics scale augmentation (+-)")
    ap.add_argument("--lr0", type=float, default=0.002)
    ap.add_argument("--skip-train", action="store_true", help="reuse runs/<name>/weights/last.pt")
    a = ap.parse_args()

    import torch
    from ultralytics import YOLO

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    classes = list(a.classes)
    scale = a.imgsz // 32 * 32
    t0 = time.time()
    n = len(a.epochs)
    init = str(a.init) if a.init else False
    if a.init and a.init.suffix == ".torchscript":
        RUNS.mkdir(parents=True, exist_ok=True)
        init = str(checkpoint_from_torchscript(a.init, classes, RUNS / f"{a.name}-init.pt"))
    train_s = 0.0
    stage_times = []
    for i, epochs in enumerate(a.epochs):
        seed = a.seed + i
        ds = TRAINING / "datasets" / (f"{a.name}-s{seed}-{scale}" + (f"-r{a.randomize}" if a.randomize else ""))
        data = build_dataset(ds, classes, gen.CLASSES, scale, seed, a.train_count, a.val_count,
                             a.min_symbols, a.max_symbols, a.randomize)
        run_name = a.name if i == n - 1 else f"{a.name}-stage{i + 1}"
        if a.skip_train:
            continue
        t = time.time()
        model = YOLO("yolov8n.yaml")  # architecture only: random init, nothing downloaded
        model.train(
            data=str(data), epochs=epochs, imgsz=scale, batch=a.batch, device="cpu", workers=a.workers,
            seed=seed, deterministic=True, pretrained=init, amp=False, plots=False, cache=True,
            project=str(RUNS), name=run_name, exist_ok=True, val=False,  # validate once, at the end
            optimizer="AdamW", lr0=a.lr0, cos_lr=True, warmup_epochs=1, warmup_bias_lr=0.0,
            close_mosaic=max(1, epochs // 4),  # the last quarter without mosaic, like inference
            # black-on-white line drawings: no colour jitter, mild scale (covers the 0.8 of letterbox-1280)
            hsv_h=0.0, hsv_s=0.0, hsv_v=0.2, scale=a.scale_aug, translate=0.1, degrees=0.0, fliplr=0.5,
            mosaic=1.0, verbose=True,
        )
        stage_times.append(round(time.time() - t))
        train_s += time.time() - t
        init = str(RUNS / run_name / "weights" / "last.pt")
    run_dir = RUNS / a.name
    heldout_seed = a.seed + n - 1 + 100_000  # the last stage's val split: no stage trained on it
    weights = run_dir / "weights" / "last.pt"
    model = YOLO(str(weights))

    report: dict = {"name": a.name, "seed": a.seed, "epochs": a.epochs, "imgsz": scale, "classes": classes,
                    "train_images": a.train_count, "train_wall_s": None if a.skip_train else round(train_s), "stage_wall_s": stage_times}
    val = model.val(data=str(data), imgsz=scale, batch=8, device="cpu", plots=False, workers=0,
                    project=str(RUNS), name=f"{a.name}-val", exist_ok=True, verbose=False)
    report["heldout"] = per_class(val, classes) | {"images": a.val_count, "seed": heldout_seed}
    if a.pages:
        pages = build_page_set(TRAINING / "datasets" / f"pages-s{a.pages_seed}-{a.pages}", classes, a.pages, a.pages_seed)
        for size in (1600, 1280, 640):  # native scale, the service's letterbox, and too small
            v = model.val(data=str(pages), imgsz=size, batch=4, device="cpu", plots=False, workers=0, rect=True,
                          project=str(RUNS), name=f"{a.name}-pages{size}", exist_ok=True, verbose=False)
            report[f"pages_letterbox{size}"] = per_class(v, classes) | {"pages": a.pages, "seed": a.pages_seed}

    ts = Path(model.export(format="torchscript", dynamic=True, imgsz=scale, device="cpu"))
    report["export_check"] = check_export(ts, YOLO(str(weights)).model, len(classes), scale)
    if a.pages:
        report["torchscript_page_check"] = [page_check(ts, classes, pages.parent, size) for size in (1280, 1600)]
    independent = ROOT / "tests" / "pages-independent"  # validation only: never in a training set
    if independent.exists():
        report["independent_page_check"] = [page_check(ts, classes, independent, size, conf)
                                            for size in (1600,) for conf in (0.25, 0.5)]

    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    dst = a.out / f"{a.name}.torchscript"
    shutil.copyfile(ts, dst)
    sha = hashlib.sha256(dst.read_bytes()).hexdigest()
    h = report["heldout"]
    labels = ", ".join(f'"{c}"' for c in classes)
    patterns = ", ".join(f"{c} = '({'|'.join(gen.TAG_PREFIXES[c])})-\\d+'" for c in classes)
    src = (f"trained here: training/train_yolo.py --name {a.name} --classes {' '.join(classes)} --seed {a.seed} "
           f"--epochs {' '.join(map(str, a.epochs))} --imgsz {scale} --train-count {a.train_count} "
           + (f"--randomize {a.randomize} --scale-aug {a.scale_aug} --lr0 {a.lr0} " if a.randomize else "")
           + (f"--init {a.init.resolve().relative_to(ROOT)} (yolov8n.yaml, weights from that run)" if a.init
              else "(yolov8n.yaml from scratch, no pretrained weights)"))
    (a.out / f"{a.name}.toml").write_text(f'''name = "{a.name}"
task = "detect"
file = "{dst.name}"
sha256 = "{sha}"
vram_estimate_bytes = 268435456
source = "{src}"

[input]
shape = [-1, 3, -1, -1]
dtype = "float32"
color = "RGB"
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
stride = 32
size = {scale}            # the imgsz it was trained at (native scale: 1 page px = 1 input px)

[labels]
classes = [{labels}]
# A tag of each class matches its pattern as a whole (training/blueprint_gen.py TAG_PREFIXES);
# the gateway ranks the text lines near a symbol by it (docs/gateway.md, the tag rule).
tag_patterns = {{ {patterns} }}

[metrics]
map50 = {h["map50"]}
map50_95 = {h["map50_95"]}
eval = "{a.val_count} held-out {scale}x{scale} generated images, seed {heldout_seed}"
''')
    report["file"] = str(dst.relative_to(ROOT))
    report["bytes"] = dst.stat().st_size
    report["sha256"] = sha
    report["total_wall_s"] = round(time.time() - t0)
    (RUNS / f"{a.name}-report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
