"""Apply merge rules to a traced model until none matches, and prove the exact ones."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from edgecompress.choices import APPROXIMATE_RULES, EXACT_RULES
from edgecompress.errors import EdgeCompressError, UnsupportedOpError
from edgecompress.measure import output_tensors
from edgecompress.merge.rules import RULES

# Every exact rule by default; DeepRebirth's approximate merges (streamlining, branch
# merging) only when asked, followed by recovery. Declared in edgecompress.choices.
EXACT_DEFAULT = EXACT_RULES
APPROXIMATE = APPROXIMATE_RULES


@dataclass
class MergeResult:
    model: fx.GraphModule
    applied: dict[str, int] = field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    layers_before: int = 0
    layers_after: int = 0
    max_rel_diff: float | None = None  # exact rules only
    recovery: list[dict[str, Any]] = field(default_factory=list)  # after approximate merges


def count_nodes(gm: fx.GraphModule) -> tuple[int, int]:
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    layers = [n for n in nodes if n.op == "call_module"]
    return len(nodes), len(layers)


class _Tracer(fx.Tracer):
    """Attention blocks stay whole (their forward branches on shapes; nothing in them is
    merged): every other module is traced through as usual."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from edgecompress.attention import ATTENTION

        return isinstance(m, ATTENTION) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    root = copy.deepcopy(model).eval()
    return fx.GraphModule(root, traced_graph(root), type(root).__name__)


def traced_graph(model: nn.Module) -> fx.Graph:
    """``model``'s forward as torch.fx traces it (the model is not copied or changed: a
    build checks this before any training), or why merging cannot work on it."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:
        raise UnsupportedOpError(
            f"torch.fx cannot trace {type(model).__name__} ({str(exc).splitlines()[0][:200]}); "
            "layer merging needs a traceable model (no data-dependent control flow in forward)"
        ) from exc


def merge(
    model: nn.Module,
    example: torch.Tensor,
    rules: tuple[str, ...] = EXACT_DEFAULT,
    tolerance: float = 1e-4,
    max_passes: int = 10,
) -> MergeResult:
    """Rewrite ``model`` with ``rules`` to a fixpoint. When every rule is exact, the output
    is checked against the original on ``example`` (max abs diff relative to the output's
    scale) and a difference over ``tolerance`` is an error, not a silent change."""
    chosen = [RULES.get(r) for r in rules]
    gm = trace(model)
    result = MergeResult(gm)
    result.nodes_before, result.layers_before = count_nodes(gm)
    for _ in range(max_passes):
        changed = 0
        for r in chosen:
            k = r.apply(gm)
            if k:
                result.applied[r.name] = result.applied.get(r.name, 0) + k
                changed += k
                gm.graph.lint()
                gm.recompile()
        if not changed:
            break
    gm.delete_all_unused_submodules()
    gm.recompile()
    result.nodes_after, result.layers_after = count_nodes(gm)
    if all(r.exact for r in chosen):
        with torch.no_grad():
            refs, outs = output_tensors(model.eval()(example)), output_tensors(gm(example))
        result.max_rel_diff = max(
            float((ref - out).abs().max() / ref.abs().max().clamp_min(1e-12))
            for ref, out in zip(refs, outs, strict=True)
        )
        if result.max_rel_diff > tolerance:
            raise EdgeCompressError(
                f"exact merges changed the output by {result.max_rel_diff:.2e} (relative) > "
                f"{tolerance}; "
                f"rules applied: {result.applied}. Please report this model"
            )
    return result


def apply_one(gm: fx.GraphModule, rules: tuple[str, ...]) -> str | None:
    """Apply the first approximate rewrite any of ``rules`` finds (one match only), for
    layer-by-layer recovery; returns the rule's name, or None when nothing matches."""
    for name in rules:
        if RULES.get(name).apply(gm, limit=1):
            gm.graph.lint()
            gm.delete_all_unused_submodules()
            gm.recompile()
            return name
    return None
