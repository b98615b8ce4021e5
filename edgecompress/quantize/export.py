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

from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.measure import output_tensors
from edgecompress.prune.attention import is_transformer
from edgecompress.quantize.fake import float_copy
from edgecompress.quantize.onnx_qdq import (
    qat_overrides,
    quantize_qdq,
    u8s8_saturates,
    weights_to_uint8,
)


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
        export_onnx(float_copy(qat), example, fp, opset=opset)
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
        )
    return out


def weight_storage(path: Path) -> str:
    """How a QDQ model stores its weights: "int8", or uint8 with zero point 128."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    dq = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    types = {inits[name] for name in dq if name in inits}  # weights, not activations
    if onnx.TensorProto.UINT8 in types:
        return "uint8, zero point 128 (this CPU lacks VNNI: uint8 x int8 kernels saturate)"
    return "int8"


def run_exact(path: Path, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of a QDQ model as exact integer arithmetic gives them: where this CPU's
    uint8 x int8 kernels saturate and the file stores int8 weights (a vendor toolchain's
    form), run a uint8-weight copy (the same values) instead."""
    if not u8s8_saturates() or weight_storage(path) != "int8":
        return run_onnx(path, inputs, threads)[0]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copy2(path, copy)
        weights_to_uint8(copy)
        return run_onnx(copy, inputs, threads)[0]
