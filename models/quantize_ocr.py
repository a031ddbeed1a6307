"""Static int8 post-training quantization of the OCR models, for the CPU.

FX graph mode (`prepare_fx` / `convert_fx`, the x86 (fbgemm) qconfig mapping) on the
same onnx2torch GraphModule models/provision_ocr.py traces for fp32, calibrated on real
inputs preprocessed as the OCR service feeds them (services/ocr/src/text.rs, detect.rs):

- calibration: pages 36-39 of tests/pages (the tag beside each symbol, cut as
  tests/ocr/make_reference.py cuts the 36 test crops from pages 0-2; for the angle
  classifier every fifth turned 180 degrees, the recognizer reads them upright as the
  service hands them over; the text detector sees the whole pages), never the pages
  the accuracy is measured on;
- text detection: BGR, (x/255 - 0.5)/0.5, short side brought up to 736, sides to
  multiples of 32 (the test pages, 1600x1200, need none of the page-level resizing); recognition: height 48, width by aspect ratio, zero-padded to
  max(320, the batch's widest), batches of 6 sorted by ratio; angle: the same into 48x192.

Quantized: convolutions, hardswish/hardsigmoid, pooling, the scalar affine after each
activation and the recognizer's constant MatMuls (both rewritten first, see
`scalar_affine_as_ops`, `matmul_as_linear`). Left in float: the detector's two
ConvTranspose2d and first blocks (see `qconfig_mapping`, FLOAT_LAYERS), and by
construction every other onnx2torch module (the
recognizer's attention MatMul/Softmax/LayerNorm arithmetic, the SE blocks' elementwise
products, shape ops), which FX treats as opaque calls with dequantize/quantize around
them. The outputs are dequantized: the service sees f32 as from the fp32 model.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "tests" / "pages"
CALIBRATION_PAGES = range(36, 40)
TAGS_PER_PAGE = 12
PAD = 4  # as tests/ocr/make_reference.py pads the tag boxes
DET_LIMIT_SIDE = 736
REC_HEIGHT, REC_MIN_WIDTH, CLS_WIDTH, BATCH = 48, 320, 192, 6
KEYS = {"text-detect": "det", "text-recognize": "rec", "text-angle": "cls"}


def bgr_normalised(image, width: int, height: int, pad_to: int | None = None):
    """[1, 3, height, pad_to or width]: BGR planes (x/255 - 0.5)/0.5, zero on the right."""
    import numpy as np
    import torch
    from PIL import Image

    array = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32)[:, :, ::-1]
    planes = torch.from_numpy(((array / 255 - 0.5) / 0.5).copy()).permute(2, 0, 1)
    out = torch.zeros(1, 3, height, pad_to or width)
    out[0, :, :, :width] = planes
    return out


def det_input(image):
    """The DB detector's input (detect.rs `det_input`): short side up to 736, x32 sides."""
    w, h = image.size
    ratio = DET_LIMIT_SIDE / min(w, h) if min(w, h) < DET_LIMIT_SIDE else 1.0
    side = lambda v: int(round(int(v * ratio) / 32) * 32)  # noqa: E731  (Python rounds half to even, as detect.rs)
    return bgr_normalised(image, side(w), side(h))


def crop_batches(crops: list, width_of) -> list:
    """The service's batches (text.rs): sorted by aspect ratio, 6 at a time."""
    import torch

    crops = sorted(crops, key=lambda c: c.width / c.height)
    batches = []
    for start in range(0, len(crops), BATCH):
        group = crops[start : start + BATCH]
        width = width_of(group)
        rows = []
        for crop in group:
            wanted = min(width, max(1, math.ceil(REC_HEIGHT * crop.width / crop.height)))
            rows.append(bgr_normalised(crop, wanted, REC_HEIGHT, width))
        batches.append(torch.cat(rows))
    return batches


def rec_batches(crops: list) -> list:
    widest = lambda g: int(REC_HEIGHT * max([REC_MIN_WIDTH / REC_HEIGHT] + [c.width / c.height for c in g]))  # noqa: E731
    return crop_batches(crops, widest)


def cls_batches(crops: list) -> list:
    return crop_batches(crops, lambda _: CLS_WIDTH)


def page_tags(pages, turn: bool) -> tuple[list, list, list]:
    """The pages, their tag crops and the tags' true text; with `turn`, every fifth crop turned 180 degrees
    (the angle classifier's input; the recognizer sees crops the right way up)."""
    from PIL import Image

    images, crops, tags = [], [], []
    for index in pages:
        stem = PAGES / f"page_{index:04d}"
        page = Image.open(stem.with_suffix(".png")).convert("RGB")
        images.append(page)
        symbols = json.loads(stem.with_suffix(".json").read_text())["symbols"][:TAGS_PER_PAGE]
        for number, symbol in enumerate(symbols):
            x0, y0, x1, y1 = symbol["tag_box"]
            box = (max(0, x0 - PAD), max(0, y0 - PAD), min(page.width, x1 + PAD), min(page.height, y1 + PAD))
            crop = page.crop(box)
            crops.append(crop.rotate(180) if turn and number % 5 == 4 else crop)
            tags.append(symbol["tag"])
    return images, crops, tags


def inputs(task: str, pages) -> list:
    """Model inputs of `task` made from `pages`, as the service makes them."""
    return labelled_inputs(task, pages)[0]


def labelled_inputs(task: str, pages) -> tuple[list, list]:
    """`inputs`, and for the recognizer the true text of each row, batch by batch."""
    images, crops, tags = page_tags(pages, turn=task == "text-angle")
    if task == "text-detect":
        return [det_input(image) for image in images], []
    if task == "text-recognize":
        order = sorted(range(len(crops)), key=lambda i: crops[i].width / crops[i].height)
        truth = [tags[i] for i in order]
        return rec_batches(crops), [truth[i : i + BATCH] for i in range(0, len(truth), BATCH)]
    return cls_batches(crops), []


def float_graph(task: str):
    """The fp32 onnx2torch GraphModule of provision_ocr (fused, before channels_last)."""
    import provision_ocr as P
    from onnx2torch import convert as o2t_convert

    key = KEYS[task]
    if not getattr(P, "_patched", False):
        P.patch_onnx2torch()
        P._patched = True
    source = P.check_sources()[key]
    model, _ = P.prepare_onnx(source, P.MODELS[key]["shape_infer"])
    fx = o2t_convert(model).eval()
    P.optimize_graph(fx)
    scalar_affine_as_ops(fx)
    matmul_as_linear(fx)
    return fx


def attribute(fx, node):
    """The tensor a get_attr node reads, else None."""
    if not hasattr(node, "op") or node.op != "get_attr":
        return None
    value = fx
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def matmul_as_linear(fx) -> int:
    """onnx2torch's MatMul by a constant [in, out] weight (+ a constant [out] bias) ->
    nn.Linear, exactly: the recognizer's SVTR projections and its CTC head (120 x 6625,
    most of its weights) then quantize; an opaque MatMul would stay float."""
    import torch
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.matmul import OnnxMatMul

    modules = dict(fx.named_modules())
    rewritten = 0
    for node in list(fx.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], OnnxMatMul):
            continue
        x, w = node.args
        weight = attribute(fx, w)
        if weight is None or weight.dim() != 2:
            continue
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        linear.weight = torch.nn.Parameter(weight.t().contiguous())
        result = node
        user = next(iter(node.users)) if len(node.users) == 1 else None
        add = modules.get(user.target) if user is not None and user.op == "call_module" else None
        if isinstance(add, OnnxBinaryMathOperation) and add.math_op_function is torch.add:
            other = user.args[1] if user.args[0] is node else user.args[0]
            bias = attribute(fx, other)
            if bias is not None and tuple(bias.shape) == (weight.shape[1],):
                linear.bias = torch.nn.Parameter(bias.clone())
                result = user
        name = f"linear_{rewritten}"
        fx.add_module(name, linear)
        with fx.graph.inserting_before(node):
            new = fx.graph.call_module(name, (x,))
        result.replace_all_uses_with(new)
        if result is not node:
            fx.graph.erase_node(result)
        fx.graph.erase_node(node)
        rewritten += 1
    fx.graph.eliminate_dead_code()
    fx.recompile()
    return rewritten


def scalar_affine_as_ops(fx) -> int:
    """`addcmul(b, x, s)` with scalar b and s (PP-LCNet's learnable affine after each
    activation, left by optimize_graph) -> `x * s + b` with Python floats: quantized
    mul/add by a scalar exist, addcmul has none, and each float op between quantized
    convolutions costs a dequantize and a quantize of the whole activation."""
    import torch

    def scalar(node):
        value = attribute(fx, node)
        return float(value.reshape(())) if value is not None and value.numel() == 1 else None

    rewritten = 0
    for node in list(fx.graph.nodes):
        if node.op != "call_function" or node.target is not torch.addcmul or len(node.args) != 3:
            continue
        bias, x, scale = node.args
        b, s = scalar(bias), scalar(scale)
        if b is None or s is None:
            continue
        with fx.graph.inserting_before(node):
            product = fx.graph.call_function(torch.mul, (x, s))
            total = fx.graph.call_function(torch.add, (product, b))
        node.replace_all_uses_with(total)
        fx.graph.erase_node(node)
        rewritten += 1
    fx.graph.eliminate_dead_code()
    fx.recompile()
    return rewritten


# Convolutions kept in float, found by quantizing one layer at a time (calibrated on
# page 36, output on page 0 at 608x800): each of these alone moves the detector's map by
# 20-50% and its text-pixel IoU with fp32 to 0.70-0.91, the other layers by <= 15%.
# They are the backbone's first blocks (a 1x1 conv with outputs up to ~140 next to
# channels near 0 and its depthwise neighbours), at the highest resolution.
# Keeping them float takes the whole model's text-pixel IoU from 0.85 to ~0.89 on
# pages 0-2. The recognizer's early blocks look alike one at a time, but keeping them
# float did not help it as a whole (its step agreement fell from 96.7% to 95.4%).
FLOAT_LAYERS: dict[str, tuple[str, ...]] = {
    "text-detect": tuple(f"p2o/Conv/{i}" for i in (1, 2, 3, 6)),
}


def qconfig_mapping(task: str = "", float_layers=None):
    """x86's choices (histogram-calibrated activations, symmetric per-channel weights)
    with the changes measured on these models (calibration pages, binarised text map /
    arg-max agreement with fp32 on pages 0-2):

    - activations use all 8 bits (`reduce_range=False`): text-pixel IoU with fp32 0.76
      against 0.65 with 7 bits (page 0 at 608x800), recognizer steps 98% against 96%.
      fbgemm's 7-bit default guards against 16-bit saturation on CPUs without VNNI; on
      those expect lower agreement.
    - ConvTranspose2d stays float: its per-channel weights are refused by `prepare_fx`,
      and with x86's per-tensor default the detector's map was lost (text-pixel IoU
      0.015, with 7-bit activations).
    """
    import torch
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

    # The recognizer keeps its activations' whole range: clipping outliers as the
    # histogram does loses the thin strokes of "-" (31 of 36 test crops read as fp32 reads
    # them with the histogram, 33 with min/max); the detector is better with the
    # histogram (text-pixel IoU 0.74 against 0.71).
    observer = MinMaxObserver if task == "text-recognize" else HistogramObserver
    qconfig = QConfig(
        activation=observer.with_args(reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    mapping = QConfigMapping().set_global(qconfig).set_object_type(torch.nn.ConvTranspose2d, None)
    for name in FLOAT_LAYERS.get(task, ()) if float_layers is None else float_layers:
        mapping.set_module_name(name, None)
    return mapping


def quantize(task: str, float_layers=None):
    """The traced int8 module of `task`'s OCR model, calibrated on CALIBRATION_PAGES,
    and the number of calibration batches."""
    import torch
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"  # libtorch's default on x86, as the engine runs it
    fx = float_graph(task)
    calibration = inputs(task, CALIBRATION_PAGES)
    mapping = qconfig_mapping(task, float_layers)
    # onnx2torch's own modules hold shape logic FX cannot trace through: keep them whole.
    opaque = sorted(
        {type(m) for m in fx.modules() if type(m).__module__.startswith(("onnx2torch", "provision_ocr"))},
        key=lambda cls: cls.__name__,
    )
    custom = PrepareCustomConfig().set_non_traceable_module_classes(opaque)
    with warnings.catch_warnings():
        # torch 2.11 announces FX quantization's move to torchao on every call
        warnings.simplefilter("ignore")
        prepared = prepare_fx(fx, mapping, (calibration[0],), prepare_custom_config=custom)
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        quantized = convert_fx(prepared)
        with torch.no_grad():
            traced = torch.jit.trace(quantized, (calibration[0],), check_trace=False)
    return traced, len(calibration)
