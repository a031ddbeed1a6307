"""Reference readings for the OCR service's Recognize parity test, made with
RapidOCR 1.4.4's own angle classifier and recognizer (onnxruntime) on the same crops,
in one call, as the service receives them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/ocr/make_reference.py

Crops: the tag beside each symbol on three committed sample pages (tests/pages), padded
by 4 px; every fifth one also turned 180 degrees, to exercise the angle classifier.
"""
import json
from pathlib import Path

import cv2
from rapidocr_onnxruntime import RapidOCR

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "ocr"
CROPS = OUT / "crops"
PAD = 4


def main() -> None:
    CROPS.mkdir(parents=True, exist_ok=True)
    names, images, truths = [], [], []
    for page_index in range(3):
        stem = ROOT / "tests" / "pages" / f"page_{page_index:04d}"
        page = cv2.imread(str(stem.with_suffix(".png")))
        truth = json.loads(stem.with_suffix(".json").read_text())
        h, w = page.shape[:2]
        for index, symbol in enumerate(truth["symbols"][:12]):
            x0, y0, x1, y1 = symbol["tag_box"]
            crop = page[max(0, y0 - PAD):min(h, y1 + PAD), max(0, x0 - PAD):min(w, x1 + PAD)]
            if (page_index * 12 + index) % 5 == 4:
                crop = cv2.rotate(crop, cv2.ROTATE_180)
            name = f"p{page_index}_{index:02d}.png"
            cv2.imwrite(str(CROPS / name), crop)
            names.append(name)
            images.append(cv2.imread(str(CROPS / name)))
            truths.append(symbol["tag"])
    ocr = RapidOCR()
    turned, angles, _ = ocr.text_cls(images)
    readings, _ = ocr.text_rec(turned)
    cases = []
    for name, truth, (label, angle_score), (text, score) in zip(names, truths, angles, readings):
        cases.append({
            "crop": f"crops/{name}",
            "truth": truth,
            "text": text,
            "score": float(score),
            "rotated_180": "180" in label and float(angle_score) > 0.9,
        })
    exact = sum(case["text"] == case["truth"] for case in cases)
    print(f"{len(cases)} crops; RapidOCR read {exact} tags exactly")
    (OUT / "reference.json").write_text(json.dumps({
        "made_with": "rapidocr-onnxruntime==1.4.4 text_cls + text_rec, one call",
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
