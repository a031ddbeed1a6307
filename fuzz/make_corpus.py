"""Writes the seed corpus for the `decode` fuzz target into corpus/decode/ (needs Pillow).

Run from fuzz/: python make_corpus.py
"""

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

out = Path(__file__).parent / "corpus" / "decode"
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(1)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


rgb = Image.new("RGB", (8, 6))
rgb.putdata([(x * 30, y * 40, 100) for y in range(6) for x in range(8)])
png = encoded(rgb, "PNG")
jpeg = encoded(rgb, "JPEG", quality=80)
seeds = {
    "rgb8x6.png": png,
    "palette-alpha.png": encoded(rgb.convert("RGBA").quantize(4), "PNG"),
    "grey16.png": encoded(Image.new("I;16", (5, 3), 4000), "PNG"),
    "rgb8x6.jpg": jpeg,
    "progressive.jpg": encoded(rgb, "JPEG", quality=60, progressive=True),
    "truncated.png": png[: len(png) // 2],
    "truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
    "random.bin": bytes(rng.randrange(256) for _ in range(64)),
    # A valid header declaring 20000x20000 RGB8 over an empty IDAT.
    "huge-header.png": b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(b""))
    + chunk(b"IEND", b""),
}
for name, data in seeds.items():
    (out / name).write_bytes(data)
    print(f"{name}: {len(data)} bytes")
