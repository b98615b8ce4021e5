"""How much each layer loses. ``uniform`` and ``global`` are Torch-Pruning's own (same
ratio everywhere; one ranking across layers). The others give each candidate layer a
weight that scales the global ratio (``latency``: that divides its scores):

- ``svd``: layers whose spectrum needs fewer filters to hold 90% of its energy lose more;
- ``sensitivity``: each layer pruned alone at 25%, 50% and 75%, validation loss measured
  (mean over the three); the layers
  that hurt least lose most;
- ``latency``: each layer pruned alone by half and the model timed on the target's runtime
  (all candidates in turns, three rounds, the lowest kept); the layers whose pruning buys
  the most real latency lose most. Its weights divide the criterion's scores in one global
  ranking (``engine._WeightedImportance``) rather than scale per-layer ratios. A layer
  whose saving is lost in the timing noise keeps a floor weight (:data:`LATENCY_FLOOR` of
  the mean saving, before the weights are normalised again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress.errors import ConfigError
from edgecompress.prune.criteria import layer_rank_ratio
from edgecompress.prune.engine import PruneSettings, classifier_layers, prune_once

ALLOCATIONS = ("uniform", "global", "svd", "sensitivity", "latency")


def candidate_layers(model: nn.Module, example: Tensor, ignored: tuple[str, ...]) -> list[str]:
    """Layers whose output channels can be chosen: not the classifier, not ignored, not
    depthwise (those follow the layer feeding them)."""
    skip = set(classifier_layers(model, example))
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        and m not in skip
        and n not in ignored
        and not (isinstance(m, nn.Conv2d) and m.groups > 1)
    ]


def _normalise(raw: dict[str, float]) -> dict[str, float]:
    mean = float(np.mean(list(raw.values()))) if raw else 1.0
    return {k: v / mean for k, v in raw.items()} if mean > 0 else {k: 1.0 for k in raw}


def _probe(
    model: nn.Module,
    example: Tensor,
    layers: list[str],
    s: PruneSettings,
    score: Callable[[nn.Module], float],
    batches: list[tuple[Tensor, Tensor]] | None,
    ratios: tuple[float, ...] = (0.5,),
) -> dict[str, float]:
    """Mean of score(model with only that layer pruned at each ratio), per layer."""
    out = {}
    for name in layers:
        single = PruneSettings(
            s.criterion, "uniform", None, s.ignored, s.max_layer_ratio, {name: 1.0}
        )
        scores = [score(prune_once(model, example, r, single, batches)[0]) for r in ratios]
        out[name] = float(np.mean(scores))
    return out


SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)
LATENCY_FLOOR = 0.2


def layer_weights(
    method: str,
    model: nn.Module,
    example: Tensor,
    s: PruneSettings,
    *,
    val_loss: Callable[[nn.Module], float] | None = None,
    latency: Callable[[Iterable[nn.Module]], list[float]] | None = None,
    batches: list[tuple[Tensor, Tensor]] | None = None,
) -> dict[str, float]:
    """Per-layer weights for ``method`` (empty for uniform/global)."""
    if method not in ALLOCATIONS:
        raise ConfigError(f"prune: unknown allocation {method!r}; known: {', '.join(ALLOCATIONS)}")
    if method in ("uniform", "global"):
        return {}
    layers = candidate_layers(model, example, s.ignored)
    mods = dict(model.named_modules())
    if method == "svd":
        redundancy = {n: 1.0 - layer_rank_ratio(mods[n].weight) for n in layers}
        return _normalise({n: max(r, 0.02) for n, r in redundancy.items()})
    if method == "sensitivity":
        if val_loss is None:
            raise ConfigError("prune: sensitivity allocation needs validation data")
        base = val_loss(model)
        hurt = _probe(model, example, layers, s, val_loss, batches, SENSITIVITY_RATIOS)
        return _normalise({n: 1.0 / max(h - base, 1e-3) for n, h in hurt.items()})
    if latency is None:
        raise ConfigError("prune: latency allocation needs a runtime to time candidates on")
    single = [
        PruneSettings(s.criterion, "uniform", s.round_to, s.ignored, s.max_layer_ratio, {n: 1.0})
        for n in layers
    ]

    def candidates() -> Iterator[nn.Module]:
        yield model
        for one in single:
            yield prune_once(model, example, 0.5, one, batches)[0]

    base, *timed = latency(candidates())
    saved = _normalise({n: max(base - t, 0.0) for n, t in zip(layers, timed, strict=True)})
    return _normalise({n: max(w, LATENCY_FLOOR) for n, w in saved.items()})


@torch.no_grad()
def loss_on(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float(nn.functional.cross_entropy(model(x), y))
