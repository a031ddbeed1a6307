#!/usr/bin/env python3
"""An independent renderer of the HVAC symbol spec, for validation only. NEVER TRAIN ON IT.

It draws the same four classes, tags, distractors and page size as `blueprint_gen.py`, but
with different code and different choices, so a model that only learned blueprint_gen's
habits shows it here:

- OpenCV rasterization (cv2.line/circle/polylines, LINE_8 or LINE_AA) instead of PIL;
- cv2 Hershey stroke fonts for most text, TTF faces blueprint_gen never uses (oblique,
  condensed bold, serif italic) for the rest;
- one scale per page, log-uniform 0.5x-2.7x of the base sizes (symbols ~16-160 px), with
  line widths 1-5 px;
- tags on any of eight sides at 0-1.5 symbol widths, some with a leader line, some written
  vertically (bottom-to-top or top-to-bottom);
- floor-plan layouts: rooms split recursively, double-line or solid walls with door swings,
  column-grid bubbles, ducts, a title block, ceiling-grid rows of diffusers;
- look-alikes: plain circles, circles with a dot or a letter, squares, rectangles, pentagons,
  octagons, triangles, text-only boxes, most with a tag-like label;
- "scan" pages: grey paper, faded or broken strokes, hand jitter, blur, noise, JPEG, and a
  skew of up to +-2 degrees.

Output is the blueprint_gen page format: PNG (8-bit grey, 8 levels) + JSON with `symbols`
(`class`, `class_id`, `box`, `tag`, `tag_box`; integer ink edges, x_max exclusive).

    python training/independent_gen.py --out tests/pages-independent --count 12 --seed 9001
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ["diffuser", "vav_box", "thermostat", "damper"]
PREFIXES = {
    "diffuser": ["SD", "RD", "CD"],
    "vav_box": ["VAV"],
    "thermostat": ["T", "TS"],
    "damper": ["D", "FD", "MD"],
}
DECOYS = ["EF", "AHU", "FCU", "UH", "RTU", "CUH", "P", "EX", "SF", "CH", "B", "HP"]
WORDS = [
    "MEETING", "OFFICE 204", "CORR.", "MECH. RM", "STOR.", "WOMEN", "MEN", "IT CLOSET",
    "KITCHENETTE", "VESTIBULE", "TRAINING", "WORKROOM", "OPEN PLAN", "FILES", "PANTRY",
]
NOTES = [
    "BALANCE TO 350 CFM", "REF. M-401 FOR DETAILS", "ROUTE ABOVE CLG.", "NEW WORK SHOWN BOLD",
    "ALL DAMPERS ACCESSIBLE", "FLEX DUCT MAX 5'-0\"", "EXISTING TO REMAIN", "HVAC PLAN 3RD FL",
    "24x12 SA", "16\"%", "DN", "UP TO ROOF", "COORD. W/ ELEC.", "N.I.C.", "PLENUM RETURN",
]
HERSHEY = [
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN,
]
TTF_DIR = Path("/usr/share/fonts/truetype/dejavu")
TTFS = [str(TTF_DIR / f) for f in (
    "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf", "DejaVuSansMono-Oblique.ttf",
) if (TTF_DIR / f).exists()]

WIDTH, HEIGHT = 1600, 1200
INK_THRESHOLD = 200  # ink = pixels darker than this, as in blueprint_gen's boxes


# --------------------------------------------------------------------------- rasters
# Every drawable is a small "patch": a uint8 array, 255 = paper, darker = ink.


def blank(w: int, h: int) -> np.ndarray:
    return np.full((max(h, 1), max(w, 1)), 255, np.uint8)


def crop_ink(patch: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(patch < INK_THRESHOLD)
    return patch[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


class Pen:
    """Stroke settings of one symbol: width, antialiasing, ink tone and hand jitter."""

    def __init__(self, rng: np.random.Generator, width: int, aa: bool, tone: int, jitter: float):
        self.rng, self.width, self.tone, self.jitter = rng, width, tone, jitter
        self.kind = cv2.LINE_AA if aa else cv2.LINE_8

    def _wobble(self, p0, p1):
        """A line as a short polyline whose inner points drift sideways (hand drawing)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        n = max(2, int(np.linalg.norm(p1 - p0) / 12) + 1)
        t = np.linspace(0, 1, n)[:, None]
        pts = p0 + t * (p1 - p0)
        if self.jitter > 0 and n > 2:
            normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / (np.linalg.norm(p1 - p0) + 1e-9)
            drift = self.rng.normal(0, self.jitter, n)
            drift[0] = drift[-1] = 0
            pts[1:-1] += drift[1:-1, None] * normal
        return pts

    def line(self, img, p0, p1):
        pts = self._wobble(p0, p1)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, self.tone,
                      self.width, self.kind, shift=4)

    def poly(self, img, pts):
        pts = list(pts)
        for a, b in zip(pts, pts[1:] + pts[:1]):
            self.line(img, a, b)

    def circle(self, img, c, r):
        if self.jitter > 0:
            n = max(16, int(r))
            ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
            rr = r + np.cumsum(self.rng.normal(0, self.jitter * 0.3, n))
            rr -= np.linspace(0, rr[-1] - r, n)  # close the loop
            pts = np.stack([c[0] + rr * np.cos(ang), c[1] + rr * np.sin(ang)], 1)
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], True, self.tone,
                          self.width, self.kind, shift=4)
        else:
            cv2.circle(img, (int(round(c[0] * 16)), int(round(c[1] * 16))), int(round(r * 16)),
                       self.tone, self.width, self.kind, shift=4)


def polygon(cx, cy, r, n, phase):
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def hershey_text(text: str, height: int, rng: np.random.Generator, tone: int) -> np.ndarray:
    face = HERSHEY[int(rng.integers(len(HERSHEY)))]
    (_, h1), _ = cv2.getTextSize("0", face, 1.0, 1)
    scale = height / h1
    thick = 1 if height < 14 or rng.random() < 0.6 else 2
    (w, h), base = cv2.getTextSize(text, face, scale, thick)
    img = blank(w + 8, h + base + 8)
    aa = cv2.LINE_AA if rng.random() < 0.7 else cv2.LINE_8
    cv2.putText(img, text, (4, 4 + h), face, scale, tone, thick, aa)
    return crop_ink(img)


def ttf_text(text: str, height: int, rng: np.random.Generator, tone: int) -> np.ndarray:
    face = ImageFont.truetype(TTFS[int(rng.integers(len(TTFS)))], int(height * 1.35))
    l, t, r, b = face.getbbox(text)
    img = Image.new("L", (r - l + 8, b - t + 8), 255)
    ImageDraw.Draw(img).text((4 - l, 4 - t), text, font=face, fill=tone)
    return crop_ink(np.asarray(img, np.uint8))


def text_patch(text: str, height: int, rng: np.random.Generator, tone: int = 0) -> np.ndarray:
    if TTFS and rng.random() < 0.3:
        return ttf_text(text, height, rng, tone)
    return hershey_text(text, height, rng, tone)


# --------------------------------------------------------------------------- symbols


def symbol_patch(cls: str, size: float, pen: Pen, rng: np.random.Generator) -> np.ndarray:
    """The symbol's strokes, cropped to their ink. `size` is the longer side in px."""
    pad = pen.width + 4
    if cls == "diffuser":
        s = size
        img = blank(int(s) + 2 * pad, int(s) + 2 * pad)
        c, r = (pad + s / 2, pad + s / 2), s / 2
        pen.circle(img, c, r)
        if rng.random() < 0.5:
            pen.line(img, (c[0] - r, c[1]), (c[0] + r, c[1]))
            pen.line(img, (c[0], c[1] - r), (c[0], c[1] + r))
        else:
            k = r * math.sqrt(0.5)
            pen.line(img, (c[0] - k, c[1] - k), (c[0] + k, c[1] + k))
            pen.line(img, (c[0] - k, c[1] + k), (c[0] + k, c[1] - k))
    elif cls == "vav_box":
        w, h = size, max(10.0, size / rng.uniform(1.4, 2.2))
        if rng.random() < 0.5:
            w, h = h, w
        img = blank(int(w) + 2 * pad, int(h) + 2 * pad)
        corners = [(pad, pad), (pad + w, pad), (pad + w, pad + h), (pad, pad + h)]
        pen.poly(img, corners)
        a = int(rng.integers(2))
        pen.line(img, corners[a], corners[a + 2])
    elif cls == "thermostat":
        s = size
        img = blank(int(s) + 2 * pad, int(s) + 2 * pad)
        c = pad + s / 2
        pen.poly(img, polygon(c, c, s / 2, 6, 0.0 if rng.random() < 0.5 else math.pi / 6))
        if rng.random() < 0.5 and s >= 22:
            t = hershey_text("T", max(7, int(s * 0.4)), rng, pen.tone)
            y0, x0 = int(c - t.shape[0] / 2), int(c - t.shape[1] / 2)
            np.minimum(img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]], t,
                       out=img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]])
    elif cls == "damper":
        s = size
        img = blank(int(s) + 2 * pad, int(s) + 2 * pad)
        corners = [(pad, pad), (pad + s, pad), (pad + s, pad + s), (pad, pad + s)]
        pen.poly(img, corners)
        pen.line(img, corners[0], corners[2])
        pen.line(img, corners[1], corners[3])
    else:
        raise ValueError(cls)
    return crop_ink(img)


def lookalike_patch(size: float, pen: Pen, rng: np.random.Generator) -> np.ndarray:
    """Shapes that are NOT symbols: never labelled, often carrying a tag-like label."""
    kind = rng.choice(["circle", "circle_dot", "circle_letter", "square", "rect", "rect_line",
                       "pentagon", "octagon", "triangle", "text_box", "circle_half"])
    pad = pen.width + 4
    s = size
    img = blank(int(s * 2.2) + 2 * pad, int(s) + 2 * pad)
    if kind.startswith("circle"):
        c, r = (pad + s / 2, pad + s / 2), s / 2
        pen.circle(img, c, r)
        if kind == "circle_dot":
            cv2.circle(img, (int(c[0]), int(c[1])), max(2, int(s / 12)), pen.tone, -1, pen.kind)
        elif kind == "circle_letter" and s >= 20:
            t = hershey_text(str(rng.choice(list("ABCDEFG1234567"))), int(s * 0.45), rng, pen.tone)
            y0, x0 = int(c[1] - t.shape[0] / 2), int(c[0] - t.shape[1] / 2)
            np.minimum(img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]], t,
                       out=img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]])
        elif kind == "circle_half":  # one diameter only: a balancing damper mark, not a diffuser
            pen.line(img, (c[0] - r, c[1]), (c[0] + r, c[1]))
    elif kind in ("square", "rect", "rect_line", "text_box"):
        w = s if kind == "square" else s * rng.uniform(1.2, 2.2)
        h = s if kind == "square" else s
        if kind != "text_box" and rng.random() < 0.5:
            w, h = h, w
        img = blank(int(w) + 2 * pad, int(h) + 2 * pad)
        pen.poly(img, [(pad, pad), (pad + w, pad), (pad + w, pad + h), (pad, pad + h)])
        if kind == "rect_line":
            if w >= h:
                pen.line(img, (pad + w / 2, pad), (pad + w / 2, pad + h))
            else:
                pen.line(img, (pad, pad + h / 2), (pad + w, pad + h / 2))
        elif kind == "text_box" and s >= 18:
            t = hershey_text(f"{rng.choice(DECOYS)}-{rng.integers(1, 20)}", int(min(h * 0.45, w * 0.2)),
                             rng, pen.tone)
            y0, x0 = int(pad + h / 2 - t.shape[0] / 2), int(pad + w / 2 - t.shape[1] / 2)
            if x0 > pad and y0 > pad:
                np.minimum(img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]], t,
                           out=img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]])
    else:
        n = {"pentagon": 5, "octagon": 8, "triangle": 3}[kind]
        c = pad + s / 2
        pen.poly(img, polygon(c, c, s / 2, n, rng.uniform(0, math.pi)))
    return crop_ink(img)


def make_tag(cls: str, rng: np.random.Generator) -> str:
    prefix = PREFIXES[cls][int(rng.integers(len(PREFIXES[cls])))]
    return f"{prefix}-{int(rng.integers(1, 1000 if rng.random() < 0.4 else 100))}"


# --------------------------------------------------------------------------- page


class Sheet:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.img = np.full((HEIGHT, WIDTH), 255, np.uint8)
        self.taken = np.zeros((HEIGHT, WIDTH), bool)  # where nothing new may be placed
        self.symbols: list[dict] = []
        # Pixel coordinates of each symbol's and tag's ink, to recompute boxes after skew.
        self.inks: list[tuple[np.ndarray, np.ndarray]] = []

    def is_free(self, x0, y0, x1, y1, margin=6) -> bool:
        if x0 < 8 or y0 < 8 or x1 > WIDTH - 8 or y1 > HEIGHT - 8:
            return False
        return not self.taken[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin].any()

    def put(self, patch: np.ndarray, x: int, y: int, reserve: int = 0) -> tuple[int, int, int, int]:
        h, w = patch.shape
        region = self.img[y:y + h, x:x + w]
        np.minimum(region, patch[:region.shape[0], :region.shape[1]], out=region)
        self.taken[max(0, y - reserve):y + h + reserve, max(0, x - reserve):x + w + reserve] = True
        return x, y, x + w, y + h

    def reserve_stroke(self, draw) -> None:
        """Draws onto the sheet through `draw(img)` and marks the new ink as taken."""
        before = self.img.copy()
        draw(self.img)
        self.taken |= cv2.dilate((self.img < before).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def draw_building(sheet: Sheet, rng: np.random.Generator, scale: float) -> list[tuple[int, int, int, int]]:
    """Outer walls, rooms split recursively, door swings; returns the rooms."""
    x0, y0 = int(rng.integers(40, 140)), int(rng.integers(40, 120))
    x1, y1 = WIDTH - int(rng.integers(40, 300)), HEIGHT - int(rng.integers(40, 200))
    double = rng.random() < 0.5
    thick = int(rng.integers(3, 9))
    rooms, todo = [], [(x0, y0, x1, y1)]
    while todo:
        r = todo.pop()
        w, h = r[2] - r[0], r[3] - r[1]
        if (w < 420 and h < 360) or (len(rooms) + len(todo) > 9) or (w < 300 and h < 300):
            rooms.append(r)
            continue
        if w >= h:
            cut = int(r[0] + w * rng.uniform(0.35, 0.65))
            todo += [(r[0], r[1], cut, r[3]), (cut, r[1], r[2], r[3])]
        else:
            cut = int(r[1] + h * rng.uniform(0.35, 0.65))
            todo += [(r[0], r[1], r[2], cut), (r[0], cut, r[2], r[3])]

    def wall(img, p, q):
        if double:
            off = thick
            if p[0] == q[0]:
                for dx in (-off, off):
                    cv2.line(img, (p[0] + dx, p[1]), (q[0] + dx, q[1]), 0, 2)
            else:
                for dy in (-off, off):
                    cv2.line(img, (p[0], p[1] + dy), (q[0], q[1] + dy), 0, 2)
        else:
            cv2.line(img, p, q, 0, thick)

    def draw(img):
        for r in rooms:
            for p, q in (((r[0], r[1]), (r[2], r[1])), ((r[2], r[1]), (r[2], r[3])),
                         ((r[2], r[3]), (r[0], r[3])), ((r[0], r[3]), (r[0], r[1]))):
                wall(img, p, q)
        for r in rooms:  # a door: a white gap and a quarter-circle swing
            if rng.random() < 0.7 and r[2] - r[0] > 160:
                d = int(rng.integers(36, 60))
                gx = int(rng.integers(r[0] + 30, r[2] - d - 30))
                cv2.rectangle(img, (gx, r[1] - thick - 2), (gx + d, r[1] + thick + 2), 255, -1)
                cv2.line(img, (gx, r[1]), (gx, r[1] + d), 0, 1)
                cv2.ellipse(img, (gx, r[1]), (d, d), 0, 0, 90, 0, 1, cv2.LINE_AA)
    sheet.reserve_stroke(draw)
    return rooms


def draw_grid_bubbles(sheet: Sheet, rng: np.random.Generator) -> None:
    """Column grid: thin dash-dot lines with lettered bubbles at the sheet's edge."""
    r = int(rng.integers(12, 22))
    xs = np.linspace(200, WIDTH - 200, int(rng.integers(3, 7))).astype(int)

    def draw(img):
        for k, x in enumerate(xs):
            for y in range(2 * r + 20, HEIGHT - 40, 28):
                cv2.line(img, (int(x), y), (int(x), y + 14), 0, 1)
            cv2.circle(img, (int(x), r + 12), r, 0, 1, cv2.LINE_AA)
            t = hershey_text(chr(65 + k), int(r * 0.9), rng, 0)
            yy, xx = r + 12 - t.shape[0] // 2, int(x) - t.shape[1] // 2
            np.minimum(img[yy:yy + t.shape[0], xx:xx + t.shape[1]], t, out=img[yy:yy + t.shape[0], xx:xx + t.shape[1]])
    sheet.reserve_stroke(draw)


def draw_title_block(sheet: Sheet, rng: np.random.Generator) -> None:
    w, h = int(rng.integers(260, 380)), int(rng.integers(110, 170))
    x0, y0 = WIDTH - w - 20, HEIGHT - h - 20
    if sheet.taken[y0:y0 + h, x0:x0 + w].any():
        return

    def draw(img):
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), 0, 2)
        for k in range(1, 4):
            cv2.line(img, (x0, y0 + k * h // 4), (x0 + w, y0 + k * h // 4), 0, 1)
        for k, text in enumerate(["ACME ENGINEERING", "MECHANICAL PLAN", f"M-{rng.integers(100, 600)}",
                                  "DATE 2026-03-14"]):
            t = hershey_text(text, int(h / 4 * 0.45), rng, 0)
            yy, xx = y0 + k * h // 4 + (h // 4 - t.shape[0]) // 2, x0 + 10
            np.minimum(img[yy:yy + t.shape[0], xx:xx + t.shape[1]], t, out=img[yy:yy + t.shape[0], xx:xx + t.shape[1]])
    sheet.reserve_stroke(draw)


def draw_ducts(sheet: Sheet, rng: np.random.Generator, n: int) -> None:
    def draw(img):
        for _ in range(n):
            width = int(rng.integers(14, 40))
            dashed = rng.random() < 0.4
            if rng.random() < 0.5:
                y = int(rng.integers(100, HEIGHT - 100))
                a, b = sorted(rng.integers(60, WIDTH - 60, 2))
                for dy in (0, width):
                    step = 18 if dashed else int(b - a)
                    for x in range(int(a), int(b), step):
                        cv2.line(img, (x, y + dy), (min(int(b), x + (10 if dashed else step)), y + dy), 0, 1)
            else:
                x = int(rng.integers(100, WIDTH - 100))
                a, b = sorted(rng.integers(60, HEIGHT - 60, 2))
                for dx in (0, width):
                    step = 18 if dashed else int(b - a)
                    for y in range(int(a), int(b), step):
                        cv2.line(img, (x + dx, y), (x + dx, min(int(b), y + (10 if dashed else step))), 0, 1)
    sheet.reserve_stroke(draw)


def tag_offset(side: int, sw: int, sh: int, tw: int, th: int, gap: int) -> tuple[int, int]:
    """Top-left of a tag of tw x th beside a symbol of sw x sh at (0,0), on one of 8 sides."""
    cx, cy = (sw - tw) // 2, (sh - th) // 2
    return [
        (sw + gap, cy), (-tw - gap, cy), (cx, -th - gap), (cx, sh + gap),     # right left above below
        (sw + gap, -th - gap // 2), (-tw - gap, -th - gap // 2),              # upper right / left
        (sw + gap, sh + gap // 2), (-tw - gap, sh + gap // 2),                # lower right / left
    ][side]


def place_symbol(sheet: Sheet, rng: np.random.Generator, cls: str, size: float, pen: Pen,
                 near: tuple[int, int, int, int] | None = None, tag_height: int = 14) -> bool:
    sym = symbol_patch(cls, size, pen, rng)
    tag = make_tag(cls, rng)
    text = text_patch(tag, tag_height, rng, pen.tone)
    vertical = rng.random() < 0.12
    if vertical:  # bottom-to-top (counter-clockwise) or top-to-bottom (clockwise)
        text = np.rot90(text, 1 if rng.random() < 0.6 else -1).copy()
    sh, sw = sym.shape
    th, tw = text.shape
    side = int(rng.choice(8, p=[0.3, 0.15, 0.15, 0.15, 0.07, 0.06, 0.06, 0.06]))
    if vertical:
        side = int(rng.integers(2))
    gap = int(max(2, rng.uniform(0, 1.5) * sw)) if rng.random() < 0.6 else int(rng.integers(2, 10))
    tx, ty = tag_offset(side, sw, sh, tw, th, gap)
    for _ in range(40):
        if near is not None:
            x = int(rng.integers(near[0] + 20, max(near[0] + 21, near[2] - sw - 20)))
            y = int(rng.integers(near[1] + 20, max(near[1] + 21, near[3] - sh - 20)))
        else:
            x = int(rng.integers(10, WIDTH - sw - 10))
            y = int(rng.integers(10, HEIGHT - sh - 10))
        lo_x, lo_y = min(x, x + tx), min(y, y + ty)
        hi_x, hi_y = max(x + sw, x + tx + tw), max(y + sh, y + ty + th)
        if sheet.is_free(lo_x, lo_y, hi_x, hi_y, margin=8):
            break
    else:
        return False
    sbox = sheet.put(sym, x, y, reserve=4)
    tbox = sheet.put(text, x + tx, y + ty, reserve=4)
    if gap > 0.6 * sw and gap > 14 and rng.random() < 0.5:  # a leader from the symbol to its tag
        a = (x + sw // 2, y + sh // 2)
        b = (x + tx + tw // 2, y + ty + th // 2)
        v = np.array(b, float) - np.array(a, float)
        v /= np.linalg.norm(v) + 1e-9
        start = np.array(a, float) + v * (max(sw, sh) / 2 * 1.45 + 4)  # clear of the symbol's ink
        end = np.array(b, float) - v * (max(tw, th) / 2 * 1.2 + 3)
        if np.dot(end - start, v) > 6:
            cv2.line(sheet.img, tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int)),
                     pen.tone, 1, cv2.LINE_AA)
            if rng.random() < 0.5:
                cv2.circle(sheet.img, tuple(np.round(start).astype(int)), 2, pen.tone, -1)
    sheet.symbols.append({"class": cls, "class_id": CLASSES.index(cls), "box": list(sbox), "tag": tag,
                          "tag_box": list(tbox), "vertical_tag": bool(vertical)})
    sheet.inks.append((ink_points(sym, x, y), ink_points(text, x + tx, y + ty)))
    return True


def ink_points(patch: np.ndarray, x: int, y: int) -> np.ndarray:
    ys, xs = np.nonzero(patch < INK_THRESHOLD)
    return np.stack([xs + x, ys + y], 1).astype(np.float64)


def place_text(sheet: Sheet, rng: np.random.Generator, text: str, height: int, vertical=False) -> None:
    patch = text_patch(text, height, rng)
    if vertical:
        patch = np.rot90(patch).copy()
    h, w = patch.shape
    for _ in range(30):
        x, y = int(rng.integers(10, WIDTH - w - 10)), int(rng.integers(10, HEIGHT - h - 10))
        if sheet.is_free(x, y, x + w, y + h, margin=10):
            sheet.put(patch, x, y, reserve=6)
            return


def place_lookalike(sheet: Sheet, rng: np.random.Generator, size: float, pen: Pen) -> None:
    patch = lookalike_patch(size, pen, rng)
    h, w = patch.shape
    label = None
    if rng.random() < 0.65:
        label = text_patch(f"{rng.choice(DECOYS)}-{rng.integers(1, 40)}", int(rng.integers(10, 20)), rng)
    for _ in range(30):
        x, y = int(rng.integers(10, WIDTH - w - 10)), int(rng.integers(10, HEIGHT - h - 10))
        if label is None:
            if sheet.is_free(x, y, x + w, y + h, margin=8):
                sheet.put(patch, x, y, reserve=4)
                return
            continue
        lh, lw = label.shape
        lx, ly = tag_offset(int(rng.integers(4)), w, h, lw, lh, int(rng.integers(3, 12)))
        lo_x, lo_y = min(x, x + lx), min(y, y + ly)
        hi_x, hi_y = max(x + w, x + lx + lw), max(y + h, y + ly + lh)
        if sheet.is_free(lo_x, lo_y, hi_x, hi_y, margin=8):
            sheet.put(patch, x, y, reserve=4)
            sheet.put(label, x + lx, y + ly, reserve=4)
            return


def place_dimension(sheet: Sheet, rng: np.random.Generator) -> None:
    length = int(rng.integers(150, 500))
    text = text_patch(f"{rng.integers(4, 40)}'-{rng.integers(0, 12)}\"", int(rng.integers(10, 16)), rng)
    th, tw = text.shape
    for _ in range(30):
        x, y = int(rng.integers(20, WIDTH - length - 20)), int(rng.integers(30, HEIGHT - 40))
        if sheet.is_free(x - 4, y - th - 8, x + length + 4, y + 8, margin=6):
            def draw(img):
                cv2.line(img, (x, y), (x + length, y), 0, 1)
                for xx in (x, x + length):
                    cv2.line(img, (xx - 5, y + 5), (xx + 5, y - 5), 0, 2)  # architectural ticks
                    cv2.line(img, (xx, y - 8), (xx, y + 8), 0, 1)
            sheet.reserve_stroke(draw)
            sheet.put(text, x + (length - tw) // 2, y - th - 4, reserve=3)
            return


# --------------------------------------------------------------------------- scan look


def scan(sheet: Sheet, rng: np.random.Generator) -> dict:
    """Paper, fading, broken strokes, skew, blur, noise, JPEG. Returns the settings used."""
    img = sheet.img.astype(np.float32)
    paper = float(rng.uniform(215, 245))
    fade = float(rng.uniform(0.55, 0.9))  # ink reaches this fraction of full darkness
    ink = (255 - img) / 255 * fade
    if rng.random() < 0.5:  # broken lines: drop ink in small blobs
        holes = cv2.GaussianBlur(rng.random((HEIGHT, WIDTH)).astype(np.float32), (0, 0), 1.2)
        ink[holes > np.quantile(holes, 0.9)] *= 0.15
    img = paper * (1 - ink)
    angle = float(rng.uniform(-2, 2))
    m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderValue=paper)
    img += rng.normal(0, rng.uniform(3, 8), img.shape).astype(np.float32)
    sigma = float(rng.uniform(0.6, 1.1))  # after the noise: grain, not salt and pepper
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    quality = int(rng.integers(35, 70))
    ok, jpg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    sheet.img = cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE)
    # The boxes follow the skew: each symbol's (and tag's) ink points rotated, then bounded.
    for symbol, (sym_pts, tag_pts) in zip(sheet.symbols, sheet.inks):
        for key, pts in (("box", sym_pts), ("tag_box", tag_pts)):
            moved = np.concatenate([pts, pts + 1]) @ m[:, :2].T + m[:, 2]
            lo, hi = np.floor(moved.min(0)), np.ceil(moved.max(0))
            symbol[key] = [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]
    return {"paper": round(paper), "fade": round(fade, 2), "skew_deg": round(angle, 2),
            "blur_sigma": round(sigma, 2), "jpeg_quality": quality}


def quantize8(img: np.ndarray) -> np.ndarray:
    levels = np.round(img.astype(np.float32) * 7 / 255)
    return (levels * 255 / 7).round().astype(np.uint8)


# --------------------------------------------------------------------------- driver


def render(seed: int, index: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng([seed, index, 0x1D])
    sheet = Sheet(rng)
    page_scale = float(math.exp(rng.uniform(math.log(0.5), math.log(2.7))))
    jitter = float(rng.choice([0.0, 0.0, 0.6, 1.2]))
    aa = bool(rng.random() < 0.6)
    rooms = draw_building(sheet, rng, page_scale) if rng.random() < 0.8 else []
    if rng.random() < 0.5:
        draw_grid_bubbles(sheet, rng)
    if rng.random() < 0.6:
        draw_title_block(sheet, rng)
    draw_ducts(sheet, rng, int(rng.integers(0, 4)))

    base = {"diffuser": (20, 60), "vav_box": (30, 60), "thermostat": (20, 46), "damper": (16, 32)}
    dense = rng.random() < 0.4
    wanted = int(rng.integers(24, 40) if dense else rng.integers(12, 24))
    wanted = max(8, int(wanted / max(1.0, page_scale ** 0.6)))  # big symbols: fewer fit
    tag_height = int(rng.integers(10, 21))
    placed, tries = 0, 0
    # A ceiling-grid row of identical diffusers in one room, as lighting/ceiling plans have.
    if rooms and rng.random() < 0.6:
        room = rooms[int(rng.integers(len(rooms)))]
        size = float(np.clip(rng.uniform(*base["diffuser"]) * page_scale, 16, 160))
        pen = Pen(rng, int(rng.integers(1, 6)), aa, 0, jitter)
        for _ in range(int(rng.integers(2, 6))):
            placed += place_symbol(sheet, rng, "diffuser", size, pen, near=room, tag_height=tag_height)
    while placed < wanted and tries < wanted * 6:
        tries += 1
        cls = CLASSES[int(rng.choice(4, p=[0.3, 0.25, 0.2, 0.25]))]
        lo, hi = base[cls]
        size = float(np.clip(rng.uniform(lo, hi) * page_scale * rng.uniform(0.85, 1.15), 16, 160))
        pen = Pen(rng, int(rng.integers(1, 6)) if size > 30 else int(rng.integers(1, 3)), aa,
                  int(rng.integers(0, 60)), jitter)
        placed += place_symbol(sheet, rng, cls, size, pen, tag_height=tag_height)
    for _ in range(int(rng.integers(5, 14))):
        size = float(np.clip(rng.uniform(18, 55) * page_scale, 14, 160))
        place_lookalike(sheet, rng, size, Pen(rng, int(rng.integers(1, 4)), aa, 0, jitter))
    for _ in range(int(rng.integers(3, 9))):
        place_text(sheet, rng, str(rng.choice(WORDS)), int(rng.integers(12, 26)))
    for _ in range(int(rng.integers(2, 6))):
        place_text(sheet, rng, str(rng.choice(NOTES)), int(rng.integers(9, 16)), vertical=rng.random() < 0.2)
    for _ in range(int(rng.integers(1, 5))):
        place_dimension(sheet, rng)

    look = {"scale": round(page_scale, 2), "jitter": jitter, "antialiased": aa, "dense": dense}
    if rng.random() < 0.4:
        look["scan"] = scan(sheet, rng)
    for s in sheet.symbols:
        s["box"] = [int(v) for v in s["box"]]
    return quantize8(sheet.img), {"look": look, "symbols": sheet.symbols}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--seed", type=int, default=9001)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(args.count):
        img, truth = render(args.seed, index)
        name = f"page_{index:04d}.png"
        ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        (args.out / name).write_bytes(png.tobytes())
        meta = {"image": name, "width": WIDTH, "height": HEIGHT, "seed": args.seed, "index": index,
                "renderer": "independent_gen", "classes": CLASSES, **truth}
        (args.out / name).with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        total += len(truth["symbols"])
        print(f"{name}: {len(truth['symbols'])} symbols, {len(png) // 1024} KB, {truth['look']}")
    print(f"{args.count} pages, {total} symbols")


if __name__ == "__main__":
    main()
