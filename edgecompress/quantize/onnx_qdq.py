"""INT8 ONNX that really runs as INT8.

Both the PTQ baseline and the QAT export go through ONNX Runtime's own QDQ quantizer, so
Q/DQ pairs sit where its graph optimiser fuses them into integer kernels (QLinearConv,
QGemm...); the QAT export hands it the learned scales and zero points as tensor overrides.
``quant_pre_process`` runs first: on this CPU the same QDQ model ran 3.2x faster than FP32
with it and 0.83x without (DESIGN.md). ``integer_ops`` proves the result by reading the
graph ONNX Runtime actually executes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.targets import static_int8_weights

CALIBRATION = ("minmax", "entropy", "percentile")
# The largest |int8 weight| a uint8 x int8 kernel without VNNI multiplies exactly: its
# int16 pair sums reach 2 x 255 x 64 = 32640 <= 32767.
S7_LIMIT = 64
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearGlobalAveragePool",
        "QLinearMul",
        "QLinearConcat",
    }
)


class _Reader:
    """ORT's CalibrationDataReader protocol over an array of model inputs."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int) -> None:
        self.name, self.inputs, self.batch, self.i = name, inputs, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.inputs):
            return None
        chunk = self.inputs[self.i : self.i + self.batch]
        self.i += self.batch
        return {self.name: chunk}


def quantize_qdq(
    fp_onnx: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    symmetric_activations: bool = False,
    overrides: dict[str, list[dict[str, Any]]] | None = None,
    weights: str = "auto",
    layers_only: bool = False,
    float_below: int = 0,
    quantize_bias: bool = True,
) -> Path:
    """Static QDQ quantization (per-channel int8 weights; uint8 or int8 activations).

    ``quantize_bias``: biases as int32 behind a DequantizeLinear (ONNX Runtime's integer
    kernels take them so); False keeps them float, as TensorRT's explicit quantization
    wants (its parser takes int8 Q/DQ only).

    ``layers_only``: quantize the inputs and weights of convs and weight MatMuls/Gemms and
    nothing else (no residual Add, LayerNorm, Softmax, nor attention's ``q @ k`` and
    ``attn @ v``, nor a Gemm's or MatMul's output), which is what a QAT model of a
    transformer simulated; a CNN keeps ONNX Runtime's wider choice, whose fused integer
    kernels it was measured with.

    ``weights``: how the file stores them (``TargetProfile.int8_weights``): "s8", "u8"
    (the same int8 values stored as uint8 with zero point 128: exact), "s7" (int8 holding
    7-bit values: ONNX Runtime's ``reduce_range`` for weights it computes, QAT's own
    7-bit values where ``overrides`` carry them; any weight still beyond +-64, a layer
    QAT kept at 8 bits, is stored as uint8 so that nothing saturates), or "auto" (this
    CPU's static rule, :func:`edgecompress.targets.static_int8_weights`).

    ``float_below``: convs and weight MatMuls/Gemms with fewer input channels stay float
    (a first layer on 3 channels, where the CPU's INT8 kernel is slower than FP32).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if weights not in ("s8", "u8", "s7", "auto"):
        raise EdgeCompressError(f"quantize: weights must be s8, u8, s7 or auto, not {weights!r}")
    if weights == "auto":
        weights = static_int8_weights()
    if method not in CALIBRATION:
        raise EdgeCompressError(
            f"quantize: unknown calibration {method!r}; known: {', '.join(CALIBRATION)}"
        )
    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    from edgecompress.exporters.onnx_shapes import PROTOBUF_LIMIT, onnx_size_bytes, save_onnx

    # Past protobuf's 2 GiB (ViT-H/14's float graph: 2.5 GB) every float model ORT's
    # quantizer writes on the way (pre-processed, calibration-augmented) keeps its
    # weights in a file beside it.
    large = onnx_size_bytes(fp_onnx) >= PROTOBUF_LIMIT
    model = onnx.load(str(fp_onnx), load_external_data=False)
    input_name, batch = (
        model.graph.input[0].name,
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(
            str(fp_onnx),
            str(pre),
            skip_symbolic_shape=True,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            external_data_location="pre.onnx.data",
        )
        q_tmp = Path(tmp) / "q.onnx"
        extra: dict[str, Any] = {
            "ActivationSymmetric": symmetric_activations,
            "WeightSymmetric": True,
            "QuantizeBias": quantize_bias,
            # Keep each ReLU as a node instead of leaving it implicit in the next Q's clamp:
            # rknn-toolkit2 folds a standalone BatchNorm into the conv after it across that
            # clamp (DenseNet's BN -> ReLU -> conv: simulator cosine 0.14 against ONNX
            # Runtime). The Q/DQ this puts before the ReLU goes again below.
            "QDQKeepRemovableActivations": True,
        }
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        excluded = _activation_matmuls(pre) if layers_only else []
        excluded += narrow_layers(pre, float_below)
        ops = ["Conv", "Gemm", "MatMul"] if layers_only else None
        if layers_only:
            # Nor their outputs (QGemm and MatMulIntegerToFloat give float): QAT quantized
            # inputs and weights only. A Swin V2's cosine attention multiplies the
            # rounding of quantized q and k by up to 100: 0.959 -> 0.9997 to its QAT model.
            # A conv keeps its output Q/DQ: without it ONNX Runtime runs it in float.
            extra["OpTypesToExcludeOutputQuantization"] = ["Gemm", "MatMul"]
        quantize_static(
            str(pre),
            str(q_tmp),
            _Reader(input_name, calibration.astype(np.float32), batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            calibrate_method=calib_method,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=weights == "s7",
            nodes_to_exclude=excluded,
            op_types_to_quantize=ops,
            extra_options=extra,
            use_external_data_format=large,
        )
        quantized = onnx.load(str(q_tmp))  # its weights too, where they are beside it
        drop_qdq_before_activations(quantized)
        if weights != "s8":  # u8: every weight; s7: those past 7 bits (kept layers)
            _weights_to_uint8(quantized, beyond=0 if weights == "u8" else S7_LIMIT)
        save_onnx(quantized, out)  # int8 weights: one file again unless still past 2 GiB
    return out


def narrow_layers(path: Path, below: int) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes whose weight has fewer than ``below`` input
    channels (a conv's per-group channels times its groups)."""
    import onnx

    if below <= 1:
        return []
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    found = []
    for n in graph.node:
        w = dims.get(n.input[1]) if len(n.input) > 1 else None
        if w is None or n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if n.op_type == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            c_in = w[1] * group
        elif n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
            c_in = w[1]
        else:
            c_in = w[0]
        if c_in < below:
            found.append(n.name)
    return found


def _activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is not a weight (an initializer)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def drop_qdq_before_activations(model: Any) -> bool:
    """``x -> Q -> DQ -> Relu/Clip -> Q -> DQ`` becomes ``x -> Relu/Clip -> Q -> DQ``.

    The first pair quantizes the pre-activation tensor, which neither the QAT model nor a
    fused conv+ReLU kernel does: it only adds error (half its levels are negative). What is
    left is the form TensorRT and rknn-toolkit2 expect, and what ONNX Runtime computes when
    it leaves the ReLU implicit in the Q's clamp (its optimiser fuses Relu -> Q again).
    In place; whether it changed ``model``."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Counter[str] = Counter(i for n in graph.node for i in n.input)
    outputs = {o.name for o in graph.output}
    dropped: list[Any] = []
    for node in graph.node:
        if node.op_type not in ("Relu", "Clip"):
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None else None
        if (
            dq is None
            or q is None
            or dq.op_type != "DequantizeLinear"
            or q.op_type != "QuantizeLinear"
            or consumers[dq.output[0]] != 1
            or consumers[q.output[0]] != 1
            or {dq.output[0], q.output[0]} & outputs
        ):
            continue
        node.input[0] = q.input[0]
        dropped += [q, dq]
    for n in dropped:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return bool(dropped)


def weights_to_uint8(path: Path, beyond: int = 0) -> None:
    """Store the int8 weights of DequantizeLinears as uint8 = int8 + 128, zero point
    + 128 (those with some |value| > ``beyond``): the dequantized values are identical,
    the integer kernels differ."""
    import onnx

    model = onnx.load(str(path))
    _weights_to_uint8(model, beyond)
    onnx.save(model, str(path))


def int8_weights(model: Any) -> dict[str, np.ndarray]:
    """The int8 weight initializers that DequantizeLinears read, by name."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    names = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {
        name: numpy_helper.to_array(inits[name])
        for name in dict.fromkeys(names)
        if name in inits and inits[name].data_type == onnx.TensorProto.INT8
    }


def _weights_to_uint8(model: Any, beyond: int = 0) -> None:
    """:func:`weights_to_uint8` on a loaded model."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    q8 = int8_weights(model)
    wide = {n for n, q in q8.items() if q.size and np.abs(q.astype(np.int16)).max() > beyond}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in wide:
            continue
        w, zp = inits[node.input[0]], inits.get(node.input[2])
        if zp is None or w.data_type != onnx.TensorProto.INT8:
            continue  # no zero point to move, or stored as uint8 already (a shared weight)
        for init in (w, zp):
            shifted = numpy_helper.to_array(init).astype(np.int16) + 128
            init.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), init.name))


def integer_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime executes after its optimisations."""
    import onnx
    import onnxruntime as ort

    from edgecompress.exporters.onnx_shapes import external_data_path

    with tempfile.TemporaryDirectory() as tmp:
        opt_path = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(opt_path)
        opts.log_severity_level = 3
        if external_data_path(path).exists():  # the optimised copy may be as large
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
            )
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(opt_path), load_external_data=False).graph
        return dict(Counter(n.op_type for n in graph.node))


def runs_in_integer(ops: dict[str, int], float_layers: int = 0) -> bool:
    """True when convolutions/matmuls execute as integer kernels: no float Conv/Gemm left
    beyond the ``float_layers`` kept float on purpose (``quantize_qdq``'s ``float_below``)."""
    integer = sum(v for k, v in ops.items() if k in INTEGER_OPS)
    floating = sum(ops.get(k, 0) for k in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"))
    return integer > 0 and floating <= float_layers


def qat_overrides(fp_onnx: Path, model: Any) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides carrying a QAT model's learned scales: per-channel weight scales
    for each conv/linear initializer and the input activation's scale and zero point.

    A layer's weight is found by name (``layer.weight``), else by value: the exporter and
    onnxslim rename and transpose Linear weights (a 3-D input's Linear becomes Reshape ->
    Gemm on ``val_17_weight``); matched by name only, a Swin V2's INT8 file took ONNX
    Runtime's own scales for 147 of its 149 layers (cosine 0.958 to the QAT model). The
    per-channel axis is where the output channels lie in the stored weight."""
    import onnx
    import torch

    from edgecompress.quantize.fake import QuantWrapper

    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
    by_name = {f"{n}.weight": m for n, m in wrappers.items()}
    by_shape: dict[tuple[int, ...], list[tuple[QuantWrapper, np.ndarray]]] = {}
    for m in wrappers.values():
        w = m.layer.weight.detach().cpu().numpy()
        by_shape.setdefault(w.shape, []).append((m, w))
    graph = onnx.load(str(fp_onnx), load_external_data=False).graph
    inits = {i.name: i for i in graph.initializer}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        found = _layer_for(node.input[1], inits, by_name, by_shape, fp_onnx.parent)
        if found is None:
            continue
        w, axis = found
        with torch.no_grad():
            ws = w.w_quant.effective_scale().numpy().astype(np.float32)
            a_s = w.a_quant.effective_scale().numpy().astype(np.float32)
            a_z = w.a_quant.zero_point.detach().numpy()
        # ORT takes per-channel overrides as one dict per channel (the axis in each).
        out[node.input[1]] = [
            {"axis": axis, "scale": np.float32(s), "zero_point": np.int8(0)} for s in ws
        ]
        zp_type = np.int8 if w.a_quant.signed else np.uint8
        out[node.input[0]] = [
            {"scale": a_s.reshape(()), "zero_point": a_z.astype(zp_type).reshape(())}
        ]
    if not out:
        raise EdgeCompressError(f"{fp_onnx}: no conv/linear weight matched the QAT model's layers")
    return out


def _layer_for(
    name: str,
    inits: dict[str, Any],
    by_name: dict[str, Any],
    by_shape: dict[tuple[int, ...], list[tuple[Any, np.ndarray]]],
    base_dir: Path,
) -> tuple[Any, int] | None:
    """The QAT layer whose weight the initializer ``name`` holds, and the axis of its
    output channels there (0 as stored by torch; 1 where it was transposed)."""
    import torch
    from onnx import numpy_helper

    if name in by_name:
        return by_name[name], 0
    init = inits.get(name)
    if init is None:
        return None
    shape = tuple(init.dims)
    candidates = [(m, w, 0) for m, w in by_shape.get(shape, [])]
    if len(shape) == 2:
        candidates += [(m, w.T, 1) for m, w in by_shape.get(shape[::-1], [])]
    if not candidates:
        return None
    stored = numpy_helper.to_array(init, base_dir=str(base_dir))
    for m, w, axis in candidates:
        if stored.dtype == w.dtype and np.array_equal(stored, w):
            return m, axis
    for m, _, axis in candidates:  # exported snapped to its grid (``float_copy(snap=True)``)
        with torch.no_grad():
            snapped = m.w_quant(m.layer.weight).cpu().numpy()
        if np.array_equal(stored, snapped if axis == 0 else snapped.T):
            return m, axis
    return None
