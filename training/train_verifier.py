#!/usr/bin/env python3
"""Train the detector's second look: a small classifier that tells a detected symbol from a
look-alike, from a 48x48 grey crop around the detection's box.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python training/train_verifier.py          # hvac-verify
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python training/train_verifier.py eval     # report only

Why: the detector takes circles, grid bubbles, pentagons and octagons for a thermostat's hexagon
on drawings it has never seen (precision 0.28 on the independent renderer's pages). A whole-page
model sees each look-alike once per page; a crop classifier sees tens of thousands of them in
minutes of CPU.

Steps (all seeded, nothing downloaded):
1. Render `--pages` randomized 640x640 small pages with blueprint_gen (the detector's own
   training distribution, at a seed it never used; training/datasets/, git-ignored).
2. Run the shipped detector on them (Ultralytics `predict`, imgsz 640 = native scale, conf 0.1)
   and label each detection by the truth: its class when IoU >= 0.5 with a true symbol of that
   class, `none` when IoU < 0.3 with every true symbol (ambiguous ones are left out). Every true
   box is also added, jittered the way detections are.
3. Train `Verifier` (7 conv layers, 0.13 M parameters) with 90-degree turns, flips, contrast and
   noise.
4. Export TorchScript (any batch of 1x48x48) and write models/detector/<name>.pt + <name>.toml.

The crop is defined once, here and in services/detector/src/verify.rs (which must agree):
a square of side round(1.25 * longer box side) + 4 around the box's centre, page pixels outside
the page white, grey = (299 R + 587 G + 114 B) / 1000, averaged down (or repeated up) to 48x48
the way torch's adaptive_avg_pool2d does, then x / 127.5 - 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
TRAINING = Path(__file__).resolve().parent
ROOT = TRAINING.parent
os.environ.setdefault("YOLO_CONFIG_DIR", str(TRAINING / "runs/yolo-config"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]
LABELS = [*CLASSES, "none"]
CROP = 48
CONTEXT = 1.25  # the crop's side over the box's longer side: the outline and a little around
MARGIN = 4  # px added to the side, so the smallest boxes still show their outline


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def crop_square(gray: np.ndarray, box) -> np.ndarray:
    """The square around `box` (x0, y0, x1, y1 in page pixels), white outside the page."""
    x0, y0, x1, y1 = box
    side = round_half_up(max(x1 - x0, y1 - y0) * CONTEXT) + MARGIN
    left = round_half_up((x0 + x1) / 2 - side / 2)
    top = round_half_up((y0 + y1) / 2 - side / 2)
    out = np.full((side, side), 255, np.uint8)
    h, w = gray.shape
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = gray[sy0:sy1, sx0:sx1]
    return out


def model_input(crops: list[np.ndarray]) -> torch.Tensor:
    """[N, 1, 48, 48] as the verifier takes it."""
    pooled = [F.adaptive_avg_pool2d(torch.from_numpy(c).float()[None, None], CROP) for c in crops]
    return torch.cat(pooled) / 127.5 - 1


class Verifier(nn.Module):
    def __init__(self, n: int = len(LABELS)):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(1, 16), block(16, 16), nn.MaxPool2d(2),
            block(16, 32), block(32, 32), nn.MaxPool2d(2),
            block(32, 64), block(64, 64), nn.MaxPool2d(2),
            block(64, 96))
        self.head = nn.Linear(96, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities over LABELS."""
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)).softmax(1)


def jitter(box, rng: np.random.Generator):
    """A true box moved and resized the way the detector's boxes miss it."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    cx += rng.normal(0, 0.04) * w
    cy += rng.normal(0, 0.04) * h
    w *= math.exp(rng.normal(0, 0.06))
    h *= math.exp(rng.normal(0, 0.06))
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def mine(detector: str, pages: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision
    from ultralytics import YOLO

    model = YOLO(detector, task="detect")
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for image in sorted((pages / "images").glob("*.png")):
        gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        h, w = gray.shape
        rows = np.loadtxt(pages / "labels" / f"{image.stem}.txt", ndmin=2)
        truth = torch.tensor([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                              for _, cx, cy, bw, bh in rows], dtype=torch.float32).reshape(-1, 4)
        truth_class = [int(r[0]) for r in rows]
        found = model.predict(str(image), imgsz=640, conf=0.1, iou=0.7, verbose=False, device="cpu")[0]
        for box, cls in zip(found.boxes.xyxy.cpu(), found.boxes.cls.cpu().long().tolist()):
            iou = torchvision.ops.box_iou(box[None], truth)[0] if len(truth) else torch.zeros(0)
            best = int(iou.argmax()) if len(iou) else -1
            if best >= 0 and iou[best] >= 0.5 and truth_class[best] == cls:
                label = cls
            elif best < 0 or iou[best] < 0.3:
                label = LABELS.index("none")
            else:
                continue  # a loose or wrong-class box on a real symbol: neither answer is right
            crops.append(crop_square(gray, box.tolist()))
            labels.append(label)
        for box, cls in zip(truth.tolist(), truth_class):
            crops.append(crop_square(gray, jitter(box, rng)))
            labels.append(cls)
    return model_input(crops), torch.tensor(labels)


def augment(x: torch.Tensor) -> torch.Tensor:
    x = torch.rot90(x, int(np.random.randint(4)), (2, 3))
    if np.random.rand() < 0.5:
        x = x.flip(3)
    b = x.shape[0]
    low = torch.rand(b, 1, 1, 1) * 0.6 - 1.0  # faded ink
    high = 1.0 - torch.rand(b, 1, 1, 1) * 0.5  # grey paper
    x = (x + 1) / 2 * (high - low) + low
    return (x + torch.randn_like(x) * torch.rand(b, 1, 1, 1) * 0.15).clamp(-1, 1)


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> Verifier:
    torch.manual_seed(seed)
    np.random.seed(seed)
    order = torch.randperm(len(y))
    held = len(y) // 10
    xv, yv, xt, yt = x[order[:held]], y[order[:held]], x[order[held:]], y[order[held:]]
    model = Verifier()
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    batch = 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * (len(yt) // batch))
    counts = torch.bincount(yt, minlength=len(LABELS)).float()
    weight = (counts.sum() / counts / len(LABELS)).clamp(max=5)
    started = time.time()
    for epoch in range(epochs):
        model.train()
        shuffled = torch.randperm(len(yt))
        for i in range(0, len(shuffled) - batch + 1, batch):
            idx = shuffled[i:i + batch]
            logits = model.head(F.adaptive_avg_pool2d(model.features(augment(xt[idx])), 1).flatten(1))
            loss = F.cross_entropy(logits, yt[idx], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            guess = model(xv).argmax(1)
        none = LABELS.index("none")
        print(f"epoch {epoch}: held-out accuracy {(guess == yv).float().mean():.4f}, look-alikes refused "
              f"{(guess[yv == none] == none).float().mean():.4f}, symbols kept "
              f"{(guess[yv != none] == yv[yv != none]).float().mean():.4f}, {time.time() - started:.0f} s", flush=True)
    return model.eval()


def evaluate(detector: str, verifier: torch.jit.ScriptModule, folder: Path, refuse_at: float) -> None:
    """Recall/precision on whole pages (native 1600, conf 0.25) with and without the second look."""
    import torchvision
    from ultralytics import YOLO

    model = YOLO(detector, task="detect")
    counts = {kept: [0, 0, 0] for kept in ("without", "with")}  # found, missed, false
    for page in sorted(folder.glob("*.json"))[:30]:
        truth = json.loads(page.read_text())
        gray = cv2.imread(str(folder / truth["image"]), cv2.IMREAD_GRAYSCALE)
        found = model.predict(str(folder / truth["image"]), imgsz=1600, conf=0.25, iou=0.7,
                              verbose=False, device="cpu")[0]
        boxes, classes = found.boxes.xyxy.cpu(), found.boxes.cls.cpu().long()
        with torch.no_grad():
            none = verifier(model_input([crop_square(gray, b.tolist()) for b in boxes]))[:, -1] if len(boxes) else torch.zeros(0)
        for name, keep in (("without", torch.ones(len(boxes), dtype=torch.bool)), ("with", none < refuse_at)):
            b, c, used = boxes[keep], classes[keep], set()
            for symbol in truth["symbols"]:
                hit = False
                if len(b):
                    iou = torchvision.ops.box_iou(torch.tensor([symbol["box"]], dtype=torch.float32), b)[0]
                    iou[c != CLASSES.index(symbol["class"])] = 0
                    iou[list(used)] = 0
                    k = int(iou.argmax())
                    hit = bool(iou[k] >= 0.5)
                    if hit:
                        used.add(k)
                counts[name][0 if hit else 1] += 1
            counts[name][2] += len(b) - len(used)
    for name, (f, m, fp) in counts.items():
        print(f"{folder.name}, {name} the second look: recall {f / (f + m):.3f}, precision {f / max(f + fp, 1):.3f}")


def export(model: Verifier, name: str, detector: str, args: argparse.Namespace, seconds: float) -> Path:
    out = ROOT / "models/detector"
    path = out / f"{name}.pt"
    traced = torch.jit.trace(model, torch.zeros(2, 1, CROP, CROP))
    traced.save(str(path))
    again = torch.jit.load(str(path))
    x = torch.rand(5, 1, CROP, CROP) * 2 - 1
    assert torch.allclose(again(x), model(x), atol=1e-5), "the export answers differently"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / f"{name}.toml").write_text(f'''name = "{name}"
task = "verify"
file = "{path.name}"
sha256 = "{sha}"
vram_estimate_bytes = 67108864
source = "trained here: training/train_verifier.py --pages {args.pages} --seed {args.seed} --epochs {args.epochs}, on {detector}'s detections ({seconds / 60:.0f} min on the shared 2-core VM)"

[input]
shape = [-1, 1, {CROP}, {CROP}]
dtype = "float32"
color = "GRAY"
mean = [0.5]
std = [0.5]
height = {CROP}

[labels]
classes = {json.dumps(LABELS)}
''')
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", choices=["train", "eval"], default="train")
    ap.add_argument("--name", default="hvac-verify")
    ap.add_argument("--detector", default=str(ROOT / "models/detector/hvac-yolov8n.torchscript"))
    ap.add_argument("--pages", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=777000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--refuse-at", type=float, default=0.5, help="eval: refuse when P(none) >= this")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.step == "train":
        started = time.time()
        pages = TRAINING / "datasets" / f"verify-{args.seed}"
        subprocess.run([sys.executable, str(TRAINING / "blueprint_gen.py"), "yolo", "--out", str(pages),
                        "--count", str(args.pages), "--seed", str(args.seed), "--randomize", "0.7"], check=True)
        x, y = mine(args.detector, pages, args.seed)
        print(f"{len(y)} crops by label {dict(zip(LABELS, torch.bincount(y, minlength=len(LABELS)).tolist()))}, "
              f"{time.time() - started:.0f} s", flush=True)
        model = train(x, y, args.epochs, args.seed)
        print("wrote", export(model, args.name, Path(args.detector).name, args, time.time() - started))
    verifier = torch.jit.load(str(ROOT / f"models/detector/{args.name}.pt")).eval()
    for folder in (ROOT / "tests/pages-independent", ROOT / "tests/pages"):
        evaluate(args.detector, verifier, folder, args.refuse_at)


if __name__ == "__main__":
    main()
