"""``ec.prune``: structured pruning to a budget, from a user's own script.

    model, plan = ec.prune(model, example, keep=0.5, criterion="taylor", align=16,
                           data=calibration_loader)
    plan.save("prune_plan.json")           # replay it later with ec.replay_plan

A criterion or allocation that needs data (taylor, apoz, entropy, sensitivity) takes a
few batches from ``data`` (any iterable of (inputs, labels)); ``schedule="iterative"``
prunes in ``steps`` steps with ``recover`` training (the one recovery config) between them,
against the unpruned model as teacher.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress.choices import ALLOCATIONS, CRITERIA
from edgecompress.distill.config import FitConfig, LossConfig
from edgecompress.distill.data import Data, eval_batches
from edgecompress.errors import ConfigError
from edgecompress.io import atomic_write_json
from edgecompress.measure import count_macs
from edgecompress.prune import attention
from edgecompress.prune.allocate import layer_weights, loss_on
from edgecompress.prune.engine import PruneSettings, prune_to_budget, replay, widths
from edgecompress.timing import onnx_latencies_ms, onnx_latency_ms


@dataclass
class PrunePlan:
    """What was cut, replayable on the original model (``replay_plan``)."""

    input_shape: list[int]
    criterion: str
    allocation: str
    round_to: int | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    macs: tuple[float, float] = (0.0, 0.0)  # before, after
    params: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "input_shape": self.input_shape,
            "criterion": self.criterion,
            "allocation": self.allocation,
            "round_to": self.round_to,
            "steps": self.steps,
            "kept": {
                n: {"out": self.widths_after[n], "of": self.widths_before[n]}
                for n in self.widths_before
            },
        }

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())


def replay_plan(model: nn.Module, plan: PrunePlan | Path) -> nn.Module:
    """Apply a saved plan to the original (unpruned) model."""
    doc = plan.to_json() if isinstance(plan, PrunePlan) else json.loads(Path(plan).read_text())
    return replay(model, torch.zeros(doc["input_shape"]), doc["steps"])


def budget_measure(metric: str, example: Tensor, threads: int = 1) -> Callable[[nn.Module], float]:
    """What a budget counts: MACs, parameters, or ONNX Runtime latency on this machine."""
    if metric == "latency":
        return lambda m: onnx_latency_ms(m, example, threads)
    if metric not in ("macs", "params"):
        raise ConfigError(f"prune: metric {metric!r}; one of macs, params, latency")
    index = 0 if metric == "macs" else 1
    return lambda m: count_macs(m, example)[index]


def prune(
    model: nn.Module,
    example: Tensor,
    *,
    keep: float = 0.5,
    metric: str = "macs",
    criterion: str = "l1",
    allocation: str = "global",
    align: int | None = None,
    ignore: tuple[str, ...] = (),
    schedule: str = "one_shot",
    steps: int = 3,
    k: float = 3.0,
    data: Data | None = None,
    calibration_batches: int = 4,
    train: Data | None = None,
    val: Data | None = None,
    recover: FitConfig | None = None,
    threads: int = 1,
    progress: bool = True,
) -> tuple[nn.Module, PrunePlan]:
    """Remove whole channels until ``metric`` is ``keep`` of the original's; returns the
    pruned model (a new module; ``model`` is left as it was) and its plan."""
    CRITERIA.check(criterion, "prune.criterion")
    ALLOCATIONS.check(allocation, "prune.allocation")
    if attention.is_transformer(model):
        attention.check_allocation(allocation)
    batches = _calibration(data, calibration_batches, criterion, allocation)
    measure = budget_measure(metric, example, threads)
    original = model  # each try prunes a copy (prune_once): no copy of the whole model here
    base = measure(model)
    round_to = align if align and align > 1 else None
    settings = PruneSettings(criterion, allocation, round_to, ignore)  # probes align as well
    x_val, y_val = batches[0] if batches else (None, None)
    settings.layer_weights = layer_weights(
        allocation,
        model,
        example,
        settings,
        val_loss=(lambda m: loss_on(m, x_val, y_val))
        if x_val is not None and y_val is not None
        else None,
        latency=lambda ms: onnx_latencies_ms(ms, example, threads),
        batches=batches,
    )
    n = steps if schedule == "iterative" else 1
    if n > 1 and (train is None or val is None):
        raise ConfigError("prune: the iterative schedule trains between steps: give train and val")
    plan: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        removed = (1 - keep) * (1 - (1 - i / n) ** k) if n > 1 else 1 - keep
        keep_now = (1 - removed) * base / measure(model)
        model, cut, frac = prune_to_budget(
            model, example, min(keep_now, 0.999), measure, settings, batches, progress=progress
        )
        if frac > keep_now + 0.02:
            raise ConfigError(
                f"prune: the {allocation} allocation cannot bring the {metric} down to "
                f"{keep_now:.3f} of the model (the closest it reached: {frac:.3f}); try "
                f"{_other_allocation(allocation, model)}, or a smaller align"
            )
        plan += cut
        if i < n:
            from edgecompress.distill.trainer import fit

            fit(model, original, train, val, recover or FitConfig(epochs=1), progress=progress)  # type: ignore[arg-type]
    return model, _plan(original, model, example, plan, criterion, allocation, round_to)


def _other_allocation(allocation: str, model: nn.Module) -> str:
    """What to suggest when ``allocation`` could not reach the budget."""
    if attention.is_transformer(model):
        return "allocation uniform" if allocation == "global" else "allocation global"
    return "allocation global" if allocation != "global" else "a higher keep"


def _calibration(
    data: Data | None, n: int, criterion: str, allocation: str
) -> list[tuple[Tensor, Tensor]] | None:
    needs = CRITERIA.get(criterion).needs_data or ALLOCATIONS.get(allocation).needs_data
    if data is None:
        if needs:
            raise ConfigError(
                f"prune: criterion {criterion!r} / allocation {allocation!r} looks at the "
                "model's activations or gradients: give data (batches of inputs and labels)"
            )
        return None
    return list(itertools.islice(eval_batches(data, 32), n))


def _plan(
    original: nn.Module,
    pruned: nn.Module,
    example: Tensor,
    steps: list[dict[str, Any]],
    criterion: str,
    allocation: str,
    round_to: int | None,
) -> PrunePlan:
    (macs0, params0), (macs1, params1) = count_macs(original, example), count_macs(pruned, example)
    return PrunePlan(
        list(example.shape),
        criterion,
        allocation,
        round_to,
        steps,
        widths(original),
        widths(pruned),
        (macs0, macs1),
        (params0, params1),
    )


def slim(
    model: nn.Module, train: Data, val: Data, *, l1: float, epochs: int = 2, lr: float = 0.01,
    progress: bool = True,
) -> nn.Module:  # fmt: skip
    """Network slimming: train with L1 on BatchNorm scales so that unimportant channels go
    to zero before pruning (``criterion="bn_scale"`` then picks them)."""
    from edgecompress.distill.trainer import fit

    cfg = FitConfig(epochs=epochs, lr=lr, bn_l1=l1, losses=(LossConfig(name="ce"),))
    fit(model, None, train, val, cfg, progress=progress)
    return model
