"""``ec.merge``: DeepRebirth layer merging from a user's own script.

    result = ec.merge(model, example)                       # exact rewrites, proven
    result = ec.merge(model, example, approximate=True,     # + streamlining merges,
                      train=loader, val=val_loader)         #   recovered by distillation

Exact rules are checked numerically on ``example``; approximate ones are followed by
recovery (the one recovery config) with the model before merging as teacher, once after
all of them or after each one (``recovery_mode="layer_by_layer"``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from edgecompress.choices import APPROXIMATE_RULES, EXACT_RULES, MERGE_RULES
from edgecompress.distill.config import FitConfig
from edgecompress.distill.data import Data
from edgecompress.errors import ConfigError
from edgecompress.merge.engine import MergeResult, apply_one, count_nodes
from edgecompress.merge.engine import merge as merge_rules


def merge(
    model: nn.Module,
    example: Tensor,
    *,
    rules: tuple[str, ...] = EXACT_RULES,
    approximate: bool = False,
    tolerance: float = 1e-4,
    train: Data | None = None,
    val: Data | None = None,
    recover: FitConfig | None = None,
    recovery_mode: str = "all_at_once",
    progress: bool = True,
) -> MergeResult:
    """Merge layers of ``model`` (left as it was); ``result.model`` is the merged
    ``torch.fx.GraphModule`` and ``result.recovery`` what each recovery step reached."""
    for r in rules:
        MERGE_RULES.check(r, "merge.rules")
    if recovery_mode not in ("none", "all_at_once", "layer_by_layer"):
        raise ConfigError(
            f"merge: recovery_mode {recovery_mode!r}; none|all_at_once|layer_by_layer"
        )
    recovering = approximate and recovery_mode != "none"
    if recovering and (train is None or val is None):
        raise ConfigError(
            "merge: approximate merges change the output; give train and val data for the "
            "recovery, or recovery_mode='none'"
        )
    layer_by_layer = approximate and recovery_mode == "layer_by_layer"
    chosen = (*rules, *APPROXIMATE_RULES) if approximate and not layer_by_layer else rules
    result = merge_rules(model, example, chosen, tolerance)
    if recovering:
        result.recovery = _recover(model, result, train, val, recover, layer_by_layer, progress)  # type: ignore[arg-type]
    return result


def _recover(
    teacher: nn.Module,
    result: MergeResult,
    train: Data,
    val: Data,
    cfg: FitConfig | None,
    layer_by_layer: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    from edgecompress.distill.trainer import fit

    steps = []
    while True:
        applied = apply_one(result.model, APPROXIMATE_RULES) if layer_by_layer else "all"
        if applied is None:
            break
        if layer_by_layer:
            result.applied[applied] = result.applied.get(applied, 0) + 1
            result.max_rel_diff = None  # the model is no longer an exact rewrite
        res = fit(result.model, teacher, train, val, cfg or FitConfig(epochs=3), progress=progress)
        steps.append({"after": applied, "val_top1": res.best_top1, "epochs": len(res.history)})
        if not layer_by_layer:
            break
    result.nodes_after, result.layers_after = count_nodes(result.model)
    return steps
