"""Checks on the generated OCR TorchScript models (run scripts/provision-models.sh first).

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m unittest tests/python/test_ocr_conversion.py -v

Skips (does not fail) when the models have not been provisioned.
"""
from __future__ import annotations

import os
import sys
import tomllib
import unittest
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models"))
import provision_ocr as P  # noqa: E402

OUT = P.DEFAULT_OUT
READY, WHY = P.up_to_date(OUT)


@unittest.skipUnless(READY, f"OCR models not provisioned: {WHY}")
class ManifestTest(unittest.TestCase):
    def test_manifests(self):
        tasks = set()
        for spec in P.MODELS.values():
            man = tomllib.loads((OUT / f"{spec['name']}.toml").read_text())
            self.assertEqual(man["name"], spec["name"])
            self.assertIn(man["task"], {"detect", "text-detect", "text-angle", "text-recognize"})
            self.assertEqual(P.sha256_file(OUT / man["file"]), man["sha256"])
            self.assertGreater(man["vram_estimate_bytes"], 0)
            self.assertEqual(man["input"]["dtype"], "float32")
            self.assertEqual(man["input"]["color"], "BGR")
            self.assertEqual(man["input"]["mean"], [0.5, 0.5, 0.5])
            self.assertEqual(man["input"]["std"], [0.5, 0.5, 0.5])
            tasks.add(man["task"])
        self.assertEqual(tasks, {"text-detect", "text-angle", "text-recognize"})

    def test_dictionary(self):
        lines = (OUT / P.DICT_FILE).read_text(encoding="utf-8").split("\n")
        self.assertEqual(lines[-1], "")  # trailing newline
        self.assertEqual(len(lines) - 1, 6623)
        self.assertTrue(all(len(c) == 1 for c in lines[:-1]))


@unittest.skipUnless(READY, f"OCR models not provisioned: {WHY}")
class DynamicShapeTest(unittest.TestCase):
    """Batch and width differ from the trace inputs; results must still match onnxruntime."""

    @classmethod
    def setUpClass(cls):
        import numpy as np
        import onnxruntime as ort
        import torch

        torch.set_num_threads(2)
        cls.np, cls.ort, cls.torch = np, ort, torch
        cls.sources = P.check_sources()

    def compare(self, key, shape):
        np, torch = self.np, self.torch
        self.assertNotEqual(tuple(shape), tuple(P.MODELS[key]["trace"]))
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = self.ort.InferenceSession(str(self.sources[key]), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(7).uniform(-1, 1, size=shape).astype(np.float32)
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        ts = torch.jit.load(str(OUT / P.MODELS[key]["file"]))
        with torch.no_grad():
            got = ts(torch.from_numpy(x)).numpy()
        self.assertEqual(got.shape, ref.shape)
        self.assertLessEqual(float(np.abs(got - ref).max()), P.TOLERANCE)
        return got

    def test_det(self):
        self.assertEqual(self.compare("det", (2, 3, 256, 416)).shape, (2, 1, 256, 416))

    def test_rec(self):
        self.assertEqual(self.compare("rec", (4, 3, 48, 200)).shape, (4, 25, 6625))

    def test_cls(self):
        self.assertEqual(self.compare("cls", (5, 3, 48, 192)).shape, (5, 2))


@unittest.skipUnless(READY, f"OCR models not provisioned: {WHY}")
class PipelineParityTest(unittest.TestCase):
    """RapidOCR's own pipeline with its three ORT sessions swapped for the TorchScript models."""

    def test_rapidocr_pipeline(self):
        import cv2
        import numpy as np
        import torch
        from rapidocr_onnxruntime import RapidOCR

        torch.set_num_threads(2)
        img = np.full((240, 900, 3), 255, np.uint8)  # BGR, as RapidOCR expects
        cv2.putText(img, "Plenum reads text 2024", (30, 90), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (20, 20, 20), 3)
        cv2.putText(img, "vision serving!", (30, 190), cv2.FONT_HERSHEY_DUPLEX, 1.4, (0, 0, 160), 2)
        engine = RapidOCR()
        ref, _ = engine(img)

        class Scripted:
            def __init__(self, name, orig):
                self.module, self.orig = torch.jit.load(str(OUT / name)), orig

            def __call__(self, x):
                with torch.no_grad():
                    return [self.module(torch.from_numpy(x)).numpy()]

            def __getattr__(self, attr):
                return getattr(self.orig, attr)

        engine.text_det.infer = Scripted(P.MODELS["det"]["file"], engine.text_det.infer)
        engine.text_cls.infer = Scripted(P.MODELS["cls"]["file"], engine.text_cls.infer)
        engine.text_rec.session = Scripted(P.MODELS["rec"]["file"], engine.text_rec.session)
        got, _ = engine(img)

        self.assertEqual([r[1] for r in got], [r[1] for r in ref])
        self.assertIn("Plenum reads text 2024", [r[1] for r in got])
        for a, b in zip(ref, got):
            np.testing.assert_allclose(np.array(a[0]), np.array(b[0]), atol=1.0)
            self.assertAlmostEqual(a[2], b[2], places=4)

        # index convention the Rust CTC decoder relies on: 0 = blank, 1..=6623 = file lines, 6624 = " "
        lines = (OUT / P.DICT_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        self.assertEqual(["blank"] + lines + [" "], engine.text_rec.postprocess_op.character)


if __name__ == "__main__":
    unittest.main()
