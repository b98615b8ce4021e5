"""DeepRebirth layer merging as a stage: exact rules by default (checked on real validation
images), approximate ones when asked (recover with a following ``distill`` stage, whose
teacher is then the model before merging)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.merge.engine import (
    APPROXIMATE,
    EXACT_DEFAULT,
    MergeResult,
    apply_one,
    count_nodes,
    merge,
)
from edgecompress.prune.latency import onnx_latency_ms
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class RecoveryConfig(StageConfig):
    mode: str = Field("all_at_once", pattern="^(none|all_at_once|layer_by_layer)$")
    train: FitConfig = FitConfig(epochs=3, lr=0.01)


class MergeConfig(StageConfig):
    rules: tuple[str, ...] = EXACT_DEFAULT
    approximate: bool = Field(False, description="also apply DeepRebirth's streamlining merges")
    tolerance: float = Field(1e-4, gt=0, description="exact merges: max relative output change")
    recovery: RecoveryConfig = Field(
        RecoveryConfig(),
        description="after approximate merges: distillation with the model before merging as "
        "teacher, once after all of them or after each one (layer by layer)",
    )


@register_stage
class Merge(Stage):
    """Fewer, denser layers: BN folds, branch sums, stacked convs, composed linear layers."""

    name = "merge"
    Config = MergeConfig
    cfg: MergeConfig
    changes_model = True
    takes_quantized = False  # rewrites float layers: runs before quantize

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        check = torch.from_numpy(ctx.data.val_inputs[:64].copy())
        layer_by_layer = self.cfg.approximate and self.cfg.recovery.mode == "layer_by_layer"
        rules = (
            (*self.cfg.rules, *APPROXIMATE)
            if self.cfg.approximate and not layer_by_layer
            else self.cfg.rules
        )
        result = merge(model, check, rules, self.cfg.tolerance)
        recovered = self._recover(model, result, ctx, layer_by_layer)
        example = check[:1]
        lat = {
            "before": onnx_latency_ms(model, example, ctx.options.threads),
            "after": onnx_latency_ms(result.model, example, ctx.options.threads),
        }
        how = "ONNX Runtime p50, batch 1, host, same run (ORT applies its own Conv+BN fusion)"
        ctx.report.data.setdefault("merging", []).append(
            {
                "rules": list(rules),
                "applied": result.applied,
                "nodes": {"before": result.nodes_before, "after": result.nodes_after},
                "layers": {"before": result.layers_before, "after": result.layers_after},
                "max_rel_diff": metric(
                    result.max_rel_diff, "", f"PyTorch, {len(check)} validation images"
                )
                if result.max_rel_diff is not None
                else None,
                "latency_ms": {k: metric(v, "ms", how) for k, v in lat.items()},
                "recovery": {"mode": self.cfg.recovery.mode, "steps": recovered},
            }
        )
        return result.model

    def _recover(
        self, teacher: nn.Module, result: MergeResult, ctx: BuildContext, layer_by_layer: bool
    ) -> list[dict[str, Any]]:
        """Distil the merged model against the model before merging: once after all the
        approximate merges, or after each one."""
        cfg = self.cfg.recovery
        if not self.cfg.approximate or cfg.mode == "none":
            return []
        val = (ctx.data.val_inputs, ctx.data.val_labels)
        train, steps = ctx.data.train_arrays(), []
        while True:
            applied = apply_one(result.model, APPROXIMATE) if layer_by_layer else "all"
            if applied is None:
                break
            if layer_by_layer:
                result.applied[applied] = result.applied.get(applied, 0) + 1
                result.max_rel_diff = None  # the model is no longer an exact rewrite
            res = fit(result.model, teacher, train, val, cfg.train, progress=ctx.options.progress)
            steps.append({"after": applied, "val_top1": res.best_top1, "epochs": len(res.history)})
            if not layer_by_layer:
                break
        result.nodes_after, result.layers_after = count_nodes(result.model)
        return steps
