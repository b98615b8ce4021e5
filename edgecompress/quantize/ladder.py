"""The bit-width ladder: weights stepped down gradually (e.g. 8 -> 6 -> 4 bits), each rung
starting from the previous one and trained with the distillation loop against the
full-precision model. Every rung's accuracy is kept; a stopped ladder resumes mid-rung."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import memory
from edgecompress.distill.data import Data
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit, validate
from edgecompress.errors import TrainingDivergedError
from edgecompress.io import atomic_write_json
from edgecompress.quantize.config import Rung
from edgecompress.quantize.fake import quantizers, set_weight_bits


@dataclass
class RungResult:
    rung: int
    w_bits: int
    a_bits: int
    val_top1: float
    val_loss: float
    epochs_run: int
    kept_start: bool = False  # training did worse on val than the rung's starting point
    micro_batch: int | None = None  # set where a batch passed the memory budget
    diverged: str = ""  # why training was abandoned (its start kept), if it diverged

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StartPoint:
    """A rung's starting weights, for when training does worse: in the rung's folder
    where it has one (a copy of a large model's weights in memory for the whole rung was
    1.3 GB of ViT-H/14's peak), else in memory."""

    def __init__(self, model: nn.Module, folder: Path | None) -> None:
        self.path = folder / "start.pt" if folder is not None else None
        self.state: dict[str, Any] | None = None
        if self.path is not None:
            torch.save(model.state_dict(), self.path)
        else:
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model: nn.Module) -> None:
        state = self.state if self.path is None else torch.load(self.path, weights_only=True)
        assert state is not None, "restored after drop()"
        model.load_state_dict(state)

    def drop(self) -> None:
        self.state = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def set_rung_bits(model: nn.Module, rung: Rung, keep: Mapping[str, int] | None = None) -> None:
    """Every quantizer of a fake-quantized model to ``rung``'s widths (weights, then
    activations); the layers ``keep`` names keep at least the weight bits it gives them."""
    set_weight_bits(model, rung.w_bits, keep)
    for q in quantizers(model, "a"):
        if q.bits != rung.a_bits:
            q.set_bits(rung.a_bits)


def run_ladder(
    model: nn.Module,
    teacher: nn.Module,
    train: Data,
    val: Data,
    rungs: list[Rung],
    *,
    lr: float = 0.002,
    workdir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    keep: Mapping[str, int] | None = None,
    seed: int = 0,
) -> list[RungResult]:
    """Train ``model`` (already fake-quantized) down the ladder, in place; the layers
    ``keep`` names never go below the weight bits it gives them. ``seed`` sets each
    rung's shuffling and augmentation."""
    results: list[RungResult] = []
    for i, rung in enumerate(rungs, start=1):
        folder = workdir / f"rung{i}_w{rung.w_bits}a{rung.a_bits}" if workdir else None
        done = folder / "done.json" if folder else None
        set_rung_bits(model, rung, keep)
        if resume and done is not None and done.exists():
            assert folder is not None
            model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
            results.append(RungResult(**json.loads(done.read_text())))
            continue
        cfg = FitConfig(
            epochs=max(rung.epochs, 1),
            lr=lr,
            weight_decay=0.0,
            losses=(LossConfig(name="ce"), LossConfig(name="kd")),
            seed=seed,
        )
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        # The rung's starting point (the previous rung's weights at this width: what PTQ
        # at this width would give) competes with the trained epochs on val: a short
        # budget can train a model that is already right into a worse one.
        start = validate(model, val, torch.device("cpu"))
        top1, loss, kept_start, micro = start["val_top1"], start["val_loss"], False, None
        diverged = ""
        if rung.epochs:
            initial = _StartPoint(model, folder)
            try:
                res = fit(
                    model, teacher, train, val, cfg, workdir=folder, resume=resume,
                    progress=progress,
                )  # fmt: skip
            except TrainingDivergedError as exc:  # worse than any start: keep the start
                diverged = str(exc)
                print(f"quantize: rung {i}: {exc}; the rung keeps its start", file=sys.stderr)
                initial.restore(model)
                kept_start = True
            else:
                micro = res.micro_batch
                if res.best_top1 >= top1:
                    top1 = res.best_top1
                    loss = next(
                        r["val_loss"] for r in res.history if r["val_top1"] == res.best_top1
                    )
                else:
                    initial.restore(model)
                    kept_start = True
            initial.drop()
            memory.release()  # the rung's optimizer state and gradients
        result = RungResult(
            i, rung.w_bits, rung.a_bits, top1, loss, rung.epochs, kept_start, micro, diverged
        )
        results.append(result)
        if folder is not None and done is not None:
            torch.save(model.state_dict(), folder / "model.pt")
            atomic_write_json(done, result.to_dict())
    return results
