"""Structured pruning to a budget: criterion, allocation, target-aligned widths, one-shot
or a progressive schedule with recovery between steps. Writes the replayable plan
(``prune_plan.json``) and the pruned model as a ``torch.export`` program (``pruned.pt2``)
that loads without the edited classes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.prune.allocate import layer_weights, loss_on
from edgecompress.prune.engine import PruneSettings, count_macs, prune_to_budget, widths
from edgecompress.prune.latency import onnx_latency_ms
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class PruneConfig(StageConfig):
    metric: str = Field(
        "macs", pattern="^(macs|params|latency)$", description="what the budget counts"
    )
    keep: float = Field(0.5, gt=0, lt=1, description="fraction of the metric to keep")
    criterion: str = "l1"
    allocation: str = Field("global", pattern="^(uniform|global|svd|sensitivity|latency)$")
    align: bool = Field(True, description="round widths to the target's channel alignment")
    ignore: tuple[str, ...] = Field(
        (), description="layer names never pruned (the classifier never is)"
    )
    schedule: str = Field("one_shot", pattern="^(one_shot|iterative)$")
    steps: int = Field(3, ge=1, description="iterative: pruning steps")
    k: float = Field(3.0, gt=1, description="iterative: p_i = p * (1 - (1 - i/n)^k)")
    epochs_per_step: int = Field(1, ge=0, description="iterative: recovery between steps")
    slimming: float = Field(0.0, ge=0, description="L1 on BN gammas during a sparsity pre-training")
    slimming_epochs: int = Field(2, ge=1)
    calibration_batches: int = Field(
        4, ge=1, description="batches for data criteria and sensitivity"
    )


@register_stage
class Prune(Stage):
    """Remove whole channels to a MAC/parameter/latency budget."""

    name = "prune"
    Config = PruneConfig
    cfg: PruneConfig
    changes_model = True
    takes_quantized = False  # rewrites float layers: runs before quantize

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        cfg = self.cfg
        example = torch.from_numpy(ctx.data.val_inputs[:1].copy())
        x_val = torch.from_numpy(ctx.data.val_inputs[:256])
        y_val = torch.from_numpy(ctx.data.val_labels[:256]).long()
        train = ctx.data.train_arrays() if cfg.schedule == "iterative" or cfg.slimming else None
        batches = self._batches(ctx, cfg.calibration_batches)
        if cfg.slimming:
            model = self._slim(model, train, ctx)  # type: ignore[arg-type]
        measure = self._measure(example, ctx.options.threads)
        original = copy.deepcopy(model)
        base = measure(model)
        settings = PruneSettings(cfg.criterion, cfg.allocation, None, cfg.ignore)
        settings.layer_weights = layer_weights(
            cfg.allocation,
            model,
            example,
            settings,
            val_loss=lambda m: loss_on(m, x_val, y_val),
            latency=lambda m: onnx_latency_ms(m, example, ctx.options.threads),
            batches=batches,
        )
        align = (
            ctx.target.channel_alignment if cfg.align and ctx.target.channel_alignment > 1 else None
        )
        plan: list[dict[str, Any]] = []
        n = cfg.steps if cfg.schedule == "iterative" else 1
        for i in range(1, n + 1):
            removed = (1 - cfg.keep) * (1 - (1 - i / n) ** cfg.k) if n > 1 else 1 - cfg.keep
            keep_now = (1 - removed) * base / measure(model)
            settings.round_to = align
            model, steps, _ = prune_to_budget(
                model, example, min(keep_now, 0.999), measure, settings, batches
            )
            plan += steps
            if n > 1 and i < n and cfg.epochs_per_step and train is not None:
                fit(
                    model,
                    original,
                    train,
                    (ctx.data.val_inputs, ctx.data.val_labels),
                    FitConfig(
                        epochs=cfg.epochs_per_step,
                        lr=0.01,
                        losses=(LossConfig(name="ce"), LossConfig(name="kd")),
                    ),
                    progress=ctx.options.progress,
                )
        self._record(ctx, original, model, example, plan, align, settings, base, measure)
        return model

    def _batches(self, ctx: BuildContext, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = ctx.data.val_inputs, ctx.data.val_labels
        # Calibration batches come from validation images the criterion only looks at.
        idx = np.random.default_rng(0).permutation(len(y))[: n * 32]
        return [
            (torch.from_numpy(x[idx[i : i + 32]]), torch.from_numpy(y[idx[i : i + 32]]).long())
            for i in range(0, len(idx), 32)
        ]

    def _measure(self, example: torch.Tensor, threads: int) -> Any:
        if self.cfg.metric == "latency":
            return lambda m: onnx_latency_ms(m, example, threads)
        index = 0 if self.cfg.metric == "macs" else 1
        return lambda m: count_macs(m, example)[index]

    def _slim(
        self, model: nn.Module, train: tuple[np.ndarray, np.ndarray], ctx: BuildContext
    ) -> nn.Module:
        """Network slimming: train with L1 on BN scales so unimportant channels go to zero."""
        cfg = FitConfig(
            epochs=self.cfg.slimming_epochs,
            lr=0.01,
            bn_l1=self.cfg.slimming,
            losses=(LossConfig(name="ce"),),
        )
        fit(
            model,
            None,
            train,
            (ctx.data.val_inputs, ctx.data.val_labels),
            cfg,
            progress=ctx.options.progress,
        )
        return model

    def _record(
        self,
        ctx: BuildContext,
        original: nn.Module,
        pruned: nn.Module,
        example: torch.Tensor,
        plan: list[dict[str, Any]],
        align: int | None,
        settings: PruneSettings,
        base: float,
        measure: Any,
    ) -> None:
        before, after = widths(original), widths(pruned)
        macs0, params0 = count_macs(original, example)
        macs1, params1 = count_macs(pruned, example)
        plan_doc = {
            "version": 1,
            "input_shape": list(example.shape),
            "criterion": self.cfg.criterion,
            "allocation": self.cfg.allocation,
            "round_to": align,
            "steps": plan,
            "kept": {n: {"out": after[n], "of": before[n]} for n in before},
        }
        atomic_write_json(ctx.out_dir / "prune_plan.json", plan_doc)
        _save_program(pruned, example, ctx.out_dir / "pruned.pt2")
        lat = {
            "pruned": onnx_latency_ms(pruned, example, ctx.options.threads),
            "original": onnx_latency_ms(original, example, ctx.options.threads),
        }
        kept = measure(pruned) / base
        if kept >= 0.999:
            ctx.log(
                f"prune: no channel could be removed (widths rounded to {align}); "
                "the model is kept as it was"
            )
        if align and kept < 0.999:  # what rounding to the target's alignment bought
            settings.round_to = None
            unaligned, _, _ = prune_to_budget(original, example, kept, measure, settings)
            lat["unaligned"] = onnx_latency_ms(unaligned, example, ctx.options.threads)
        how = "ONNX Runtime p50, batch 1, host, same run"
        ctx.report.data["pruning"] = {
            "macs": {
                "before": macs0,
                "after": macs1,
                "ratio": metric(macs1 / macs0, "", "torch-pruning op count"),
            },
            "params": {
                "before": params0,
                "after": params1,
                "ratio": metric(params1 / params0, "", "count"),
            },
            "latency_ms": {k: metric(v, "ms", how) for k, v in lat.items()},
            "round_to": align,
            "criterion": self.cfg.criterion,
            "allocation": self.cfg.allocation,
            "schedule": self.cfg.schedule,
            "layers": {n: {"before": before[n], "after": after[n]} for n in before},
            "plan": "prune_plan.json",
            "model": "pruned.pt2",
        }


def _save_program(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    # Batch is dynamic (traced at 2: a size-1 example would be specialised to 1).
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        model.eval(), (example.repeat(2, 1, 1, 1),), dynamic_shapes=({0: batch},)
    )
    tmp = temp_path_for(out)
    try:
        torch.export.save(program, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
