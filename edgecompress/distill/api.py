"""``ec.distill`` and ``ec.evaluate``: fine-tune a student against a teacher from a
user's own script, with any iterable of (inputs, labels) batches.

    result = ec.distill(student, teacher, train_loader, val_loader,
                        ec.FitConfig(epochs=5, losses=[ec.LossConfig(name="kd")]))
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress.distill.config import FitConfig
from edgecompress.distill.data import Data
from edgecompress.distill.trainer import FitResult, fit, validate


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    train: Data,
    val: Data,
    config: FitConfig | None = None,
    *,
    workdir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``student`` in place with ``config``'s losses against ``teacher`` (frozen);
    the best epoch on ``val`` is kept. ``workdir`` keeps a checkpoint per epoch so that
    ``resume=True`` continues an interrupted run exactly."""
    return fit(
        student,
        teacher,
        train,
        val,
        config or FitConfig(),
        workdir=workdir,
        resume=resume,
        progress=progress,
    )


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """top-1 (%) and cross-entropy of ``model`` on ``data`` (arrays or batches)."""
    row = validate(model, data, torch.device("cpu"))
    return {"top1": row["val_top1"], "loss": row["val_loss"]}


__all__ = ["FitResult", "distill", "evaluate"]
