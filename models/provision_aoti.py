#!/usr/bin/env python3
"""Compile each model into an AOTInductor package for the CPU, beside its TorchScript file.

TorchScript runs a graph op by op; AOTInductor (`torch.export` + Inductor, ahead of time)
compiles fused C++ kernels for this machine, which on a 2-core CPU is 1.3-2x faster
(BENCHMARKS.md "Models"). The engine loads a package when one was provisioned for the model
and its TorchScript file has not changed since, and TorchScript otherwise (and on CUDA,
where a package would have to be compiled on the GPU host).

For every model, one dynamic package (batch and the free sides dynamic):

  * OCR (models/ocr/generated): the same onnx2torch graph models/provision_ocr.py traces,
    after its fusions, with the Resize modules' scales made Python constants (they read them
    from a tensor at run time, which torch.export refuses as data-dependent).
  * the YOLO detector (models/detector/hvac-yolov8n): the TorchScript file has no nn.Module
    to export, so Ultralytics' DetectionModel is rebuilt from yolov8n.yaml, fused, loaded
    with the TorchScript's state_dict (no missing or unexpected keys allowed) and its Detect
    head set to return the plain [B, 4+nc, A] tensor. Needs `ultralytics`
    (python/requirements-train.txt); without it the detector keeps TorchScript.

Each package is checked against the TorchScript output on several shapes (max abs diff
within the model's tolerance below) before its sidecar manifest `<model>.aoti.toml` is
written; the sidecar names the package, its sha256 and the sha256 of the TorchScript file it
was checked against. Idempotent: a model whose sidecar still matches is skipped.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/provision_aoti.py [--force] [--check] [--threads N]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
import tomllib
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Inductor picks the CPU's vector ISA by building and loading a probe library that calls
# libtorch_cpu's SLEEF functions. Python loads libtorch privately (RTLD_LOCAL), so the probe
# fails to load, Inductor falls back to INVALID_VEC_ISA without a word, and every fused
# kernel comes out scalar: on this machine the YOLO package took 2x TorchScript's time.
# Loading libtorch globally (also in the probe's own subprocess) lets the probe see it.
os.environ["TORCH_USE_RTLD_GLOBAL"] = "1"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import provision_ocr as ocr  # noqa: E402  (the OCR graph is built the same way)

OCR_DIR = REPO / "models" / "ocr" / "generated"
DETECTOR_DIR = REPO / "models" / "detector"

# What each package must reproduce of the TorchScript output (max abs diff). OCR: the same
# bound provision_ocr.py holds TorchScript to against ONNX Runtime. The detector's output
# rows are 4 box coordinates in input pixels (up to ~2000), then class scores; Inductor
# reassociates the convolutions' sums, which moves coordinates by up to ~3e-3 px on random
# inputs (~4e-4 on pages). The parity test against Ultralytics allows 0.5 px and 1e-3.
OCR_TOLERANCE = 1e-4
DETECTOR_TOLERANCE = {"boxes": 1e-2, "scores": 1e-4}

# name -> (manifest, builder, dynamic axes, example shape for export, shapes to verify)
TARGETS = {
    "ppocr-v4-det": (OCR_DIR / "ppocr-v4-det.toml", "ocr:det", (0, 2, 3), (2, 3, 640, 480),
                     [(1, 3, 320, 320), (2, 3, 640, 480), (1, 3, 960, 1280), (1, 3, 1216, 1600)]),
    "ppocr-v4-rec": (OCR_DIR / "ppocr-v4-rec.toml", "ocr:rec", (0, 3), (2, 3, 48, 320),
                     [(1, 3, 48, 320), (8, 3, 48, 160), (3, 3, 48, 640), (5, 3, 48, 100), (1, 3, 48, 1280)]),
    "ppocr-mobile-v2-cls": (OCR_DIR / "ppocr-mobile-v2-cls.toml", "ocr:cls", (0,), (2, 3, 48, 192),
                            [(1, 3, 48, 192), (6, 3, 48, 192), (13, 3, 48, 192)]),
    "hvac-yolov8n": (DETECTOR_DIR / "hvac-yolov8n.toml", "yolo", (0, 2, 3), (2, 3, 640, 480),
                     [(1, 3, 640, 640), (2, 3, 480, 640), (1, 3, 1216, 1600)]),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_name(manifest: Path) -> str:
    return tomllib.loads(manifest.read_text())["name"]


def sidecar_path(manifest: Path) -> Path:
    """`<name>.aoti.toml` beside the manifest: where the engine looks."""
    return manifest.with_name(model_name(manifest) + ".aoti.toml")


def package_path(manifest: Path) -> Path:
    return manifest.with_name(model_name(manifest) + ".cpu.pt2")


# Bump when a change here alters what a package computes or how it is built; a change to the
# OCR converter (provision_ocr.py) rebuilds the packages by itself.
BUILD_VERSION = 3


def builder_id() -> str:
    return f"{BUILD_VERSION}:{sha256_file(HERE / 'provision_ocr.py')[:16]}"


def up_to_date(manifest: Path, torch_version: str, threads: int) -> tuple[bool, str]:
    side = sidecar_path(manifest)
    if not side.is_file():
        return False, f"{side.name} missing"
    model = tomllib.loads(manifest.read_text())
    meta = tomllib.loads(side.read_text())
    package = side.parent / meta.get("file", "")
    if meta.get("source_sha256") != model["sha256"]:
        return False, "the TorchScript file changed"
    if meta.get("torch") != torch_version or meta.get("builder") != builder_id():
        return False, "torch or the builder changed"
    if meta.get("threads") != threads:
        return False, f"compiled for {meta.get('threads')} threads, not {threads}"
    if not package.is_file() or sha256_file(package) != meta.get("sha256"):
        return False, f"{package.name} missing or changed"
    return True, "ok"


# ----------------------------------------------------------------------------- modules


def constant_resizes(fx, example) -> int:
    """Replace each onnx2torch Resize by one with its scales as Python constants, read
    from a run on `example` (the scales are graph constants, the same for every input)."""
    import torch
    from onnx2torch.node_converters.resize import OnnxResize, _onnx_mode_to_torch_mode
    from torch import nn

    class ConstantResize(nn.Module):
        def __init__(self, mode: str, align_corners, scales: list[float]):
            super().__init__()
            self.mode, self.align_corners, self.scales = mode, align_corners, scales

        def forward(self, x, roi=None, scales=None, sizes=None):
            return torch.nn.functional.interpolate(
                x, scale_factor=self.scales, mode=self.mode, align_corners=self.align_corners)

    seen, hooks = {}, []
    for name, module in fx.named_modules():
        if isinstance(module, OnnxResize):
            def record(module, args, kwargs, name=name):
                scales = args[2] if len(args) > 2 else kwargs.get("scales")
                sizes = args[3] if len(args) > 3 else kwargs.get("sizes")
                if scales is None or scales.numel() == 0 or (sizes is not None and sizes.numel() != 0):
                    raise ocr.ProvisionError(f"Resize {name} is sized by a tensor, not constant scales")
                seen[name] = (module, scales.tolist(), args[0].dim())
            hooks.append(module.register_forward_pre_hook(record, with_kwargs=True))
    with torch.no_grad():
        fx(example)
    for hook in hooks:
        hook.remove()
    for name, (module, scales, rank) in seen.items():
        if scales[:2] != [1.0, 1.0]:
            raise ocr.ProvisionError(f"Resize {name} scales batch or channels: {scales}")
        mode = _onnx_mode_to_torch_mode(module.onnx_mode, rank - 2)
        fx.set_submodule(name, ConstantResize(mode, module.align_corners, [float(s) for s in scales[2:]]))
    return len(seen)


def python_shapes(fx) -> int:
    """Make the shape arithmetic (Shape -> Cast/Slice/Concat -> Reshape) run on Python lists
    of sizes instead of int64 tensors. torch.export follows Python sizes symbolically, so
    batch and width stay dynamic; sizes read back out of a tensor would be data-dependent,
    which it refuses. The graph is unchanged; only those nodes' modules are swapped."""
    import torch
    from torch import nn

    modules = dict(fx.named_modules())

    def kind(node):
        return type(modules[node.target]).__name__ if node.op == "call_module" else None

    class ListShape(nn.Module):
        def __init__(self, start, end):
            super().__init__()
            self.start, self.end = start, end

        def forward(self, x):
            return list(x.shape)[self.start:self.end]

    class ListConstant(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = [int(v) for v in value.reshape(-1).tolist()]

        def forward(self):
            return list(self.value)

    class ListCast(nn.Module):
        def forward(self, x):
            return x

    class ListSlice(nn.Module):
        def forward(self, x, starts, ends, axes=None, steps=None):
            if (axes not in (None, [0])) or len(starts) != 1:
                raise ocr.ProvisionError(f"shape Slice over axes {axes}")
            step = steps[0] if steps else 1
            return x[starts[0]:ends[0]:step]

    class ListConcat(nn.Module):
        def forward(self, *parts):
            return [size for part in parts for size in part]

    class ListReshape(nn.Module):
        def forward(self, x, shape):
            # ONNX: 0 copies the input's size on that axis
            return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(shape)])

    class ConstantSlice(nn.Module):
        """ONNX Slice of a tensor by constant starts/ends/axes/steps, as Python slices."""

        def __init__(self, starts, ends, axes, steps):
            super().__init__()
            self.index = (starts, ends, axes, steps)

        def forward(self, x, *constants):
            starts, ends, axes, steps = self.index
            axes = axes if axes is not None else list(range(len(starts)))
            steps = steps if steps is not None else [1] * len(starts)
            index = [slice(None)] * x.dim()
            for start, end, axis, step in zip(starts, ends, axes, steps):
                if step < 1:
                    raise ocr.ProvisionError(f"Slice with step {step}")
                index[axis] = slice(start, min(end, 2**62), step)
            return x[tuple(index)]

    def constant_values(node):
        return [int(v) for v in modules[node.target].value.reshape(-1).tolist()]

    shape_nodes = {n for n in fx.graph.nodes if kind(n) == "DynShape"}
    changed = True
    while changed:
        changed = False
        for node in fx.graph.nodes:
            if node in shape_nodes or kind(node) not in ("OnnxCast", "OnnxSlice", "OnnxConcat"):
                continue
            inputs = node.all_input_nodes
            if any(i in shape_nodes for i in inputs) and all(
                    i in shape_nodes or kind(i) in ("CpuConstant", "OnnxCast") for i in inputs):
                shape_nodes.add(node)
                for i in inputs:
                    if kind(i) == "OnnxCast" and kind(i.all_input_nodes[0]) == "CpuConstant":
                        shape_nodes.add(i)  # a cast of a constant
                changed = True
    reshapes = [n for n in fx.graph.nodes if kind(n) == "DynReshape" and n.args[1] in shape_nodes]
    constants = set()
    for node in shape_nodes:
        for i in node.all_input_nodes:
            if kind(i) == "CpuConstant":
                constants.add(i)
        for user in node.users:
            if user not in shape_nodes and not (user in reshapes and user.args[0] is not node):
                raise ocr.ProvisionError(f"shape value {node.name} is used by {user.name} as a tensor")
    for const in constants:
        if any(user not in shape_nodes for user in const.users):
            raise ocr.ProvisionError(f"constant {const.name} feeds shapes and tensors")
    swap = {"DynShape": lambda m: ListShape(m.start, m.end), "OnnxCast": lambda m: ListCast(),
            "OnnxSlice": lambda m: ListSlice(), "OnnxConcat": lambda m: ListConcat(),
            "CpuConstant": lambda m: ListConstant(m.value), "DynReshape": lambda m: ListReshape()}
    for node in list(shape_nodes) + list(constants) + reshapes:
        fx.set_submodule(node.target, swap[kind(node)](modules[node.target]))
    # Slices of tensors by constant bounds: onnx2torch reads the bounds with .numpy().
    for node in fx.graph.nodes:
        if kind(node) == "OnnxSlice" and node not in shape_nodes:
            bounds = node.args[1:]
            if not all(isinstance(b, type(node)) and kind(b) == "CpuConstant" for b in bounds):
                raise ocr.ProvisionError(f"{node.name} slices by computed bounds")
            values = [constant_values(b) for b in bounds] + [None] * (4 - len(bounds))
            fx.set_submodule(node.target, ConstantSlice(*values))
    return len(reshapes)


def ocr_module(key: str, example):
    from onnx2torch import convert as o2t_convert

    sources = ocr.check_sources()
    spec = ocr.MODELS[key]
    model, _ = ocr.prepare_onnx(sources[key], spec["shape_infer"])
    fx = o2t_convert(model).eval()
    ocr.optimize_graph(fx)
    ocr.to_channels_last(fx)
    resizes = constant_resizes(fx, example)
    reshapes = python_shapes(fx)
    return fx, (f"onnx2torch graph of {spec['onnx']} ({resizes} Resize scales made constant, "
                f"{reshapes} Reshapes on Python sizes)")


def yolo_module(torchscript: Path, classes: int):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    scripted = torch.jit.load(str(torchscript), map_location="cpu")
    model = DetectionModel("yolov8n.yaml", nc=classes, verbose=False).fuse(verbose=False).eval()
    result = model.load_state_dict(scripted.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ocr.ProvisionError(f"{torchscript.name}: state_dict does not fit yolov8n.yaml "
                                 f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    head = model.model[-1]
    head.export, head.dynamic, head.format = True, True, "torchscript"
    return model, "ultralytics DetectionModel(yolov8n.yaml), fused, with the TorchScript's weights"


# ----------------------------------------------------------------------------- build


def build(name: str, threads: int, torch_version: str) -> None:
    import torch
    from torch.export import Dim

    manifest, builder, axes, example_shape, verify_shapes = TARGETS[name]
    model_meta = tomllib.loads(manifest.read_text())
    torchscript = manifest.parent / model_meta["file"]
    torch.manual_seed(0)
    example = torch.rand(*example_shape) * 2 - 1
    t0 = time.perf_counter()
    if builder.startswith("ocr:"):
        module, how = ocr_module(builder[4:], example)
        tolerance = OCR_TOLERANCE
    else:
        module, how = yolo_module(torchscript, len(model_meta["labels"]["classes"]))
        tolerance = DETECTOR_TOLERANCE
    dynamic = ({axis: Dim.AUTO for axis in axes},)
    with torch.no_grad():
        exported = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    package = package_path(manifest)
    # Built in a scratch folder under its final name (the archive's top folder is named
    # after the file), then moved into place once verified.
    scratch = package.parent / ".aoti-build"
    scratch.mkdir(exist_ok=True)
    tmp = scratch / package.name
    tmp.unlink(missing_ok=True)
    # Not linked to libtorch.so (the stub that pulls in libtorch_cuda): the kernels call only
    # libtorch_cpu's C shim, which the loading process (the engine's binaries link it) has.
    torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp), inductor_configs={"aot_inductor.link_libtorch": False})
    compile_s = time.perf_counter() - t0

    low, high = input_bounds(tmp, len(example_shape))
    tolerance_text = (", ".join(f"{k} {v:g}" for k, v in tolerance.items())
                      if isinstance(tolerance, dict) else f"{tolerance:g}")
    tolerance_text = f'"{tolerance_text}"'
    isa = package_isa(tmp)
    worst = verify(torchscript, str(tmp), verify_shapes, tolerance, name)
    os.replace(tmp, package)
    shutil.rmtree(scratch, ignore_errors=True)
    side = sidecar_path(manifest)
    side.write_text(
        "# generated by models/provision_aoti.py -- do not edit\n"
        f'file = "{package.name}"\n'
        f'sha256 = "{sha256_file(package)}"\n'
        'device = "cpu"\n'
        f'source_sha256 = "{model_meta["sha256"]}"\n'
        f'torch = "{torch_version}"\n'
        f"threads = {threads}\n"
        f'builder = "{builder_id()}"\n'
        f'built_from = "{how}"\n'
        "# the vector ISA the kernels were compiled for, and the instruction-set flags of the\n"
        "# CPU they were built on (-march=native): the engine runs the package only on a CPU\n"
        "# that has every one of them.\n"
        f'cpu_isa = "{isa}"\n'
        f"cpu_flags = {instruction_set_flags()}\n"
        f"max_abs_diff = {worst:.3e}\n"
        f"tolerance = {tolerance_text}\n"
        "# the input sizes the kernels were compiled for, per axis (-1: no bound); larger or\n"
        "# smaller inputs run on TorchScript. Batch 1 is verified above although the package\n"
        "# itself asks for 2 (torch.export never specializes a dynamic size to 1).\n"
        f"min_input = {[1] + low[1:]}\n"
        f"max_input = {high}\n")
    print(f"[{name}] {package.name}: compiled in {compile_s:.0f}s, max|diff| vs TorchScript "
          f"{worst:.2e} (<= {tolerance_text}) on {len(verify_shapes)} shapes", flush=True)


def package_isa(package: Path) -> str:
    """The vector ISA Inductor compiled the kernels for; a scalar build is refused (see the
    TORCH_USE_RTLD_GLOBAL note at the top)."""
    import json
    import zipfile

    with zipfile.ZipFile(package) as archive:
        metas = [n for n in archive.namelist() if n.endswith("kernel_metadata.json")]
        isa = json.loads(archive.read(metas[0])).get("AOTI_CPU_ISA", "") if metas else ""
    if not isa or isa == "INVALID_VEC_ISA":
        raise ocr.ProvisionError(
            f"{package.name}: Inductor found no vector ISA ({isa or 'none recorded'}), so its "
            "kernels are scalar and slower than TorchScript; not installed")
    return isa


# The /proc/cpuinfo flags that name instruction sets a compiler may use under -march=native.
ISA_FLAG_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "adx", "aes", "vaes",
                     "pclmul", "vpclmul", "gfni", "sha", "movbe", "popcnt", "lzcnt", "abm")


def instruction_set_flags() -> list[str]:
    flags: set[str] = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    return sorted(f for f in flags if f.startswith(ISA_FLAG_PREFIXES))


def input_bounds(package: Path, rank: int) -> tuple[list[int], list[int]]:
    """The input size bounds the compiled wrapper checks (only when AOTI_RUNTIME_CHECK_INPUTS
    is set, so the engine checks them itself): Inductor may have chosen 32-bit indexing for
    the sizes it saw, which bounds the batch."""
    import re
    import zipfile

    with zipfile.ZipFile(package) as archive:
        wrappers = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        if len(wrappers) != 1:
            raise ocr.ProvisionError(f"{package.name}: {len(wrappers)} wrapper sources, expected 1")
        code = archive.read(wrappers[0]).decode()
    check = code[code.index("static void check_input_0"):]
    check = check[:check.index("\n}\n")]
    low, high = [1] * rank, [-1] * rank
    for axis, value in re.findall(r"_size\[(\d)\] < (\d+)\)", check):
        low[int(axis)] = int(value)
    for axis, value in re.findall(r"_size\[(\d)\] > (\d+)\)", check):
        high[int(axis)] = int(value)
    for value, axis in re.findall(r"if \((\d+) != \w+_size\[(\d)\]\)", check):
        low[int(axis)] = high[int(axis)] = int(value)
    return low, high


def verify(torchscript: Path, package: str, shapes, tolerance: float, name: str) -> float:
    import torch

    import ctypes

    scripted = torch.jit.load(str(torchscript), map_location="cpu").eval()
    # Python loads libtorch_cpu privately; the package resolves its symbols globally, as in
    # the engine's binaries.
    ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"),
                mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    compiled = torch._inductor.aoti_load_package(package)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(*shape) * 2 - 1
        with torch.no_grad():
            want = scripted(x)
            got = compiled(x)
        got = got[0] if isinstance(got, (list, tuple)) else got
        if got.shape != want.shape:
            raise ocr.ProvisionError(f"[{name}] shape {list(got.shape)} != TorchScript {list(want.shape)} for {shape}")
        parts = ({"boxes": (got[:, :4], want[:, :4]), "scores": (got[:, 4:], want[:, 4:])}
                 if isinstance(tolerance, dict) else {"output": (got, want)})
        for part, (a, b) in parts.items():
            diff = (a - b).abs().max().item()
            bound = tolerance[part] if isinstance(tolerance, dict) else tolerance
            worst = max(worst, diff)
            if not diff <= bound:
                raise ocr.ProvisionError(f"[{name}] {part}: max|diff| {diff:.2e} > {bound:g} for input {shape}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--check", action="store_true", help="only check; exit 0 if up to date, 3 if not")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads the kernels are compiled for (default: the cores here, at most 2, "
                         "as the services run by default)")
    ap.add_argument("models", nargs="*", default=list(TARGETS), help="which models (default: all)")
    args = ap.parse_args()
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    from importlib.metadata import version

    torch_version = version("torch")  # without importing torch: "up to date" stays fast
    status, todo = 0, []
    for name in args.models:
        manifest = TARGETS[name][0]
        if not manifest.is_file():
            print(f"[{name}] no {manifest} (provision the TorchScript models first); skipped", flush=True)
            continue
        ok, why = up_to_date(manifest, torch_version, threads)
        if ok and not args.force:
            print(f"[{name}] AOTInductor package up to date", flush=True)
            continue
        print(f"[{name}] AOTInductor package needs building: {why}", flush=True)
        if args.check:
            status = 3
            continue
        todo.append(name)
    if not todo:
        return status

    import torch

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    torch.set_num_threads(threads)
    ocr.patch_onnx2torch()  # the graph TorchScript was traced from; python_shapes() adapts it
    for name in todo:
        manifest = TARGETS[name][0]
        if TARGETS[name][1] == "yolo":
            try:
                import ultralytics  # noqa: F401
            except ImportError:
                print(f"[{name}] ultralytics is not installed (python/requirements-train.txt): "
                      "the detector keeps TorchScript", flush=True)
                continue
        try:
            build(name, threads, torch_version)
        except BaseException:
            # never leave a sidecar pointing at a package that was not verified
            sidecar_path(manifest).unlink(missing_ok=True)
            package_path(manifest).unlink(missing_ok=True)
            raise
    return status


if __name__ == "__main__":
    sys.exit(main())
