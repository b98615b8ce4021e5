"""DeepRebirth layer merging as a stage: exact rules by default (checked on real validation
images), approximate ones when asked (recover with a following ``distill`` stage, whose
teacher is then the model before merging)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from edgecompress.merge.engine import APPROXIMATE, EXACT_DEFAULT, merge
from edgecompress.prune.latency import onnx_latency_ms
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class MergeConfig(StageConfig):
    rules: tuple[str, ...] = EXACT_DEFAULT
    approximate: bool = Field(False, description="also apply DeepRebirth's streamlining merges")
    tolerance: float = Field(1e-4, gt=0, description="exact merges: max relative output change")


@register_stage
class Merge(Stage):
    """Fewer, denser layers: BN folds, branch sums, stacked convs, composed linear layers."""

    name = "merge"
    Config = MergeConfig
    cfg: MergeConfig
    changes_model = True

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        rules = (*self.cfg.rules, *APPROXIMATE) if self.cfg.approximate else self.cfg.rules
        check = torch.from_numpy(ctx.data.val_inputs[:64].copy())
        result = merge(model, check, rules, self.cfg.tolerance)
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
            }
        )
        return result.model
