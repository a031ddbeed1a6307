"""Reference readings for the OCR service's ReadText parity test: RapidOCR 1.4.4 with its
default settings (`RapidOCR()(path)`: det, cls and rec) on rendered HVAC labels.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/ocr/make_read_reference.py

Images (tests/ocr/read/*.png), drawn with DejaVu Sans from the system fonts:
tags on white, a wide line (RapidOCR letterboxes pages wider than 8:1), a label too short
for RapidOCR's 30 px minimum side (it upscales first), a page of tags and small text,
labels turned 90 degrees and tilted 7 degrees, text crossing drawing lines, a drawing
sheet (tests/pages/page_0000.png cropped to 1280x960), tags in each orientation RapidOCR
handles (90 degrees clockwise: top-to-bottom, which its tall-crop turn puts upright; 90
degrees counter-clockwise: bottom-to-top, which that turn leaves upside down for the angle
classifier to flip; 180 degrees: the classifier alone), each alone and all on one sheet, and
an independent-renderer page with vertical tags (tests/pages-independent/page_0011.png
cropped to 1280x960).
"""
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rapidocr_onnxruntime import RapidOCR

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "ocr" / "read"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(BOLD if bold else FONT, size)


def page(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), "white")
    return image, ImageDraw.Draw(image)


def label(text: str, size: int, angle: float) -> Image.Image:
    """`text` on a transparent tile, turned `angle` degrees counter-clockwise."""
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    tile = Image.new("RGBA", (right - left + 16, bottom - top + 16), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((8 - left, 8 - top), text, font=f, fill="black")
    return tile.rotate(angle, expand=True, resample=Image.BICUBIC)


def images() -> dict[str, Image.Image]:
    out = {}

    image, draw = page(200, 80)
    draw.text((30, 20), "AHU-1", font=font(32), fill="black")
    out["tag_ahu"] = image

    image, draw = page(240, 72)
    draw.text((20, 18), "VAV-203", font=font(30, bold=True), fill=(20, 20, 120))
    out["tag_vav"] = image

    image, draw = page(520, 48)
    draw.text((10, 10), "SUPPLY AIR 1200 CFM", font=font(24), fill="black")
    out["wide_supply"] = image

    image, draw = page(120, 24)
    draw.text((6, 3), "FCU-7", font=font(15), fill="black")
    out["short_fcu"] = image

    image, draw = page(640, 480)
    draw.text((40, 30), "EF-12", font=font(28), fill="black")
    draw.text((360, 34), "RETURN AIR 800 CFM", font=font(20), fill="black")
    draw.text((40, 200), "VAV-104", font=font(24), fill="black")
    draw.text((300, 210), "SA 450 CFM", font=font(13), fill="black")
    draw.text((300, 240), "12x10 DUCT UP", font=font(12), fill="black")
    draw.text((40, 400), "NOTE 3: SEE SCHEDULE M-601", font=font(16), fill="black")
    out["tags_small"] = image

    image, draw = page(480, 480)
    draw.text((150, 40), "AHU-2", font=font(28), fill="black")
    image.paste(rotated := label("EXHAUST 600 CFM", 24, 90), (40, 120), rotated)
    image.paste(tilted := label("CHW SUPPLY", 26, 7), (170, 260), tilted)
    out["rotated"] = image

    image, draw = page(640, 360)
    draw.line((0, 120, 640, 120), fill="black", width=2)
    draw.line((300, 0, 300, 360), fill="black", width=2)
    draw.rectangle((60, 220, 260, 300), outline="black", width=2)
    draw.text((220, 106), "VAV-301", font=font(24), fill="black")
    draw.text((80, 245), "RTU-1", font=font(26), fill="black")
    draw.text((330, 250), "DAMPER D-15", font=font(22), fill="black")
    draw.line((320, 262, 520, 262), fill=(90, 90, 90), width=1)
    out["lines"] = image

    sheet = Image.open(ROOT / "tests" / "pages" / "page_0000.png").convert("RGB")
    out["sheet"] = sheet.crop((0, 0, 1280, 960))

    # PIL turns counter-clockwise: 90 = bottom-to-top, -90 = top-to-bottom (clockwise).
    for name, text, angle in (("tag_cw", "VAV-117", -90), ("tag_ccw", "SD-42", 90),
                              ("tag_180", "FD-305", 180)):
        image, _ = page(140, 200) if abs(angle) == 90 else page(220, 90)
        tile = label(text, 26, angle)
        image.paste(tile, ((image.width - tile.width) // 2, (image.height - tile.height) // 2), tile)
        out[name] = image

    image, draw = page(900, 600)
    draw.rectangle((120, 150, 180, 190), outline="black", width=2)
    draw.line((120, 150, 180, 190), fill="black", width=2)
    image.paste(tile := label("VAV-21", 18, -90), (190, 130), tile)
    draw.ellipse((420, 140, 470, 190), outline="black", width=2)
    image.paste(tile := label("RD-8", 18, 90), (480, 130), tile)
    draw.rectangle((300, 380, 330, 410), outline="black", width=2)
    image.paste(tile := label("MD-66", 18, 180), (340, 380), tile)
    image.paste(tile := label("TS-404", 20, 90), (720, 300), tile)
    image.paste(tile := label("CD-19", 20, -90), (780, 300), tile)
    draw.text((600, 520), "MECHANICAL PLAN", font=font(22), fill="black")
    draw.line((0, 470, 900, 470), fill="black", width=3)
    out["sheet_turned"] = image

    independent = Image.open(ROOT / "tests" / "pages-independent" / "page_0011.png").convert("RGB")
    out["sheet_independent"] = independent.crop((0, 0, 1280, 960))
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ocr = RapidOCR()
    cases = []
    for name, image in images().items():
        path = OUT / f"{name}.png"
        image.save(path, optimize=True)
        result, _ = ocr(str(path))
        lines = [
            {"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
            for box, text, score in (result or [])
        ]
        cases.append({"image": f"read/{name}.png", "width": image.width,
                      "height": image.height, "lines": lines})
        print(f"{name}: {[line['text'] for line in lines]}")
    (OUT / "reference.json").write_text(json.dumps({
        "made_with": "rapidocr-onnxruntime==1.4.4, RapidOCR()(path), default config",
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
