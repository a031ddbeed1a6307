"""The committed independent-renderer pages (tests/pages-independent) are what
training/independent_gen.py draws for seed 9001, and they keep to the spec the tag rule
and the end-to-end test rely on: four classes, boxes inside the page, symbols 14-180 px,
each tag within 1.6 symbol sizes of its symbol, no two symbols overlapping."""
import json
import sys
import unittest
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "tests" / "pages-independent"
sys.path.insert(0, str(ROOT / "training"))


class IndependentPages(unittest.TestCase):
    def test_the_committed_pages_are_the_renderers_output(self):
        import independent_gen

        for index in (0, 3, 11):  # a clean page, a scan page with skew, a scan page
            image, truth = independent_gen.render(9001, index)
            committed = cv2.imread(str(PAGES / f"page_{index:04d}.png"), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(image, committed, f"page {index}")
            saved = json.loads((PAGES / f"page_{index:04d}.json").read_text())
            self.assertEqual(saved["symbols"], truth["symbols"], f"page {index}")

    def test_every_page_keeps_to_the_spec(self):
        files = sorted(PAGES.glob("page_*.json"))
        self.assertEqual(len(files), 12)
        total = 0
        for path in files:
            page = json.loads(path.read_text())
            self.assertEqual((page["width"], page["height"]), (1600, 1200))
            symbols = page["symbols"]
            total += len(symbols)
            for s in symbols:
                self.assertIn(s["class"], page["classes"])
                x0, y0, x1, y1 = s["box"]
                self.assertTrue(0 <= x0 < x1 <= 1600 and 0 <= y0 < y1 <= 1200, s)
                size = max(x1 - x0, y1 - y0)
                self.assertTrue(10 <= size <= 180, s)
                tx0, ty0, tx1, ty1 = s["tag_box"]
                gap = max(tx0 - x1, x0 - tx1, ty0 - y1, y0 - ty1, 0)
                self.assertLessEqual(gap, 1.6 * size + 2, s)
            for i, a in enumerate(symbols):
                for b in symbols[i + 1:]:
                    apart = (a["box"][2] <= b["box"][0] or b["box"][2] <= a["box"][0]
                             or a["box"][3] <= b["box"][1] or b["box"][3] <= a["box"][1])
                    self.assertTrue(apart, (a, b))
        self.assertGreaterEqual(total, 200)


if __name__ == "__main__":
    unittest.main()
