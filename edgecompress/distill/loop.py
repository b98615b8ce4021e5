"""The training loop. Today it trains with hard labels; distillation losses plug into
it (issue: distillation) without a second loop."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    augment_shift: int = 2  # random translation in pixels; 0 turns augmentation off
    progress: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_top1: float = 0.0


def _shift(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    """Random translation with zero fill: cheap augmentation that keeps labels valid."""
    if pixels == 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def evaluate_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Run the model on float32 inputs in eval mode and return logits."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            outs.append(model(torch.from_numpy(inputs[i : i + batch_size])).float().numpy())
    return np.concatenate(outs)


def train_classifier(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train with SGD + cosine LR and cross-entropy; keep the best weights on val top-1."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = TensorDataset(torch.from_numpy(train[0]), torch.from_numpy(train[1]).long())
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    steps = max(1, cfg.epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    loss_fn = nn.CrossEntropyLoss()
    result, best_state = TrainResult(), None
    for epoch in range(cfg.epochs):
        model.train()
        total, n = 0.0, 0
        # A live bar on a terminal; in logs and CI one line per epoch instead.
        live = cfg.progress and sys.stderr.isatty()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not live, leave=False)
        for x, y in bar:
            loss = loss_fn(model(_shift(x, cfg.augment_shift, gen)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
            bar.set_postfix(loss=f"{total / n:.4f}")
        logits = evaluate_logits(model, val[0])
        top1 = float((logits.argmax(1) == val[1]).mean() * 100)
        row = {"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_top1": top1}
        result.history.append(row)
        if cfg.progress and not live:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                f"val top-1 {top1:.2f}%",
                file=sys.stderr,
            )
        if on_epoch:
            on_epoch(epoch, row)
        if top1 >= result.best_val_top1:
            result.best_val_top1 = top1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
