#!/usr/bin/env python3
"""Provision the models for ONNX Runtime beside their TorchScript files, with a speed record.

Which runtime is fastest on a CPU depends on the CPU: on an AVX-512 machine the AOTInductor
packages beat ONNX Runtime, on an AVX2 EPYC ONNX Runtime ran the angle classifier 4.7x
faster, the text detector 1.2x and the symbol detector 1.6x (BENCHMARKS.md, "Faster than the
Python it replaces"). So the choice is measured here, on the machine that will serve, not
assumed.

For each OCR model this copies RapidOCR 1.4.4's pinned ONNX file (checked by sha256) into
models/ocr/generated; the symbol detector is exported from its TorchScript file's weights
(the module provision_aoti.py rebuilds; needs Ultralytics, skipped without it) into
models/detector. Then it checks that ONNX Runtime and the TorchScript file agree on a few
shapes (the bounds the other runtimes are held to), times ONNX Runtime, the AOTInductor
package (when one was provisioned) and TorchScript on the input the service runs most
(interleaved rounds, the median of each), and writes the sidecar `<model>.onnx.toml` the
engine reads: the file, its sha256, the TorchScript file it was checked against, the ONNX
Runtime library and the medians. With `--model-format auto` the engine runs ONNX Runtime
for a model only when it was the fastest of what it could run here.

ONNX Runtime runs as the engine runs it: intra-op threads as given, one inter-op thread, and
no spinning (the engine's threads sleep when idle, as libtorch's do under
OMP_WAIT_POLICY=PASSIVE, so a neighbour's work is not slowed by a spinning pool).

Idempotent: a model whose sidecar still matches its TorchScript file, its package and the
threads is skipped.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/provision_onnx.py [--force] [--check] [--threads N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import time
import tomllib
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The AOTInductor package being timed needs libtorch's symbols visible to its kernels
# (provision_aoti.py explains); loading libtorch privately makes the package fail to open.
os.environ["TORCH_USE_RTLD_GLOBAL"] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import provision_aoti as aoti  # noqa: E402  (the detector's module, bounds and shapes)
import provision_ocr as ocr  # noqa: E402  (the pinned sources and the conversion's bound)

OCR_DIR = HERE / "ocr" / "generated"
DETECTOR_DIR = HERE / "detector"

# The input each model is timed on: a 1600x1200 page (padded to 32) for the detectors,
# RapidOCR's batch of 6 crops for the recognizer and the angle classifier.
TIMED_INPUT = {
    "det": (1, 3, 1216, 1600),
    "rec": (6, 3, 48, 320),
    "cls": (6, 3, 48, 192),
}
ROUNDS = 3
RUNS_PER_ROUND = 3
# The symbol detector's ONNX export is checked on the shapes, and held to the bounds, its
# AOTInductor package is (provision_aoti.py): its output's first four rows are box
# coordinates in input pixels, the rest class scores.
DETECTOR = "hvac-yolov8n"


@dataclasses.dataclass
class Target:
    """One model to provision: where it lives and how its ONNX file comes to be."""

    name: str  # the manifest's name: <folder>/<name>.toml beside <name>.onnx(.toml)
    folder: Path
    verify: list  # input shapes ONNX Runtime is checked against TorchScript on
    timed: tuple  # the input shape the runtimes are timed on
    how: str  # "copy" RapidOCR's file, or "export" the TorchScript file's module
    source: Path | None = None  # the file copied

    @property
    def manifest_path(self) -> Path:
        return self.folder / f"{self.name}.toml"

    @property
    def manifest(self) -> dict:
        return tomllib.loads(self.manifest_path.read_text())

    @property
    def sidecar(self) -> Path:
        return self.folder / f"{self.name}.onnx.toml"

    @property
    def onnx(self) -> Path:
        return self.folder / f"{self.name}.onnx"

    @property
    def aoti_sidecar(self) -> Path:
        return self.folder / f"{self.name}.aoti.toml"

    def within_bounds(self, onnx_out, torchscript_out) -> tuple[float, bool]:
        """The largest difference, and whether every part is within its bound."""
        import numpy as np

        if self.how == "copy":
            diff = float(np.abs(onnx_out - torchscript_out).max())
            return diff, diff <= ocr.TOLERANCE
        boxes = float(np.abs(onnx_out[:, :4] - torchscript_out[:, :4]).max())
        scores = float(np.abs(onnx_out[:, 4:] - torchscript_out[:, 4:]).max())
        ok = boxes <= aoti.DETECTOR_TOLERANCE["boxes"] and scores <= aoti.DETECTOR_TOLERANCE["scores"]
        return max(boxes, scores), ok

    def example(self, shape, generator):
        """An input in the model's range: [-1, 1] for PP-OCR, [0, 1] for YOLO."""
        import torch

        x = torch.rand(shape, generator=generator)
        return x * 2 - 1 if self.how == "copy" else x


def targets() -> dict[str, Target]:
    found = {
        key: Target(spec["name"], OCR_DIR, spec["verify"], TIMED_INPUT[key], "copy")
        for key, spec in ocr.MODELS.items()
    }
    verify = aoti.TARGETS[DETECTOR][4]
    found["yolo"] = Target(DETECTOR, DETECTOR_DIR, verify, TIMED_INPUT["det"], "export")
    return found


def export_detector(target: Target) -> None:
    """The TorchScript file's weights in Ultralytics' module (as provision_aoti.py rebuilds it),
    exported with batch and both sides dynamic."""
    import torch

    module, _ = aoti.yolo_module(target.folder / target.manifest["file"], len(target.manifest["labels"]["classes"]))
    example = torch.rand(TIMED_INPUT["det"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(target.onnx), input_names=["images"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "output": {0: "batch", 2: "anchors"}})


def runtime_library() -> Path:
    """The libonnxruntime.so the onnxruntime wheel ships (what the engine loads)."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ocr.ProvisionError("python package onnxruntime is not installed")
    capi = Path(list(spec.submodule_search_locations)[0]) / "capi"
    found = sorted(capi.glob("libonnxruntime.so*"))
    if not found:
        raise ocr.ProvisionError(f"no libonnxruntime.so in {capi}")
    return found[0].resolve()


def package_sha256(target: Target) -> str:
    """The AOTInductor package's sha256 from its sidecar ('' when none was provisioned)."""
    if not target.aoti_sidecar.is_file():
        return ""
    return tomllib.loads(target.aoti_sidecar.read_text()).get("sha256", "")


def up_to_date(target: Target, threads: int) -> tuple[bool, str]:
    side = target.sidecar
    if not side.is_file():
        return False, f"{side.name} missing"
    meta = tomllib.loads(side.read_text())
    if meta.get("source_sha256") != target.manifest["sha256"]:
        return False, "the TorchScript file changed"
    if meta.get("threads") != threads:
        return False, f"timed with {meta.get('threads')} threads, not {threads}"
    if meta.get("speed", {}).get("package_sha256", "") != package_sha256(target):
        return False, "the AOTInductor package changed since the timing"
    model = target.onnx
    if not model.is_file() or ocr.sha256_file(model) != meta.get("sha256"):
        return False, f"{model.name} missing or changed"
    if not Path(meta.get("runtime", "")).is_file():
        return False, "the ONNX Runtime library it names is gone"
    return True, "ok"


def session(model: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def median_ms(runners: dict, example) -> dict[str, float]:
    """Interleaved rounds (so a noisy minute hits every runtime alike); the median per runtime."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, run in runners.items():
            run(example)  # warm: first-call allocations and kernel selection
            for _ in range(RUNS_PER_ROUND):
                start = time.perf_counter()
                run(example)
                samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: round(statistics.median(times), 2) for name, times in samples.items()}


def provision(target: Target, threads: int) -> None:
    import torch

    model = target.onnx
    if target.how == "copy":
        shutil.copyfile(target.source, model)
    else:
        export_detector(target)
    onnx_session = session(model, threads)
    input_name = onnx_session.get_inputs()[0].name
    manifest = target.manifest
    torchscript = torch.jit.load(str(target.folder / manifest["file"]), map_location="cpu").eval()

    def run_onnx(x):
        return onnx_session.run(None, {input_name: x.numpy()})[0]

    def run_torchscript(x):
        with torch.no_grad():
            return torchscript(x)

    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for shape in target.verify:
        x = target.example(shape, generator)
        diff, ok = target.within_bounds(run_onnx(x), run_torchscript(x).numpy())
        worst = max(worst, diff)
        if not ok:
            raise ocr.ProvisionError(f"{target.name}: ONNX Runtime and TorchScript differ by {diff:.2e} on {shape}")

    runners = {"onnxruntime": run_onnx, "torchscript": run_torchscript}
    package = package_sha256(target)
    if package:
        from torch._inductor import aoti_load_package

        side = tomllib.loads(target.aoti_sidecar.read_text())
        compiled = aoti_load_package(str(target.folder / side["file"]))

        def run_package(x):
            with torch.no_grad():
                return compiled(x)

        runners["package"] = run_package
    timed = target.timed
    medians = median_ms(runners, target.example(timed, generator))
    origin = "RapidOCR's ONNX file" if target.how == "copy" else "the TorchScript file's module, exported,"
    lines = [
        f"# Written by models/provision_onnx.py: {origin} for ONNX Runtime, and how fast",
        "# each runtime the engine can use ran it here (--model-format auto runs the fastest).",
        f'file = "{model.name}"',
        f'sha256 = "{ocr.sha256_file(model)}"',
        f'source_sha256 = "{manifest["sha256"]}"',
        f'runtime = "{runtime_library()}"',
        f"threads = {threads}",
        f"max_abs_diff = {worst:.3e}",
        "",
        "[speed]",
        f"input = [{', '.join(str(d) for d in timed)}]",
        f"onnxruntime_ms = {medians['onnxruntime']}",
        f"torchscript_ms = {medians['torchscript']}",
    ]
    if package:
        lines += [f"package_ms = {medians['package']}", f'package_sha256 = "{package}"']
    target.sidecar.write_text("\n".join(lines) + "\n")
    summary = ", ".join(f"{name} {ms} ms" for name, ms in medians.items())
    print(f"[{target.name}] ONNX Runtime provisioned (max|diff| {worst:.1e}); on {list(timed)}: {summary}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="copy and time again even if up to date")
    ap.add_argument("--check", action="store_true", help="only check; exit 0 if up to date, 3 if not")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads (default: the cores here, at most 2, as the services run)")
    args = ap.parse_args()
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))

    status, todo = 0, []
    for key, target in targets().items():
        if not target.manifest_path.is_file():
            print(f"[{target.name}] no TorchScript manifest (run provision_ocr.py first); skipped", flush=True)
            continue
        if target.how == "export" and not ultralytics_installed():
            print(f"[{target.name}] Ultralytics is not installed (python/requirements-train.txt): no ONNX "
                  "export; the detector runs its package or TorchScript", flush=True)
            continue
        ok, why = up_to_date(target, threads)
        if ok and not args.force:
            print(f"[{target.name}] ONNX Runtime sidecar up to date", flush=True)
            continue
        print(f"[{target.name}] ONNX Runtime sidecar needs writing: {why}", flush=True)
        if args.check:
            status = 3
            continue
        todo.append((key, target))
    if not todo:
        return status

    import torch

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    torch.set_num_threads(threads)
    if any(target.how == "copy" for _, target in todo):
        sources = ocr.check_sources()
        for key, target in todo:
            target.source = sources.get(key)
    for _, target in todo:
        try:
            provision(target, threads)
        except BaseException:
            # never leave a sidecar naming a file that was not checked
            target.sidecar.unlink(missing_ok=True)
            raise
    return status


def ultralytics_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ultralytics") is not None


if __name__ == "__main__":
    sys.exit(main())
