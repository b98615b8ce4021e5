"""INT8 QDQ ONNX from a model: the QAT model with its learned scales, or ONNX Runtime's
post-training quantization of a float model (the baseline). Both go through ONNX
Runtime's own quantizer so Q/DQ pairs sit where its optimiser fuses them into integer
kernels (see ``onnx_qdq``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.attention import is_transformer
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.measure import output_tensors
from edgecompress.quantize.fake import float_copy
from edgecompress.quantize.onnx_qdq import (
    S7_LIMIT,
    int8_weights,
    qat_overrides,
    quantize_qdq,
    weights_to_uint8,
)
from edgecompress.targets import u8s8_saturates


def export_qat_onnx(
    qat: nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    out: Path,
    *,
    symmetric_activations: bool = False,
    weights: str = "auto",
    opset: int = 18,
    min_cosine: float = 0.99,
    float_below: int = 0,
    quantize_bias: bool = True,
) -> Path:
    """The fake-quantized model as INT8 QDQ ONNX: its trained float weights exported,
    then quantized with the scales and zero points QAT learned (``calibration`` only
    fills tensors QAT did not quantize, e.g. the final output).

    ONNX Runtime's quantizer also puts Q/DQ on ops QAT did not simulate (residual adds,
    activations, squeeze-excitation products) so that its integer kernels fuse. Where that
    leaves the file below ``min_cosine`` of the QAT model on the calibration inputs (e.g.
    Hardswish and SE blocks of MobileNetV3 / EfficientNet), a second file quantizes only
    the conv/linear layers QAT quantized, and the one closer to the QAT model is kept (on
    ResNeXt-50 the second alone was the worse and failed the parity gate); a transformer
    gets the second form only."""
    with tempfile.TemporaryDirectory() as tmp:
        fp = Path(tmp) / "qat_fp.onnx"
        # Each weight as its fake-quantized value: the quantizer's rounding then gives
        # QAT's integers exactly, clamped ones too (a 7-bit rung's weights stay 7-bit).
        export_onnx(float_copy(qat, snap=True), example, fp, opset=opset)
        overrides = qat_overrides(fp, qat)
        best: tuple[float, Path] | None = None
        for layers_only in (False, True) if not is_transformer(qat) else (True,):
            candidate = Path(tmp) / f"q_{layers_only}.onnx"
            quantize_qdq(
                fp,
                candidate,
                calibration,
                symmetric_activations=symmetric_activations,
                overrides=overrides,
                weights=weights,
                layers_only=layers_only,
                float_below=float_below,
                quantize_bias=quantize_bias,
            )
            cosine = _cosine(candidate, qat, calibration[:64])
            if best is None or cosine > best[0]:
                best = (cosine, candidate)
            if cosine >= min_cosine:
                break
        assert best is not None
        shutil.move(best[1], out)
    return out


def _cosine(onnx_path: Path, qat: nn.Module, inputs: np.ndarray) -> float:
    """The worst cosine over the model's outputs (one for a classifier, six for a
    detector's head) between the QDQ file and the QAT model."""
    x = inputs.astype(np.float32)
    got = run_onnx(onnx_path, x)
    with torch.no_grad():
        want = [t.numpy() for t in output_tensors(qat.eval()(torch.from_numpy(x)))]
    worst = 1.0
    for g, w in zip(got, want, strict=True):
        a, b = g.ravel().astype(np.float64), w.ravel().astype(np.float64)
        den = float(np.linalg.norm(a) * np.linalg.norm(b))
        worst = min(worst, float(a @ b) / den if den else 0.0)
    return worst


def export_ptq_onnx(
    model: nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    out: Path,
    *,
    method: str = "minmax",
    symmetric_activations: bool = False,
    weights: str = "auto",
    opset: int = 18,
    float_below: int = 0,
    quantize_bias: bool = True,
) -> Path:
    """ONNX Runtime's static post-training INT8 quantization of a float model."""
    with tempfile.TemporaryDirectory() as tmp:
        fp = Path(tmp) / "fp.onnx"
        # Not simplified: ONNX Runtime's pre-processing optimises it for the quantizer,
        # and onnxslim holds several copies of the weights (GBs for a ViT-H/14).
        export_onnx(model, example, fp, opset=opset, simplify=False)
        quantize_qdq(
            fp,
            out,
            calibration,
            method=method,
            symmetric_activations=symmetric_activations,
            weights=weights,
            float_below=float_below,
            quantize_bias=quantize_bias,
        )
    return out


def weight_storage(path: Path) -> str:
    """How a QDQ model stores its weights: int8 (with 7- or 8-bit values) and/or uint8
    with zero point 128, and in how many tensors."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    dq = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    wide = _widest_int8(path)
    parts = []
    if wide is not None:
        n = sum(inits.get(name) == onnx.TensorProto.INT8 for name in dq)
        values = "7-bit values, |q| <= 64" if wide <= S7_LIMIT else "8-bit values"
        parts.append(f"int8 ({values}) in {n} tensors")
    n_u8 = sum(inits.get(name) == onnx.TensorProto.UINT8 for name in dq)  # weights only
    if n_u8:
        parts.append(f"uint8 with zero point 128 in {n_u8} tensors")
    return "; ".join(parts) or "no quantized weights"


def _widest_int8(path: Path) -> int | None:
    """The largest |value| of the file's int8 weights; None when it stores none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))
    q = int8_weights(model)
    return max((int(np.abs(w.astype(np.int16)).max()) for w in q.values() if w.size), default=None)


def run_exact(path: Path, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of a QDQ model as exact integer arithmetic gives them: where this CPU's
    uint8 x int8 kernels saturate and the file holds int8 weights beyond +-64 (a vendor
    toolchain's form, a layer kept at 8 bits), run a copy that stores those as uint8
    (the same values) instead."""
    wide = _widest_int8(path) if u8s8_saturates() else None
    if wide is None or wide <= S7_LIMIT:
        return run_onnx(path, inputs, threads)[0]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copy2(path, copy)
        weights_to_uint8(copy, beyond=S7_LIMIT)
        return run_onnx(copy, inputs, threads)[0]
