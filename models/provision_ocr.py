#!/usr/bin/env python3
"""Convert RapidOCR's PP-OCRv4 mobile ONNX models to TorchScript for libtorch (tch `CModule::load`).

Offline, idempotent, checksummed and verified:

  1. find the ONNX files inside the installed `rapidocr_onnxruntime` package and check their
     sha256 against the pins below (a different package build fails loudly);
  2. move paddle2onnx's weight `Constant` nodes into initializers, run onnxruntime's symbolic
     shape inference, convert with onnx2torch (with the shape ops replaced by tensor-valued ones
     so batch/width stay dynamic), `torch.jit.trace`;
  3. load every TorchScript file back and compare it with onnxruntime on several input shapes
     (max abs diff <= 1e-4), and run it on the `meta` device to prove no CPU-only tensors are
     baked into the graph (so `.to(cuda)` works);
  4. write per-model TOML manifests, the recognition dictionary and a stamp file
     (`provision.json`) that lets the next run print "up to date" without importing torch.

See models/README.md for the why of each workaround.  Usage:

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python models/provision_ocr.py [--out DIR] [--force] [--check]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

# libgomp's default spin-waiting is 10-25x slower on shared VMs; must be set before torch/ORT load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "ocr" / "generated"
STAMP = "provision.json"
PACKAGE = "rapidocr_onnxruntime"
PACKAGE_DIST = "rapidocr-onnxruntime"
PACKAGE_VERSION = "1.4.4"
TOLERANCE = 1e-4
DICT_FILE = "ppocr_keys_v4.txt"
DICT_LINES = 6623

# RapidOCR 1.4.4 preprocessing (read from its source, see README): all three models get BGR
# (cv2 order) pixels scaled to [0,1], then (x - mean) / std.  det: config.yaml Det.mean/std;
# rec (text_recognize.py resize_norm_img) and cls (text_cls.py): (x/255 - 0.5) / 0.5.
HALF = [0.5, 0.5, 0.5]

MODELS = {
    "det": {
        "onnx": "ch_PP-OCRv4_det_infer.onnx",
        "onnx_sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "name": "ppocr-v4-det",
        "task": "text-detect",
        "file": "ppocr_v4_det.pt",
        # fp32 weights 4.7 MB; batch 1 up to RapidOCR's 2000 px max side (CPU peak ~1.1 GB at 2016^2).
        "vram_estimate_bytes": 1024 * 1024 * 1024,
        "shape": [-1, 3, -1, -1],
        "stride": 32,
        "height": None,
        "trace": (1, 3, 640, 640),
        "shape_infer": "symbolic",
        "verify": [(1, 3, 320, 320), (2, 3, 640, 480), (1, 3, 960, 960), (3, 3, 96, 1280)],
    },
    "rec": {
        "onnx": "ch_PP-OCRv4_rec_infer.onnx",
        "onnx_sha256": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "name": "ppocr-v4-rec",
        "task": "text-recognize",
        "file": "ppocr_v4_rec.pt",
        # fp32 weights 10.8 MB; batch <= 32 crops at width <= 1280 (CPU peak ~0.6 GB, output alone 136 MB).
        "vram_estimate_bytes": 512 * 1024 * 1024,
        "shape": [-1, 3, 48, -1],
        "stride": None,
        "height": 48,
        "trace": (2, 3, 48, 320),
        "shape_infer": "symbolic",
        "verify": [(1, 3, 48, 320), (8, 3, 48, 160), (3, 3, 48, 640), (5, 3, 48, 100), (1, 3, 48, 1280)],
    },
    "cls": {
        "onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "onnx_sha256": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "name": "ppocr-mobile-v2-cls",
        "task": "text-angle",
        "file": "ppocr_mobile_v2_cls.pt",
        # fp32 weights 0.5 MB; batch <= 64 (CPU peak ~0.2 GB).
        "vram_estimate_bytes": 128 * 1024 * 1024,
        "shape": [-1, 3, 48, 192],
        "stride": None,
        "height": 48,
        "trace": (2, 3, 48, 192),
        "shape_infer": "onnx",
        "verify": [(1, 3, 48, 192), (6, 3, 48, 192), (13, 3, 48, 192)],
        "classes": ["0", "180"],
    },
}


class ProvisionError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_models_dir() -> Path:
    """Locate rapidocr_onnxruntime/models without importing the package (fast, no ORT load)."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProvisionError(f"python package {PACKAGE} is not installed (pip install {PACKAGE_DIST}=={PACKAGE_VERSION})")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def package_version() -> str:
    from importlib.metadata import version

    return version(PACKAGE_DIST)


def check_sources() -> dict[str, Path]:
    """Return {key: onnx path}; raise if the package version or any ONNX sha256 is not the pinned one."""
    ver = package_version()
    if ver != PACKAGE_VERSION:
        raise ProvisionError(f"{PACKAGE_DIST}=={ver} installed, converter is pinned to {PACKAGE_VERSION}")
    mdir = package_models_dir()
    paths = {}
    for key, spec in MODELS.items():
        p = mdir / spec["onnx"]
        if not p.is_file():
            raise ProvisionError(f"missing source model {p}")
        got = sha256_file(p)
        if got != spec["onnx_sha256"]:
            raise ProvisionError(f"sha256 mismatch for {p}: got {got}, pinned {spec['onnx_sha256']}")
        paths[key] = p
    return paths


def converter_sha256() -> str:
    return sha256_file(Path(__file__).resolve())


# ----------------------------------------------------------------------------- up-to-date check


def up_to_date(out: Path) -> tuple[bool, str]:
    """Cheap check (stdlib only): stamp, manifests, output hashes, source hashes, converter hash."""
    import tomllib

    stamp_path = out / STAMP
    if not stamp_path.is_file():
        return False, f"no {stamp_path}"
    try:
        stamp = json.loads(stamp_path.read_text())
    except ValueError as e:
        return False, f"unreadable stamp: {e}"
    if stamp.get("converter_sha256") != converter_sha256():
        return False, "converter script changed"
    try:
        check_sources()
    except ProvisionError as e:
        return False, str(e)
    for key, spec in MODELS.items():
        mpath = out / f"{spec['name']}.toml"
        if not mpath.is_file():
            return False, f"missing {mpath}"
        man = tomllib.loads(mpath.read_text())
        if man.get("source") != source_string(spec):
            return False, f"{mpath}: source changed"
        pt = out / man["file"]
        if not pt.is_file() or sha256_file(pt) != man.get("sha256"):
            return False, f"{pt} missing or sha256 differs from manifest"
        if stamp.get("outputs", {}).get(man["file"]) != man["sha256"]:
            return False, f"{pt} sha256 differs from stamp"
    d = out / DICT_FILE
    if not d.is_file() or sha256_file(d) != stamp.get("outputs", {}).get(DICT_FILE):
        return False, f"{d} missing or changed"
    return True, "ok"


# ----------------------------------------------------------------------------- conversion


def source_string(spec: dict) -> str:
    return f"{PACKAGE_DIST}=={PACKAGE_VERSION} models/{spec['onnx']} sha256={spec['onnx_sha256']}"


def prepare_onnx(path: Path, shape_infer: str):
    """Load the paddle2onnx export and make it digestible for onnx2torch.

    * Float `Constant` nodes (paddle2onnx stores every weight that way) become initializers:
      onnx2torch's Conv/BatchNorm/MatMul converters only read weights from initializers.
      Integer constants (shape arithmetic) stay `Constant` nodes; they are turned into
      trace-time constants (CPU) by the patched Constant converter below.
    * onnxruntime's symbolic shape inference fills value_info; onnx2torch picks BatchNorm1d/2d
      from the input rank there (without it the rec model fails: "spatial rank -2").
    """
    import onnx
    from onnx import TensorProto
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    g = model.graph
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    keep, moved = [], 0
    for node in g.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
            and node.attribute[0].t.data_type in floats
        ):
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.initializer.append(t)
            moved += 1
            continue
        keep.append(node)
    # Fold Reshape(weight, constant shape) (cls reshapes its SE biases on every call) into
    # initializers: fewer ops per call in the traced graph.
    from onnx import numpy_helper

    inits = {t.name: t for t in g.initializer}
    int_consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in keep
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
    }
    folded = []
    for node in keep:
        if node.op_type == "Reshape" and node.input[0] in inits and node.input[1] in int_consts:
            w = numpy_helper.to_array(inits[node.input[0]])
            shape = [w.shape[i] if d == 0 else int(d) for i, d in enumerate(int_consts[node.input[1]])]
            g.initializer.append(numpy_helper.from_array(w.reshape(shape), node.output[0]))
            continue
        folded.append(node)
    del g.node[:]
    g.node.extend(folded)
    if shape_infer == "symbolic":
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    else:  # cls: ORT's symbolic inference asserts on its Concat(axis=-1); ONNX's own is enough there
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model, moved


def patch_onnx2torch() -> None:
    """Replace onnx2torch's Shape/Reshape/Constant(int) converters with trace-friendly versions.

    Stock onnx2torch builds shapes with `torch.tensor(x.shape)` and reshapes with
    `torch.reshape(x, torch.Size(python ints))`; under torch.jit.trace those become constants, so
    batch size and width get frozen to the trace input.  Here shapes are tensors all the way:
    Shape -> aten::_shape_as_tensor, Reshape -> aten::_reshape_from_tensor (ONNX's "0 = copy
    input dim" resolved with torch.where), so the traced graph recomputes them per call.
    Integer constants are kept out of the module's buffers so they stay on the CPU next to the
    shape tensors when the module is moved to CUDA.
    """
    import torch
    from torch import nn
    from onnx2torch.node_converters import registry
    from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node

    class DynShape(nn.Module, OnnxToTorchModule):
        def __init__(self, start: int = 0, end=None):
            super().__init__()
            self.start, self.end = start, end

        def forward(self, x):
            return torch._shape_as_tensor(x)[self.start : self.end]

    class DynReshape(nn.Module, OnnxToTorchModule):
        def forward(self, x, shape):
            shape = shape.to(torch.int64)
            n = int(shape.numel())  # rank of the output: static in ONNX
            dims = torch._shape_as_tensor(x)
            r = x.dim()
            if n <= r:
                dims = dims[:n]
            else:
                dims = torch.cat([dims, torch.zeros(n - r, dtype=torch.int64)])
            shape = torch.where(shape == 0, dims, shape)  # ONNX: 0 copies the input dim
            return torch._reshape_from_tensor(x, shape)

    class CpuConstant(nn.Module, OnnxToTorchModule):
        def __init__(self, value):
            super().__init__()
            self.value = value  # plain attribute, not a buffer: a CPU constant in the trace

        def forward(self):
            return self.value

    def conv_shape(node, graph):
        return OperationConverterResult(
            torch_module=DynShape(node.attributes.get("start", 0), node.attributes.get("end", None)),
            onnx_mapping=onnx_mapping_from_node(node=node),
        )

    def conv_reshape(node, graph):
        if node.attributes.get("allowzero", 0) == 1:
            raise NotImplementedError('"allowzero=1" is not implemented')
        return OperationConverterResult(torch_module=DynReshape(), onnx_mapping=onnx_mapping_from_node(node=node))

    orig_constant = {}

    def conv_constant(node, graph):
        attrs = node.attributes
        if list(attrs) == ["value"]:
            value = attrs["value"].to_torch()
            if not value.is_floating_point():
                return OperationConverterResult(
                    torch_module=CpuConstant(value), onnx_mapping=onnx_mapping_from_node(node=node)
                )
        return orig_constant[0](node, graph)

    # onnx2torch indexes with a list of slices (deprecated since torch 2.9: would become a tensor
    # index); use a tuple.
    from onnx2torch.node_converters import slice as o2t_slice

    def do_slice(x, flip_dims, pos_axes_slices, neg_axes_slices):
        if flip_dims:
            x = torch.flip(x, dims=flip_dims)
        if pos_axes_slices:
            x = x[tuple(pos_axes_slices)]
        if neg_axes_slices:
            x = x[tuple(neg_axes_slices)]
        return x

    o2t_slice._do_slice = do_slice

    reg = registry._CONVERTER_REGISTRY
    for desc in list(reg):
        if desc.domain not in ("", "ai.onnx"):
            continue
        if desc.operation_type == "Shape":
            reg[desc] = conv_shape
        elif desc.operation_type == "Reshape":
            reg[desc] = conv_reshape
        elif desc.operation_type == "Constant":
            orig_constant.setdefault(0, reg[desc])
            reg[desc] = conv_constant


def optimize_graph(fx) -> dict:
    """Fuse op chains of the onnx2torch GraphModule before tracing (fewer, bigger ops per call).

    All rewrites keep weights as module parameters/buffers (no torch.jit.freeze), so the traced
    module still moves with `.to(device)`; verify() bounds the numeric change (<= TOLERANCE).
      * Conv2d -> BatchNorm2d (eval)                        -> one Conv2d (fuse_conv_bn_eval)
      * Conv2d -> Mul/Add/Sub/Div by a scalar or per-channel constant -> folded into the Conv2d
      * HardSigmoid(alpha, beta) right after a single-use Conv2d -> the Conv2d rescaled to feed
        F.hardsigmoid (clip(a*x+b, 0, 1) == hardsigmoid(6a*x + 6b - 3)); alpha == 1/6, beta == 1/2
        anywhere -> F.hardsigmoid
      * x * ReLU6(x + 3) / 6                                -> F.hardswish(x)
      * x * Sigmoid(x)                                      -> F.silu(x)
      * GlobalAveragePool on 4-D input (mean over H, W)    -> F.adaptive_avg_pool2d(x, 1)
      * Mul(x, scalar s) -> Add(., scalar b) -> 1x1 Conv2d (no padding) -> folded into the Conv2d,
        otherwise -> torch.addcmul(b, x, s)
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.activations import OnnxHardSigmoid

    g = fx.graph
    mods = dict(fx.named_modules())
    counts = {"conv+bn": 0, "conv+const": 0, "hardsigmoid": 0, "hardswish": 0, "silu": 0, "avgpool": 0, "affine->1x1conv": 0, "addcmul": 0}
    fname = {torch.add: "add", torch.sub: "sub", torch.mul: "mul"}

    def mod(n):
        return mods.get(n.target) if n.op == "call_module" else None

    def binop(n):
        m = mod(n)
        if isinstance(m, OnnxBinaryMathOperation) and not (m.broadcast == 1 and m.axis is not None):
            f = m.math_op_function
            return fname.get(f, "div" if getattr(f, "__name__", "") == "_onnx_div" else None)
        return None

    def const(n):
        if n.op != "get_attr":
            return None
        obj = fx
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) and obj.is_floating_point() else None

    def split_const(n):
        """(other arg, constant tensor, const_is_first) for a binary op with one constant operand."""
        a, b = n.args
        cb = const(b) if isinstance(b, torch.fx.Node) else None
        if cb is not None:
            return a, cb, False
        ca = const(a) if isinstance(a, torch.fx.Node) else None
        if ca is not None:
            return b, ca, True
        return None

    def is_conv(n):
        m = mod(n)
        return isinstance(m, nn.Conv2d) and len(n.users) == 1

    def per_channel(c, conv):
        """c as a [C_out] vector if it broadcasts per output channel over NCHW, else None."""
        oc = conv.out_channels
        if c.numel() == 1:
            return c.reshape(()).expand(oc).clone()
        s = list(c.shape)
        while s and s[0] == 1 and len(s) > 3:
            s.pop(0)
        if len(s) == 3 and s[0] == oc and s[1] == s[2] == 1:
            return c.reshape(oc).clone()
        return None

    def replace(old, new):
        old.replace_all_uses_with(new)
        g.erase_node(old)

    changed = True
    while changed:
        changed = False
        for n in list(g.nodes):
            if n.op != "call_module" or n not in n.graph.nodes:
                continue
            m = mod(n)
            src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
            # Conv2d -> BatchNorm2d
            if isinstance(m, nn.BatchNorm2d) and src is not None and is_conv(src) and not m.training:
                conv = mods[src.target]
                fused = fuse_conv_bn_eval(conv, m)
                parent, _, attr = src.target.rpartition(".")
                setattr(fx.get_submodule(parent) if parent else fx, attr, fused)
                mods[src.target] = fused
                replace(n, src)
                counts["conv+bn"] += 1
                changed = True
                continue
            op = binop(n)
            if op is not None:
                sc = split_const(n)
                if sc is not None and is_conv(sc[0]) and not (sc[2] and op in ("sub", "div")):
                    conv = mods[sc[0].target]
                    v = per_channel(sc[1].detach(), conv)
                    if v is not None:
                        with torch.no_grad():
                            if conv.bias is None:
                                conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                            if op == "mul":
                                conv.weight.mul_(v.view(-1, 1, 1, 1)); conv.bias.mul_(v)
                            elif op == "div":
                                conv.weight.div_(v.view(-1, 1, 1, 1)); conv.bias.div_(v)
                            elif op == "add":
                                conv.bias.add_(v)
                            else:
                                conv.bias.sub_(v)
                        replace(n, sc[0])
                        counts["conv+const"] += 1
                        changed = True
                        continue
            if isinstance(m, OnnxHardSigmoid) and src is not None:
                a, b = float(m.alpha), float(m.beta)
                ok = abs(a - 1 / 6) < 1e-6 and b == 0.5
                if not ok and is_conv(src):
                    conv = mods[src.target]
                    with torch.no_grad():
                        if conv.bias is None:
                            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                        conv.weight.mul_(6 * a); conv.bias.mul_(6 * a).add_(6 * b - 3)
                    ok = True
                if ok:
                    with g.inserting_after(n):
                        new = g.call_function(F.hardsigmoid, (src,))
                    replace(n, new)
                    counts["hardsigmoid"] += 1
                    changed = True
                    continue
        # elementwise patterns (no module changes)
        for n in list(g.nodes):
            if n not in g.nodes:
                continue
            if type(mod(n)).__name__ in ("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape") \
                    and len(n.args) == 1:
                src = n.args[0]
                if getattr(mods[n.target], "_x_dims", [2, 3]) == [2, 3]:
                    with g.inserting_after(n):
                        new = g.call_function(F.adaptive_avg_pool2d, (src, 1))
                    replace(n, new)
                    counts["avgpool"] += 1
                    changed = True
                    continue
            op = binop(n)
            # x * relu6(x + 3) / 6
            if op == "div":
                sc = split_const(n)
                if sc and not sc[2] and sc[1].numel() == 1 and float(sc[1]) == 6.0 and binop(sc[0]) == "mul" and len(sc[0].users) == 1:
                    mul = sc[0]
                    for x, r in (mul.args, mul.args[::-1]):
                        if isinstance(mod(r), nn.ReLU6) and len(r.users) == 1 and binop(r.args[0]) == "add" and len(r.args[0].users) == 1:
                            add = r.args[0]
                            sa = split_const(add)
                            if sa and sa[0] is x and sa[1].numel() == 1 and float(sa[1]) == 3.0:
                                with g.inserting_after(n):
                                    new = g.call_function(F.hardswish, (x,))
                                replace(n, new); g.erase_node(mul); g.erase_node(r); g.erase_node(add)
                                counts["hardswish"] += 1
                                changed = True
                                break
                    continue
            if op == "mul":
                a, b = n.args
                for x, s in ((a, b), (b, a)):
                    if isinstance(mod(s), nn.Sigmoid) and s.args[0] is x and len(s.users) == 1:
                        with g.inserting_after(n):
                            new = g.call_function(F.silu, (x,))
                        replace(n, new); g.erase_node(s)
                        counts["silu"] += 1
                        changed = True
                        break
                else:
                    sc = split_const(n)
                    if sc and sc[1].numel() == 1 and len(n.users) == 1:
                        add = next(iter(n.users))
                        sa = split_const(add) if binop(add) == "add" else None
                        if sa and sa[0] is n and sa[1].numel() == 1:
                            user = next(iter(add.users)) if len(add.users) == 1 else None
                            conv = mod(user) if user is not None else None
                            if (isinstance(conv, nn.Conv2d) and user.args[0] is add and conv.groups == 1
                                    and tuple(conv.kernel_size) == (1, 1) and tuple(conv.padding) == (0, 0)
                                    and conv.padding_mode == "zeros"):
                                # 1x1 conv without padding: conv(s*x + b) == conv'(x) exactly
                                with torch.no_grad():
                                    if conv.bias is None:
                                        conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                                    s_v, b_v = float(sc[1].reshape(())), float(sa[1].reshape(()))
                                    conv.bias.add_(conv.weight.sum(dim=(1, 2, 3)) * b_v)
                                    conv.weight.mul_(s_v)
                                user.replace_input_with(add, sc[0])
                                g.erase_node(add); g.erase_node(n)
                                counts["affine->1x1conv"] += 1
                                changed = True
                                continue
                            s_node = n.args[0] if sc[2] else n.args[1]
                            b_node = add.args[1] if not sa[2] else add.args[0]
                            with g.inserting_after(add):
                                new = g.call_function(torch.addcmul, (b_node, sc[0], s_node))
                            replace(add, new); g.erase_node(n)
                            counts["addcmul"] += 1
                            changed = True
    g.eliminate_dead_code()
    g.lint()
    fx.recompile()
    return counts


def to_channels_last(fx) -> None:
    """Run the convolutions in NHWC: oneDNN's depthwise and small convs are much faster there.

    The 4-D weights are stored channels_last (`.to(device)` preserves it) and the graph starts
    with `x.contiguous(memory_format=torch.channels_last)`; every later op keeps the layout or
    is layout-agnostic (reshape/transpose/matmul), so outputs and their shapes are unchanged.
    """
    import torch

    fx.to(memory_format=torch.channels_last)
    g = fx.graph
    x = next(n for n in g.nodes if n.op == "placeholder")
    with g.inserting_after(x):
        cl = g.call_method("contiguous", (x,), {"memory_format": torch.channels_last})
    x.replace_all_uses_with(cl, delete_user_cb=lambda user: user is not cl)
    g.lint()
    fx.recompile()


def convert(key: str, onnx_path: Path, out_pt: Path) -> dict:
    import torch
    from onnx2torch import convert as o2t_convert

    spec = MODELS[key]
    t0 = time.perf_counter()
    model, moved = prepare_onnx(onnx_path, spec["shape_infer"])
    fx = o2t_convert(model).eval()
    fused = optimize_graph(fx)
    to_channels_last(fx)
    example = torch.rand(*spec["trace"]) * 2 - 1
    with torch.no_grad(), warnings.catch_warnings():
        # The remaining TracerWarnings are about values that are constant by construction (slice
        # bounds, resize scales, output rank); verify() proves the graph dynamic on other shapes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(fx, example, check_trace=False)
    tmp = out_pt.with_suffix(".pt.tmp")
    torch.jit.save(traced, str(tmp))
    os.replace(tmp, out_pt)
    secs = time.perf_counter() - t0
    print(f"[{key}] converted {onnx_path.name} -> {out_pt.name} "
          f"({moved} weight Constants -> initializers, fused {fused}, trace {spec['trace']}) in {secs:.1f}s", flush=True)
    return {"convert_s": secs}


def verify(key: str, onnx_path: Path, pt_path: Path) -> float:
    """Compare the saved TorchScript (loaded back) with onnxruntime on several shapes."""
    import numpy as np
    import onnxruntime as ort
    import torch

    spec = MODELS[key]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    ts = torch.jit.load(str(pt_path), map_location="cpu").eval()
    rng = np.random.default_rng(20240601)
    worst = 0.0
    for shape in spec["verify"]:
        assert tuple(shape) != tuple(spec["trace"]), "verify shapes must differ from the trace shape"
        x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        ref = sess.run(None, {in_name: x})[0]
        with torch.no_grad():
            got = ts(torch.from_numpy(x)).numpy()
        if got.shape != ref.shape:
            raise ProvisionError(f"[{key}] input {shape}: TorchScript output shape {got.shape} != onnxruntime {ref.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        worst = max(worst, diff)
        status = "ok" if diff <= TOLERANCE else "DRIFT"
        print(f"[{key}] verify {'x'.join(map(str, shape)):>14} -> {'x'.join(map(str, ref.shape)):>14}  max|diff| = {diff:.3e}  {status}", flush=True)
        if not diff <= TOLERANCE:
            raise ProvisionError(f"[{key}] TorchScript drifts from onnxruntime: max abs diff {diff:.3e} > {TOLERANCE:g} at input {shape}")
    check_device_placement(key, ts)
    return worst


# ops whose outputs live on the CPU (or are plain ints) whatever the device of their inputs
_CPU_OUT_OPS = {"aten::_shape_as_tensor", "aten::size", "aten::Int", "aten::dim", "aten::numel", "aten::len"}


def check_device_placement(key: str, ts) -> None:
    """Static device-taint check of the traced graph (no GPU needed).

    Values derived from the input or from parameters/buffers follow the module to CUDA ("dev");
    tensors baked into the trace and shape tensors stay on the CPU ("cpu"; 0-dim scalars are
    exempt, CUDA accepts CPU scalars).  An op mixing both would fail on CUDA, except
    `_reshape_from_tensor(dev, cpu_shape)`, which reads the shape on the host by design.
    """
    g = ts.inlined_graph
    flags: dict = {}
    for i, v in enumerate(g.inputs()):
        if i > 0:
            flags[v] = {"dev"}
    problems = []
    for n in g.nodes():
        kind = n.kind()
        if kind == "prim::Constant":
            out = n.output()
            tk = out.type().kind()
            iv = out.toIValue() if tk in ("TensorType", "DeviceObjType") else None
            if tk == "TensorType" and getattr(iv, "dim", lambda: 0)() > 0:
                flags[out] = {"cpu"}
            elif tk == "DeviceObjType" and str(iv) == "cpu":
                flags[out] = {"cpu"}
            continue
        if kind == "prim::GetAttr":
            out = n.output()
            if out.type().kind() == "TensorType":
                flags[out] = {"dev"}
            continue
        ins = [flags.get(v, set()) for v in n.inputs()]
        union = set().union(*ins) if ins else set()
        if kind in _CPU_OUT_OPS:
            for o in n.outputs():
                flags[o] = {"cpu"} if o.type().kind() == "TensorType" else set()
            continue
        if kind == "aten::_reshape_from_tensor":
            if "cpu" in ins[0] and "dev" in ins[0]:
                problems.append(str(n).strip())
            for o in n.outputs():
                flags[o] = set(ins[0])
            continue
        if {"cpu", "dev"} <= union:
            problems.append(str(n).strip()[:160])
        for o in n.outputs():
            flags[o] = set(union)
    if problems:
        raise ProvisionError(f"[{key}] traced graph mixes CPU-baked and device tensors (would fail on CUDA):\n  "
                             + "\n  ".join(problems[:10]))
    print(f"[{key}] device check ok: shape math stays on CPU, data path has no CPU-baked tensors", flush=True)


def write_dictionary(rec_onnx: Path, out: Path, num_classes: int) -> Path:
    import onnx

    model = onnx.load(str(rec_onnx), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ProvisionError(f"{rec_onnx} has no 'character' metadata")
    chars = meta["character"].splitlines()  # same split RapidOCR uses (infer_engine.get_character_list)
    if len(chars) != DICT_LINES or any(len(c) == 0 or "\n" in c for c in chars):
        raise ProvisionError(f"dictionary has {len(chars)} entries, expected {DICT_LINES} non-empty lines")
    if num_classes != len(chars) + 2:
        raise ProvisionError(f"rec has {num_classes} classes, expected blank + {len(chars)} + space")
    path = out / DICT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(chars) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def toml_list(xs) -> str:
    return "[" + ", ".join(toml_str(x) if isinstance(x, str) else repr(x) for x in xs) + "]"


def write_manifest(key: str, out: Path, pt_sha: str, mean, std) -> Path:
    spec = MODELS[key]
    lines = [
        "# generated by models/provision_ocr.py -- do not edit",
        f"name = {toml_str(spec['name'])}",
        f"task = {toml_str(spec['task'])}",
        f"file = {toml_str(spec['file'])}",
        f"sha256 = {toml_str(pt_sha)}",
        f"vram_estimate_bytes = {spec['vram_estimate_bytes']}",
        f"source = {toml_str(source_string(spec))}",
        "",
        "[input]",
        f"shape = {toml_list(spec['shape'])}",
        'dtype = "float32"',
        'color = "BGR"',
        f"mean = {toml_list(mean)}",
        f"std = {toml_list(std)}",
    ]
    if spec["stride"]:
        lines.append(f"stride = {spec['stride']}")
    if spec["height"]:
        lines.append(f"height = {spec['height']}")
    lines += ["", "[labels]"]
    if spec["task"] == "text-recognize":
        lines.append(f"dictionary = {toml_str(DICT_FILE)}")
    if "classes" in spec:
        lines.append(f"classes = {toml_list(spec['classes'])}")
    path = out / f"{spec['name']}.toml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def det_normalisation(models_dir: Path):
    """Det mean/std exactly as RapidOCR 1.4.4 configures them (config.yaml, Det section)."""
    import yaml

    cfg = yaml.safe_load((models_dir.parent / "config.yaml").read_text())
    mean = [float(v) for v in cfg["Det"].get("mean", HALF)]
    std = [float(v) for v in cfg["Det"].get("std", HALF)]
    return mean, std


def provision(out: Path) -> None:
    t_all = time.perf_counter()
    sources = check_sources()
    print(f"sources: {PACKAGE_DIST}=={PACKAGE_VERSION}, sha256 ok for " + ", ".join(p.name for p in sources.values()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)  # invalidate first: a crash mid-way never looks up to date

    import torch

    # torch 2.11 marks torch.jit.* deprecated in Python; libtorch's torch::jit::load (tch) is the consumer.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    patch_onnx2torch()
    det_mean, det_std = det_normalisation(sources["det"].parent)
    norms = {"det": (det_mean, det_std), "rec": (HALF, HALF), "cls": (HALF, HALF)}

    outputs, report = {}, {}
    for key, spec in MODELS.items():
        pt = out / spec["file"]
        try:
            info = convert(key, sources[key], pt)
            t = time.perf_counter()
            info["max_abs_diff"] = verify(key, sources[key], pt)
            info["verify_s"] = time.perf_counter() - t
        except BaseException:
            # never leave an unverified model (or a manifest pointing at one) behind
            pt.unlink(missing_ok=True)
            (out / f"{spec['name']}.toml").unlink(missing_ok=True)
            raise
        sha = sha256_file(pt)
        write_manifest(key, out, sha, *norms[key])
        outputs[spec["file"]] = sha
        report[key] = info

    import onnx

    rec_out = onnx.load(str(sources["rec"])).graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    d = write_dictionary(sources["rec"], out, rec_out)
    outputs[DICT_FILE] = sha256_file(d)

    stamp = {
        "converter_sha256": converter_sha256(),
        "package": f"{PACKAGE_DIST}=={PACKAGE_VERSION}",
        "sources": {MODELS[k]["onnx"]: MODELS[k]["onnx_sha256"] for k in MODELS},
        "outputs": outputs,
        "torch": torch.__version__,
        "report": report,
    }
    tmp = out / (STAMP + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(tmp, out / STAMP)
    total = time.perf_counter() - t_all
    print(f"provisioned {len(MODELS)} OCR models into {out} in {total:.1f}s "
          f"(worst max|diff| {max(r['max_abs_diff'] for r in report.values()):.2e})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="convert even if up to date")
    ap.add_argument("--check", action="store_true", help="only check; exit 0 if up to date, 3 if not")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs diff vs onnxruntime (default %(default)g)")
    args = ap.parse_args()
    globals()["TOLERANCE"] = args.tolerance
    out = args.out.resolve()
    try:
        if not args.force:
            ok, why = up_to_date(out)
            if ok:
                print(f"OCR models up to date in {out}")
                return 0
            print(f"OCR models need provisioning: {why}", flush=True)
            if args.check:
                return 3
        provision(out)
        return 0
    except ProvisionError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
