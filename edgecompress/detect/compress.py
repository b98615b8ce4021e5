"""Pruning and quantization-aware training for detectors, on the classifier machinery.

- :func:`prune_detector`: ``ec.prune`` on the detector. Every layer whose result the model
  returns (the six head convolutions: DFL bins, class logits) is found and never pruned,
  so the decoder keeps reading the layout it expects; the concatenations of the C2f
  blocks and the PAN neck are followed by Torch-Pruning's dependency graph.
- :func:`prepare_detector_qat`: BN folded, every convolution fake-quantized, activation
  ranges from letterboxed training images.
- :func:`quantize_detector`: QAT down a ladder of weight widths with the detection loss
  and, given a teacher, the response distillation of its head (FGD's feature terms read
  the neck by a hook on ``model.neck``, which the folded, traced QAT model never calls),
  the last
  convolution of every head branch (:data:`HEAD_LAST`) kept at ``keep_bits``: those layers
  write the box bins and class logits that the NumPy decoder reads directly.
- :func:`export_detector_qdq`: the QAT model as an INT8 QDQ ONNX file with the scales QAT
  learned, which ONNX Runtime runs in integer kernels and rknn-toolkit2 converts as it is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgecompress.detect.data import DetectionSet
from edgecompress.detect.deploy import calibration_inputs
from edgecompress.detect.distill import RESPONSE_ONLY
from edgecompress.detect.model import YoloDetector
from edgecompress.detect.train import (
    DetectorTrainConfig,
    evaluate_detector,
    train_detector,
)
from edgecompress.errors import ConfigError
from edgecompress.exporters.qdq import export_qat_onnx
from edgecompress.prune.api import PrunePlan, prune
from edgecompress.quantize.config import Rung
from edgecompress.quantize.fake import prepare_qat
from edgecompress.quantize.ladder import set_rung_bits
from edgecompress.quantize.mixed import keep_map

HEAD_LAST = ("head.box.*.2", "head.cls.*.2")  # each head branch's last convolution
_SPEC = ("num_classes", "reg_max", "strides")  # what decoding and the loss read


def prune_detector(
    model: nn.Module,
    size: int,
    *,
    keep: float = 0.58,
    align: int | None = 8,
    criterion: str = "l1",
    allocation: str = "global",
    ignore: tuple[str, ...] = (),
    progress: bool = True,
) -> tuple[nn.Module, PrunePlan]:
    """Remove whole channels until the detector keeps ``keep`` of its MACs at ``size`` x
    ``size``; the head's output convolutions are never pruned. Returns a new module
    (``model`` is left as it was) with the detector's decoding attributes, and the plan."""
    pruned, plan = prune(
        model,
        torch.zeros(1, 3, size, size),
        keep=keep,
        criterion=criterion,
        allocation=allocation,
        align=align,
        ignore=ignore,
        progress=progress,
    )
    _carry_spec(model, pruned)
    return pruned, plan


def prepare_detector_qat(
    model: nn.Module, calibration: np.ndarray, *, w_bits: int = 8, a_bits: int = 8
) -> nn.Module:
    """A fake-quantized copy of the detector (BN folded; weights per channel, activations
    per tensor, ranges from ``calibration`` as :func:`calibration_inputs` gives it)."""
    if calibration.ndim != 4 or not len(calibration):
        raise ConfigError(
            "prepare_detector_qat: calibration must be letterboxed images (N, 3, S, S); "
            f"got shape {calibration.shape}"
        )
    x = torch.from_numpy(calibration)
    batches = list(torch.split(x, 16))
    qat = prepare_qat(model, x[:1], w_bits, a_bits, calibration=batches)
    _carry_spec(model, qat)
    return qat


def _carry_spec(source: nn.Module, target: nn.Module) -> None:
    """The decoding attributes (classes, DFL bins, strides) of ``source`` on ``target``:
    a traced or folded copy loses a module's plain attributes."""
    missing = [a for a in _SPEC if not hasattr(source, a)]
    if missing:
        raise ConfigError(
            f"{type(source).__name__} is not a YOLO-style detector this tool can train: it "
            f"lacks {', '.join(missing)} (see edgecompress.detect.model.YoloDetector)"
        )
    for a in _SPEC:
        setattr(target, a, getattr(source, a))


@dataclass
class QuantizedDetector:
    """The QAT model after its last rung, what each rung reached on val, the layers kept
    at higher precision and the weight sensitivities measured (if any)."""

    model: nn.Module
    rungs: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)


def quantize_detector(
    model: nn.Module,
    train_set: DetectionSet,
    val_set: DetectionSet,
    *,
    rungs: tuple[Rung, ...] = (Rung(w_bits=8, a_bits=8, epochs=3),),
    keep: tuple[str, ...] = HEAD_LAST,
    keep_bits: int = 8,
    train: DetectorTrainConfig | None = None,
    teacher: YoloDetector | None = None,
    calibration_images: int = 64,
) -> QuantizedDetector:
    """QAT of a detector down ``rungs`` (e.g. 8 -> 6 -> 4 bits of weights), each rung
    trained by :func:`~edgecompress.detect.train.train_detector` (its best val epoch kept)
    at ``train``'s settings, the layers ``keep`` names at ``keep_bits``; with ``teacher``,
    its head's outputs are distilled into every rung (:data:`RESPONSE_ONLY`). ``model`` is
    left as it was."""
    cfg = train or DetectorTrainConfig(lr=2e-4, warmup_epochs=0.0, ema=0.0)
    calib = calibration_inputs(train_set, cfg.size, calibration_images)
    qat = prepare_detector_qat(model, calib, w_bits=rungs[0].w_bits, a_bits=rungs[0].a_bits)
    lowest = min(r.w_bits for r in rungs)
    kept, _ = keep_map(qat, keep, bits=lowest, keep_bits=keep_bits)
    result = QuantizedDetector(qat, kept=kept)
    for i, rung in enumerate(rungs, start=1):
        set_rung_bits(qat, rung, kept)
        row: dict[str, Any] = {"rung": i, "w_bits": rung.w_bits, "a_bits": rung.a_bits}
        if rung.epochs:
            run = replace(cfg, epochs=rung.epochs)
            res = train_detector(
                cast(YoloDetector, qat), train_set, val_set, run, teacher=teacher,
                distill=RESPONSE_ONLY if teacher is not None else None,
            )  # fmt: skip
            assert res.best_val is not None
            row.update({k: v for k, v in res.history[-1].items() if k.startswith("kd_")})
            row.update(
                epochs=rung.epochs,
                best_epoch=res.best_epoch,
                val_map50=res.best_val.map50,
                val_map50_95=res.best_val.map50_95,
            )
        else:
            val = evaluate_detector(qat, val_set, cfg.size, cfg.post)
            row.update(epochs=0, val_map50=val.map50, val_map50_95=val.map50_95)
        result.rungs.append(row)
    return result


def export_detector_qdq(
    qat: nn.Module, calibration: DetectionSet, size: int, out: Path | str, *, limit: int = 64
) -> Path:
    """The QAT detector as INT8 QDQ ONNX (batch 1, ``size`` x ``size``, the six head
    outputs), with the scales QAT learned; ``calibration`` images only fill ranges QAT did
    not simulate (the head outputs). Checked against the QAT model on those images."""
    model = copy.deepcopy(qat).eval()
    calib = calibration_inputs(calibration, size, limit)
    return export_qat_onnx(model, torch.from_numpy(calib[:1]), calib, Path(out))
