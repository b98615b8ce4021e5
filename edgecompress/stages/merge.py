"""DeepRebirth layer merging as a stage: exact rules by default (checked on real validation
images), approximate ones when asked (recover with a following ``distill`` stage, whose
teacher is then the model before merging)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.choices import APPROXIMATE_RULES
from edgecompress.merge.api import merge
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import MergeConfig
from edgecompress.timing import onnx_latency_ms


class Merge(Stage):
    """Fewer, denser layers: BN folds, branch sums, stacked convs, composed linear layers."""

    name = "merge"
    Config = MergeConfig
    cfg: MergeConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        cfg = self.cfg
        check = torch.from_numpy(ctx.data.val_inputs[:64].copy())
        recovering = cfg.approximate and cfg.recovery_mode != "none"
        result = merge(
            model,
            check,
            rules=cfg.rules,
            approximate=cfg.approximate,
            tolerance=cfg.tolerance,
            train=ctx.data.train_arrays() if recovering else None,
            val=(ctx.data.val_inputs, ctx.data.val_labels),
            recover=cfg.recovery,
            recovery_mode=cfg.recovery_mode,
            progress=ctx.options.progress,
        )
        example = check[:1]
        lat = {
            "before": onnx_latency_ms(model, example, ctx.options.threads),
            "after": onnx_latency_ms(result.model, example, ctx.options.threads),
        }
        how = "ONNX Runtime p50, batch 1, host, same run (ORT applies its own Conv+BN fusion)"
        exactness = f"PyTorch, {len(check)} validation images"
        ctx.report.data.setdefault("merging", []).append(
            {
                "rules": [*cfg.rules, *(APPROXIMATE_RULES if cfg.approximate else ())],
                "applied": result.applied,
                "nodes": {"before": result.nodes_before, "after": result.nodes_after},
                "layers": {"before": result.layers_before, "after": result.layers_after},
                "max_rel_diff": None
                if result.max_rel_diff is None
                else metric(result.max_rel_diff, "", exactness),
                "latency_ms": {k: metric(v, "ms", how) for k, v in lat.items()},
                "recovery": {"mode": cfg.recovery_mode, "steps": result.recovery},
            }
        )
        return result.model
