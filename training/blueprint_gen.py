#!/usr/bin/env python3
"""Seeded generator of synthetic HVAC blueprint images.

Four symbol classes, drawn as black lines on white (class ids in this order):

    0 diffuser    circle with a cross (+ or x) inside        tag SD-12, RD-7, CD-104
    1 vav_box     rectangle (aspect 1.4-2.2) with a diagonal  tag VAV-203
    2 thermostat  hexagon, sometimes with a "T" inside        tag T-4, TS-31
    3 damper      small square with an x inside               tag D-9, FD-22, MD-310

Every symbol has its tag printed beside it (right, left, above or below, a few px gap).
A symbol's box covers the symbol's ink only, never its tag. Distractors: walls (thick lines),
dimension lines with arrows and numbers, dashed ducts, stray text (room names, notes) and
look-alikes that are NOT labelled (plain circles, rectangles, squares, triangles; some carry
a tag-like label too, so a nearby tag alone never means "symbol").

Scale: symbols are drawn 20-60 px wide at the page's native resolution (1600x1200 pages).
Training images are 640x640 "small pages" drawn at the same native scale, so a model trained
on them at imgsz=640 sees symbols at the same pixel size as 640 tiles of a page; letterboxing a
whole page to 1280 shrinks them by 0.8, which the training scale augmentation covers.

Usage:
    python training/blueprint_gen.py pages  --out DIR --count N --seed S [--width 1600 --height 1200]
    python training/blueprint_gen.py samples --out DIR          # the fixed eval set: 40 pages, seed 1234
    python training/blueprint_gen.py yolo   --out DIR --count N --seed S [--size 640]

Page ground truth (one JSON per PNG, same stem):
    {"image": "page_0000.png", "width": 1600, "height": 1200, "seed": 1234, "index": 0,
     "classes": [...],
     "symbols": [{"class": "vav_box", "class_id": 1, "box": [x_min, y_min, x_max, y_max],
                  "tag": "VAV-203", "tag_box": [x_min, y_min, x_max, y_max]}, ...]}
Boxes are integer pixel edges: x_min is the first ink column, x_max is one past the last
(so width = x_max - x_min), same for y.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]
TAG_PREFIXES = {
    "diffuser": ["SD", "RD", "CD"],
    "vav_box": ["VAV"],
    "thermostat": ["T", "TS"],
    "damper": ["D", "FD", "MD"],
}
# Labels that look like tags but belong to unlabelled look-alikes / equipment we do not detect.
DECOY_PREFIXES = ["EF", "AHU", "P", "FCU", "UH", "CV", "EX", "RTU", "L", "C"]

ROOM_NAMES = [
    "OFFICE", "CONF RM", "CORRIDOR", "MECH", "STORAGE", "LOBBY", "OPEN OFFICE", "BREAK RM",
    "ELEC", "JAN", "RESTROOM", "SERVER RM", "COPY", "RECEPTION", "STAIR", "LAB", "CLASSROOM",
]
NOTES = [
    "NOTE: ALL DUCTWORK 24 GA.", "SEE SHEET M-501", "VERIFY IN FIELD", "TYP. OF 4",
    "SUPPLY AIR", "RETURN AIR", "EXHAUST TO ROOF", "PROVIDE ACCESS PANEL", "SCALE 1/8\" = 1'-0\"",
    "MECHANICAL PLAN - LEVEL 2", "COORDINATE WITH ARCH.", "12x10 UP", "18\" DIA", "NTS",
    "FIRE RATED WALL", "CFM 450", "TO AHU-1", "CEILING HT 9'-0\"",
]

FONT_DIR = Path("/usr/share/fonts/truetype")
FONT_CANDIDATES = [
    "dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSansMono.ttf",
    "dejavu/DejaVuSansMono-Bold.ttf", "dejavu/DejaVuSerif.ttf", "dejavu/DejaVuSansCondensed.ttf",
    "liberation/LiberationSans-Regular.ttf", "liberation/LiberationSans-Bold.ttf",
    "liberation/LiberationMono-Regular.ttf", "liberation/LiberationSerif-Regular.ttf",
    "liberation2/LiberationSans-Regular.ttf", "liberation2/LiberationMono-Regular.ttf",
]
FONTS = [str(FONT_DIR / f) for f in FONT_CANDIDATES if (FONT_DIR / f).exists()]
if not FONTS:
    raise SystemExit("no DejaVu/Liberation fonts under /usr/share/fonts (apt-get install fonts-dejavu-core)")

_font_cache: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}


def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    key = (path, size)
    if key not in _font_cache:
        _font_cache[key] = ImageFont.truetype(path, size)
    return _font_cache[key]


Box = tuple[int, int, int, int]  # x0, y0, x1 (exclusive), y1 (exclusive)


def overlaps(a: Box, b: Box, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0]
                or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def ink_box(patch: np.ndarray, threshold: int = 200) -> Box | None:
    ys, xs = np.nonzero(patch < threshold)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class Sprite:
    """A small rendered patch (white background) and the ink box inside it."""
    img: np.ndarray  # uint8, HxW
    box: Box         # ink box in patch coordinates

    @property
    def w(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def h(self) -> int:
        return self.box[3] - self.box[1]


def _sprite(img: Image.Image) -> Sprite:
    a = np.asarray(img, dtype=np.uint8)
    box = ink_box(a)
    assert box is not None
    x0, y0, x1, y1 = box
    a = a[y0:y1, x0:x1].copy()
    return Sprite(a, (0, 0, x1 - x0, y1 - y0))


def _canvas(w: int, h: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (w, h), 255)
    return img, ImageDraw.Draw(img)


def _line(d: ImageDraw.ImageDraw, pts, lw: int) -> None:
    d.line(pts, fill=0, width=lw)


def _poly(d: ImageDraw.ImageDraw, pts, lw: int) -> None:
    pts = [tuple(map(float, p)) for p in pts]
    d.line(pts + [pts[0]], fill=0, width=lw, joint="curve")


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float):
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


# --------------------------------------------------------------------------- symbols


@dataclass
class Style:
    """Domain randomization of one training image; `None` everywhere means the committed
    pages' look (and the same random stream, so those stay reproducible)."""
    scale: float          # symbol size factor: log-uniform 0.5-3 (symbols ~10-180 px)
    max_lw: int           # line widths 1..max_lw px
    rotate: bool          # symbols turned by a random multiple of 90 degrees
    tag_gap: float        # tags up to this many symbol widths away (plus 2 px)
    more_lookalikes: bool  # pentagons, heptagons, octagons, grid bubbles, text boxes too
    scan: bool            # grey paper, faded/broken strokes, wobble, skew, blur, noise, JPEG

    @staticmethod
    def draw(rng: np.random.Generator) -> "Style":
        return Style(scale=float(math.exp(rng.uniform(math.log(0.5), math.log(3.0)))),
                     max_lw=int(rng.integers(3, 6)), rotate=bool(rng.random() < 0.5),
                     tag_gap=float(rng.choice([0.0, 0.5, 1.5])), more_lookalikes=bool(rng.random() < 0.7),
                     scan=bool(rng.random() < 0.4))


def draw_symbol(cls: str, rng: np.random.Generator, scale: float = 1.0, max_lw: int = 3) -> Sprite:
    lw = int(rng.integers(1, max_lw + 1))  # 1..3 px unless randomized
    pad = 4
    if cls == "diffuser":
        s = int(rng.integers(20, 61) * scale)
        s = max(s, 14)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        x0 = y0 = pad
        d.ellipse([x0, y0, x0 + s - 1, y0 + s - 1], outline=0, width=lw)
        c = pad + (s - 1) / 2
        r = (s - 1) / 2
        if rng.random() < 0.5:  # "+"
            _line(d, [(c, y0), (c, y0 + s - 1)], lw)
            _line(d, [(x0, c), (x0 + s - 1, c)], lw)
        else:  # "x", ends on the circle
            k = r * math.cos(math.pi / 4)
            _line(d, [(c - k, c - k), (c + k, c + k)], lw)
            _line(d, [(c - k, c + k), (c + k, c - k)], lw)
        return _sprite(img)
    if cls == "vav_box":
        long_side = int(rng.integers(30, 61) * scale)
        aspect = rng.uniform(1.4, 2.2)
        short_side = max(int(round(long_side / aspect)), 12)
        w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        img, d = _canvas(w + 2 * pad, h + 2 * pad)
        d.rectangle([pad, pad, pad + w - 1, pad + h - 1], outline=0, width=lw)
        if rng.random() < 0.5:
            _line(d, [(pad, pad), (pad + w - 1, pad + h - 1)], lw)
        else:
            _line(d, [(pad, pad + h - 1), (pad + w - 1, pad)], lw)
        return _sprite(img)
    if cls == "thermostat":
        s = max(int(rng.integers(20, 47) * scale), 16)
        r = s / 2
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        c = pad + r
        rot = 0.0 if rng.random() < 0.5 else math.pi / 6  # pointy sides or flat top
        _poly(d, _regular_polygon(c, c, r - 0.5, 6, rot), lw)
        if rng.random() < 0.6 and s >= 20:
            f = font(FONTS[int(rng.integers(len(FONTS)))], max(9, int(s * 0.5)))
            d.text((c, c), "T", font=f, fill=0, anchor="mm")
        return _sprite(img)
    if cls == "damper":
        s = max(int(rng.integers(16, 33) * scale), 12)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        d.rectangle([pad, pad, pad + s - 1, pad + s - 1], outline=0, width=lw)
        _line(d, [(pad, pad), (pad + s - 1, pad + s - 1)], lw)
        _line(d, [(pad, pad + s - 1), (pad + s - 1, pad)], lw)
        return _sprite(img)
    raise ValueError(cls)


def draw_lookalike(rng: np.random.Generator, scale: float = 1.0, more: bool = False) -> Sprite:
    lw = int(rng.integers(1, 4))
    pad = 4
    kinds = ["circle", "rect", "square", "triangle", "circle_dot", "diamond", "rect_line"]
    if more:
        # half of them round or nearly: what a thermostat's hexagon must be told from
        rounds = ["circle", "circle_dot", "bubble", "pentagon", "heptagon", "octagon"]
        others = ["rect", "square", "triangle", "diamond", "rect_line", "text_box"]
        kind = rng.choice(rounds if rng.random() < 0.5 else rounds + others)
    else:
        kind = rng.choice(kinds)
    if kind in ("pentagon", "heptagon", "octagon"):  # hexagon-like, not a thermostat
        s = max(int(rng.integers(18, 47) * scale), 12)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        c = pad + s / 2
        sides = {"pentagon": 5, "heptagon": 7, "octagon": 8}[kind]
        _poly(d, _regular_polygon(c, c, s / 2 - 0.5, sides, rng.uniform(0, math.pi)), lw)
        return _sprite(img)
    if kind == "bubble":  # a column-grid or section bubble: a circle with a letter or number
        s = max(int(rng.integers(18, 47) * scale), 14)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        d.ellipse([pad, pad, pad + s - 1, pad + s - 1], outline=0, width=lw)
        mark = "ABCDEFGHJKLMNPRSTUVWXY"[int(rng.integers(22))] if rng.random() < 0.6 else str(int(rng.integers(1, 13)))
        f = font(FONTS[int(rng.integers(len(FONTS)))], max(9, int(s * rng.uniform(0.4, 0.6))))
        d.text((pad + s / 2, pad + s / 2), mark, font=f, fill=0, anchor="mm")
        return _sprite(img)
    if kind == "text_box":  # equipment name in a frame
        label = f"{DECOY_PREFIXES[int(rng.integers(len(DECOY_PREFIXES)))]}-{int(rng.integers(1, 40))}"
        f = font(FONTS[int(rng.integers(len(FONTS)))], max(10, int(rng.integers(11, 17) * min(scale, 2.0))))
        l, t, r, b = f.getbbox(label)
        m = int(rng.integers(4, 10))
        img, d = _canvas(r - l + 2 * m + 2 * pad, b - t + 2 * m + 2 * pad)
        d.rectangle([pad, pad, pad + r - l + 2 * m, pad + b - t + 2 * m], outline=0, width=lw)
        d.text((pad + m - l, pad + m - t), label, font=f, fill=0)
        return _sprite(img)
    if kind in ("circle", "circle_dot"):
        s = max(int(rng.integers(16, 61) * scale), 12)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        d.ellipse([pad, pad, pad + s - 1, pad + s - 1], outline=0, width=lw)
        if kind == "circle_dot":
            c = pad + s / 2
            d.ellipse([c - 2, c - 2, c + 2, c + 2], fill=0)
        return _sprite(img)
    if kind in ("rect", "rect_line"):
        a = int(rng.integers(24, 71) * scale)
        b = max(int(a / rng.uniform(1.2, 3.0)), 10)
        w, h = (a, b) if rng.random() < 0.5 else (b, a)
        img, d = _canvas(w + 2 * pad, h + 2 * pad)
        d.rectangle([pad, pad, pad + w - 1, pad + h - 1], outline=0, width=lw)
        if kind == "rect_line":  # a middle line (not a diagonal): e.g. a grille/register
            if w >= h:
                _line(d, [(pad + w // 2, pad), (pad + w // 2, pad + h - 1)], lw)
            else:
                _line(d, [(pad, pad + h // 2), (pad + w - 1, pad + h // 2)], lw)
        return _sprite(img)
    if kind == "square":
        s = max(int(rng.integers(14, 41) * scale), 10)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        d.rectangle([pad, pad, pad + s - 1, pad + s - 1], outline=0, width=lw)
        return _sprite(img)
    if kind == "diamond":
        s = max(int(rng.integers(18, 45) * scale), 12)
        img, d = _canvas(s + 2 * pad, s + 2 * pad)
        c = pad + s / 2
        _poly(d, _regular_polygon(c, c, s / 2 - 0.5, 4, 0.0), lw)
        return _sprite(img)
    # triangle
    s = max(int(rng.integers(18, 51) * scale), 12)
    img, d = _canvas(s + 2 * pad, s + 2 * pad)
    c = pad + s / 2
    rot = rng.choice([-math.pi / 2, math.pi / 2, 0.0, math.pi])
    _poly(d, _regular_polygon(c, c + (s * 0.1 if rot < 0 else 0), s / 2 - 0.5, 3, rot), lw)
    return _sprite(img)


def draw_text(text: str, rng: np.random.Generator, size: int | None = None,
              font_path: str | None = None, vertical: bool = False) -> Sprite:
    size = size if size is not None else int(rng.integers(11, 19))
    path = font_path or FONTS[int(rng.integers(len(FONTS)))]
    f = font(path, size)
    l, t, r, b = f.getbbox(text)
    img, d = _canvas(r - l + 8, b - t + 8)
    d.text((4 - l, 4 - t), text, font=f, fill=0)
    if vertical:
        img = img.rotate(90, expand=True, fillcolor=255)
    return _sprite(img)


def make_tag(cls: str, rng: np.random.Generator) -> str:
    prefix = TAG_PREFIXES[cls][int(rng.integers(len(TAG_PREFIXES[cls])))]
    if cls == "vav_box" or rng.random() < 0.3:
        n = int(rng.integers(1, 400))
    else:
        n = int(rng.integers(1, 60))
    return f"{prefix}-{n}"


# --------------------------------------------------------------------------- pages


class Page:
    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.w, self.h = width, height
        self.rng = rng
        self.img = np.full((height, width), 255, dtype=np.uint8)
        self.occupied: list[Box] = []  # things a symbol/tag/text must keep clear of
        self.symbols: list[dict] = []

    # -- low level
    def paste(self, sp: Sprite, x: int, y: int) -> Box:
        h, w = sp.img.shape
        region = self.img[y:y + h, x:x + w]
        np.minimum(region, sp.img[: region.shape[0], : region.shape[1]], out=region)
        return x, y, x + w, y + h

    def free(self, box: Box, margin: int) -> bool:
        if box[0] < 2 or box[1] < 2 or box[2] > self.w - 2 or box[3] > self.h - 2:
            return False
        return not any(overlaps(box, o, margin) for o in self.occupied)

    def draw_lines(self, fn) -> None:
        img = Image.fromarray(self.img)
        fn(ImageDraw.Draw(img))
        self.img = np.asarray(img, dtype=np.uint8).copy()

    # -- distractors drawn first: walls, dimension lines, ducts
    def walls(self, n: int) -> None:
        rng = self.rng
        segs = []
        for _ in range(n):
            t = int(rng.integers(4, 11))
            if rng.random() < 0.5:
                y = int(rng.integers(20, self.h - 20))
                x0 = int(rng.integers(0, self.w // 2))
                x1 = int(min(self.w, x0 + rng.integers(self.w // 4, self.w)))
                segs.append((x0, y, x1, y + t))
            else:
                x = int(rng.integers(20, self.w - 20))
                y0 = int(rng.integers(0, self.h // 2))
                y1 = int(min(self.h, y0 + rng.integers(self.h // 4, self.h)))
                segs.append((x, y0, x + t, y1))

        def fn(d):
            for s in segs:
                d.rectangle([s[0], s[1], s[2] - 1, s[3] - 1], fill=0)
                # door gap / opening: leave a white notch sometimes
                if rng.random() < 0.4:
                    if s[2] - s[0] > s[3] - s[1]:
                        gx = int(rng.integers(s[0], max(s[0] + 1, s[2] - 40)))
                        d.rectangle([gx, s[1], gx + 36, s[3] - 1], fill=255)
                    else:
                        gy = int(rng.integers(s[1], max(s[1] + 1, s[3] - 40)))
                        d.rectangle([s[0], gy, s[2] - 1, gy + 36], fill=255)
        self.draw_lines(fn)
        self.occupied.extend(segs)

    def dimension_line(self) -> None:
        rng = self.rng
        horizontal = rng.random() < 0.6
        length = int(rng.integers(80, max(81, min(self.w, self.h) // 2)))
        lw = 1
        for _ in range(30):
            if horizontal:
                x0 = int(rng.integers(10, self.w - length - 10))
                y = int(rng.integers(25, self.h - 25))
                box = (x0 - 2, y - 22, x0 + length + 2, y + 8)
            else:
                x = int(rng.integers(25, self.w - 25))
                y0 = int(rng.integers(10, self.h - length - 10))
                box = (x - 22, y0 - 2, x + 8, y0 + length + 2)
            if self.free(box, 2):
                break
        else:
            return
        feet = int(rng.integers(2, 40))
        inches = int(rng.integers(0, 12))
        label = f"{feet}'-{inches}\""
        a = 6

        def fn(d):
            if horizontal:
                _line(d, [(x0, y), (x0 + length, y)], lw)
                d.polygon([(x0, y), (x0 + a + 2, y - a // 2), (x0 + a + 2, y + a // 2)], fill=0)
                d.polygon([(x0 + length, y), (x0 + length - a - 2, y - a // 2),
                           (x0 + length - a - 2, y + a // 2)], fill=0)
                _line(d, [(x0, y - 7), (x0, y + 7)], lw)
                _line(d, [(x0 + length, y - 7), (x0 + length, y + 7)], lw)
            else:
                _line(d, [(x, y0), (x, y0 + length)], lw)
                d.polygon([(x, y0), (x - a // 2, y0 + a + 2), (x + a // 2, y0 + a + 2)], fill=0)
                d.polygon([(x, y0 + length), (x - a // 2, y0 + length - a - 2),
                           (x + a // 2, y0 + length - a - 2)], fill=0)
                _line(d, [(x - 7, y0), (x + 7, y0)], lw)
                _line(d, [(x - 7, y0 + length), (x + 7, y0 + length)], lw)
        self.draw_lines(fn)
        self.occupied.append(box)
        sp = draw_text(label, rng, size=int(rng.integers(10, 15)), vertical=not horizontal)
        if horizontal:
            tx, ty = x0 + length // 2 - sp.w // 2, y - 4 - sp.h
        else:
            tx, ty = x - 4 - sp.w, y0 + length // 2 - sp.h // 2
        tb = (tx, ty, tx + sp.w, ty + sp.h)
        if tb[0] >= 2 and tb[1] >= 2 and tb[2] <= self.w - 2 and tb[3] <= self.h - 2:
            # the number sits on its own dimension line: clear the line under it so it reads cleanly
            self.img[ty - 1:ty + sp.h + 1, tx - 2:tx + sp.w + 2] = 255
            self.paste(sp, tx, ty)
            self.occupied.append(tb)

    def duct(self) -> None:
        rng = self.rng
        horizontal = rng.random() < 0.5
        length = int(rng.integers(120, max(121, (self.w if horizontal else self.h) * 2 // 3)))
        width = int(rng.integers(10, 31)) if rng.random() < 0.7 else 0
        dash, gap = int(rng.integers(6, 16)), int(rng.integers(4, 9))
        lw = int(rng.integers(1, 3))
        for _ in range(30):
            if horizontal:
                x0 = int(rng.integers(5, max(6, self.w - length - 5)))
                y = int(rng.integers(10, self.h - width - 10))
                box = (x0, y - lw, x0 + length, y + width + lw + 1)
            else:
                x = int(rng.integers(10, self.w - width - 10))
                y0 = int(rng.integers(5, max(6, self.h - length - 5)))
                box = (x - lw, y0, x + width + lw + 1, y0 + length)
            if self.free(box, 2):
                break
        else:
            return

        def fn(d):
            offs = [0, width] if width else [0]
            p = 0
            while p < length:
                q = min(p + dash, length)
                for o in offs:
                    if horizontal:
                        _line(d, [(x0 + p, y + o), (x0 + q, y + o)], lw)
                    else:
                        _line(d, [(x + o, y0 + p), (x + o, y0 + q)], lw)
                p = q + gap
        self.draw_lines(fn)
        self.occupied.append(box)

    # -- placed items
    def place_text(self, text: str, size: int | None = None) -> bool:
        sp = draw_text(text, self.rng, size=size)
        for _ in range(40):
            x = int(self.rng.integers(2, max(3, self.w - sp.w - 2)))
            y = int(self.rng.integers(2, max(3, self.h - sp.h - 2)))
            box = (x, y, x + sp.w, y + sp.h)
            if self.free(box, 6):
                self.paste(sp, x, y)
                self.occupied.append(box)
                return True
        return False

    def place_with_tag(self, sym: Sprite, tag_text: str | None,
                       tag_gap: float = 0.0) -> tuple[Box, Box | None] | None:
        """Place a symbol and (optionally) its tag beside it; return (symbol box, tag box).
        `tag_gap` > 0: the tag sits up to that many symbol widths away instead of 3-8 px."""
        rng = self.rng
        tag = draw_text(tag_text, rng) if tag_text else None
        for _ in range(60):
            x = int(rng.integers(2, max(3, self.w - sym.w - 2)))
            y = int(rng.integers(2, max(3, self.h - sym.h - 2)))
            sbox = (x, y, x + sym.w, y + sym.h)
            tbox = None
            if tag is not None:
                gap = int(rng.integers(3, 9)) if tag_gap <= 0 else 2 + int(rng.uniform(0, tag_gap) * sym.w)
                side = rng.choice(["right", "left", "above", "below"], p=[0.4, 0.2, 0.2, 0.2])
                cy = y + sym.h // 2 - tag.h // 2
                cx = x + sym.w // 2 - tag.w // 2
                if side == "right":
                    tx, ty = x + sym.w + gap, cy
                elif side == "left":
                    tx, ty = x - gap - tag.w, cy
                elif side == "above":
                    tx, ty = cx, y - gap - tag.h
                else:
                    tx, ty = cx, y + sym.h + gap
                tbox = (tx, ty, tx + tag.w, ty + tag.h)
                if not self.free(tbox, 6):
                    continue
            if not self.free(sbox, 8):
                continue
            self.paste(sym, x, y)
            self.occupied.append(sbox)
            if tag is not None:
                self.paste(tag, tbox[0], tbox[1])
                self.occupied.append(tbox)
            return sbox, tbox
        return None

    def add_symbol(self, cls: str, style: Style | None = None) -> bool:
        sym = draw_symbol(cls, self.rng, style.scale if style else 1.0, style.max_lw if style else 3)
        if style and style.rotate:
            sym = Sprite(np.ascontiguousarray(np.rot90(sym.img, int(self.rng.integers(4)))), (0, 0, 0, 0))
            sym.box = (0, 0, sym.img.shape[1], sym.img.shape[0])
        tag = make_tag(cls, self.rng)
        placed = self.place_with_tag(sym, tag, style.tag_gap if style else 0.0)
        if placed is None:
            return False
        sbox, tbox = placed
        self.symbols.append({"class": cls, "class_id": CLASSES.index(cls), "box": list(sbox),
                             "tag": tag, "tag_box": list(tbox)})
        return True

    def add_lookalike(self, style: Style | None = None) -> bool:
        sym = draw_lookalike(self.rng, style.scale if style else 1.0, bool(style and style.more_lookalikes))
        label = None
        if self.rng.random() < 0.5:
            label = f"{DECOY_PREFIXES[int(self.rng.integers(len(DECOY_PREFIXES)))]}-{int(self.rng.integers(1, 40))}"
        return self.place_with_tag(sym, label) is not None


def render_page(width: int, height: int, rng: np.random.Generator, n_symbols: int,
                classes: list[str] | None = None, style: Style | None = None) -> tuple[np.ndarray, list[dict]]:
    """Draw one page; return (uint8 grayscale HxW, symbols ground truth)."""
    classes = classes or CLASSES
    page = Page(width, height, rng)
    area = width * height / (1600 * 1200)
    page.walls(int(rng.integers(2, 7) * max(area, 0.35) + 0.5))
    for _ in range(int(rng.integers(1, 6) * max(area, 0.3) + 0.5)):
        page.dimension_line()
    for _ in range(int(rng.integers(1, 5) * max(area, 0.3) + 0.5)):
        page.duct()
    # symbols first (they are what counts), then look-alikes and text in the gaps
    order = [classes[int(rng.integers(len(classes)))] for _ in range(n_symbols)]
    for cls in order:
        page.add_symbol(cls, style)
    # randomized images get three times the look-alikes: the shapes a symbol must be told from
    lookalikes = int(rng.integers(3, 12) * max(area, 0.3) * (3 if style and style.more_lookalikes else 1) + 0.5)
    for _ in range(lookalikes):
        page.add_lookalike(style)
    for _ in range(int(rng.integers(3, 10) * max(area, 0.3) + 0.5)):
        if rng.random() < 0.6:
            name = ROOM_NAMES[int(rng.integers(len(ROOM_NAMES)))]
            if rng.random() < 0.6:
                name = f"{name} {int(rng.integers(100, 400))}"
            page.place_text(name, size=int(rng.integers(12, 23)))
        else:
            page.place_text(NOTES[int(rng.integers(len(NOTES)))], size=int(rng.integers(10, 16)))
    return page.img, page.symbols


def scan_look(img: np.ndarray, symbols: list[dict], rng: np.random.Generator) -> np.ndarray:
    """A scanned or photocopied sheet: grey paper, faded and broken strokes, a slight wobble,
    skew up to 3 degrees (the boxes follow: their turned corners, bounded), blur, noise, JPEG."""
    import cv2  # only the randomized training images need it

    h, w = img.shape
    paper = rng.uniform(200, 250)
    ink = (255 - img.astype(np.float32)) / 255 * rng.uniform(0.5, 1.0)
    if rng.random() < 0.5:  # broken strokes
        holes = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.0)
        ink[holes > np.quantile(holes, rng.uniform(0.85, 0.95))] *= 0.1
    out = paper * (1 - ink)
    if rng.random() < 0.5:  # hand/scan wobble: a smooth displacement of about a pixel
        grid = np.mgrid[0:h, 0:w].astype(np.float32)
        field = [cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 12) for _ in range(2)]
        field = [f / (np.abs(f).max() + 1e-6) * rng.uniform(0.5, 1.5) for f in field]
        out = cv2.remap(out, grid[1] + field[0], grid[0] + field[1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    angle = rng.uniform(-3, 3) if rng.random() < 0.6 else 0.0
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=float(paper))
    for s in symbols:
        x0, y0, x1, y1 = s["box"]
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64) @ m[:, :2].T + m[:, 2]
        lo, hi = corners.min(0), corners.max(0)
        s["box"] = [int(max(0, lo[0])), int(max(0, lo[1])), int(min(w, hi[0])), int(min(h, hi[1]))]
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.2))
    out = np.clip(out + rng.normal(0, rng.uniform(0, 8), out.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out, mode="L").save(buf, format="JPEG", quality=int(rng.integers(30, 90)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.uint8).copy()


def quantize(img: np.ndarray, levels: int = 8) -> np.ndarray:
    k = levels - 1
    return (np.round(img.astype(np.float32) / 255.0 * k) * (255 / k)).astype(np.uint8)


def save_png(img: np.ndarray, path: Path) -> None:
    # 8 gray levels keep 1600x1200 pages small (~10-30 KB) while text stays antialiased.
    Image.fromarray(quantize(img), mode="L").save(path, optimize=True)


def write_pages(out: Path, count: int, seed: int, width: int = 1600, height: int = 1200,
                min_symbols: int = 10, max_symbols: int = 40, yolo_labels: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        n = int(rng.integers(min_symbols, max_symbols + 1))
        img, symbols = render_page(width, height, rng, n)
        png = out / f"page_{i:04d}.png"
        save_png(img, png)
        gt = {"image": png.name, "width": width, "height": height, "seed": seed, "index": i,
              "classes": CLASSES, "symbols": symbols}
        (out / f"page_{i:04d}.json").write_text(json.dumps(gt, indent=1) + "\n")
        if yolo_labels:
            (out / f"page_{i:04d}.txt").write_text(yolo_label_text(symbols, width, height, CLASSES))
        paths.append(png)
    return paths


def yolo_label_text(symbols: list[dict], w: int, h: int, classes: list[str]) -> str:
    lines = []
    for s in symbols:
        if s["class"] not in classes:
            continue
        x0, y0, x1, y1 = s["box"]
        lines.append(f"{classes.index(s['class'])} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                     f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_yolo_split(images_dir: Path, labels_dir: Path, count: int, seed: int, size: int = 640,
                     classes: list[str] | None = None, min_symbols: int = 5, max_symbols: int = 14,
                     draw_classes: list[str] | None = None, randomize: float = 0.0) -> None:
    """Training/validation images: size x size small pages at native symbol scale + YOLO labels.

    `randomize`: the share of images drawn with a random `Style` (sizes 0.5-3x, lines 1-5 px,
    90-degree turns, far tags, more look-alikes, scan looks); the style comes from its own
    random stream, so with 0 the images are the ones earlier models trained on.

    `classes` are the labelled classes (the model's class list, ids in that order);
    `draw_classes` are the symbol classes drawn (default: all four). Drawn symbols whose class
    is not in `classes` stay unlabelled, so a subset model learns to ignore them.
    """
    classes = classes or CLASSES
    draw_classes = draw_classes or CLASSES
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, i, size])
        n = int(rng.integers(min_symbols, max_symbols + 1))
        style_rng = np.random.default_rng([seed, i, size, 0x57])
        style = Style.draw(style_rng) if style_rng.random() < randomize else None
        img, symbols = render_page(size, size, rng, n, classes=draw_classes, style=style)
        if style and style.scan:
            img = scan_look(img, symbols, style_rng)
        if rng.random() < 0.5:  # half like the committed pages (8 gray levels), half raw antialiasing
            img = quantize(img)
        Image.fromarray(img, mode="L").save(images_dir / f"{i:05d}.png", compress_level=1)
        (labels_dir / f"{i:05d}.txt").write_text(yolo_label_text(symbols, size, size, classes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pages", help="whole pages: PNG + ground-truth JSON")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--min-symbols", type=int, default=10)
    p.add_argument("--max-symbols", type=int, default=40)
    p.add_argument("--yolo-labels", action="store_true", help="also write YOLO .txt labels")
    s = sub.add_parser("samples", help="the fixed eval set: 40 pages 1600x1200, seed 1234")
    s.add_argument("--out", type=Path, required=True)
    y = sub.add_parser("yolo", help="YOLO images/ + labels/ of size x size small pages")
    y.add_argument("--out", type=Path, required=True)
    y.add_argument("--count", type=int, default=100)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--size", type=int, default=640)
    y.add_argument("--randomize", type=float, default=0.0, help="share of domain-randomized images")
    a = ap.parse_args()
    if a.cmd == "pages":
        paths = write_pages(a.out, a.count, a.seed, a.width, a.height, a.min_symbols, a.max_symbols,
                            a.yolo_labels)
    elif a.cmd == "samples":
        paths = write_pages(a.out, 40, 1234)
    else:
        write_yolo_split(a.out / "images", a.out / "labels", a.count, a.seed, a.size, randomize=a.randomize)
        print(f"wrote {a.count} images to {a.out}")
        return
    sizes = [os.path.getsize(p) for p in paths]
    print(f"wrote {len(paths)} pages to {a.out} (PNG {min(sizes) // 1024}-{max(sizes) // 1024} KB)")


if __name__ == "__main__":
    main()
