"""Convenience entry points over the one training loop (``trainer.fit``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64
    seed: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_top1: float = 0.0


def train_classifier(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
) -> TrainResult:
    """Train from scratch with hard labels only (no teacher): the example model."""
    fit_cfg = FitConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        losses=(LossConfig(name="ce"),),
    )
    res = fit(model, None, train, val, fit_cfg, progress=cfg.progress)
    return TrainResult(res.history, res.best_top1)
