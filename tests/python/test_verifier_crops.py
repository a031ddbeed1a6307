"""The verifier's crop fixture (tests/detector/verifier_crops.json, which the Rust
detector's crop is checked against) is still what the training code makes."""

import json
import os
import sys
import unittest
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/detector"))

import make_verifier_crops  # noqa: E402


class VerifierCrops(unittest.TestCase):
    def test_the_fixture_is_what_training_crops(self):
        fixture = json.loads((REPO / "tests/detector/verifier_crops.json").read_text())
        self.assertEqual(fixture["boxes"], make_verifier_crops.BOXES)
        made = make_verifier_crops.crops()
        for index, (want, got) in enumerate(zip(fixture["inputs"], made)):
            worst = max(abs(a - b) for a, b in zip(want, got))
            self.assertLess(worst, 1e-4, f"box {index}: the training crop changed (max diff {worst})")


if __name__ == "__main__":
    unittest.main()
