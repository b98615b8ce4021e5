"""Structured pruning to a budget on top of Torch-Pruning's dependency graph.

What this adds to the graph library:
- **scopes**: where the whole-model graph cannot be built (ShuffleNet's channel shuffle
  defeats its reshape index mapping), each sub-block whose own graph builds is pruned on
  its own with its boundary channels frozen — the shuffle only touches block boundaries;
- **budgets**: a MAC, parameter or latency ratio, met by bisection on the pruning ratio;
- **allocations** (how much each layer loses): uniform, global, svd, sensitivity, latency;
- **target widths**: rounded to the target's channel alignment;
- **a replayable plan**: JSON (scope, module, dimension, pruned and kept indices).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgecompress import memory
from edgecompress.errors import ConfigError, UnsupportedOpError
from edgecompress.measure import output_tensors
from edgecompress.progress import progress as show
from edgecompress.prune import attention
from edgecompress.prune.criteria import prepare_criterion

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class Scope:
    name: str  # "" is the whole model
    example: Tensor


def classifier_layers(model: nn.Module, example: Tensor) -> list[nn.Module]:
    """The layers that produce the model's outputs: never pruned. For a classifier, the
    last layer run (its classes, even behind a pooling or flatten); for a model with several
    outputs (a detector's box, class and DFL convolutions), every layer whose result is
    returned as one."""
    order: list[tuple[nn.Module, Tensor]] = []  # the tensors held, so no id is reused
    handles = [
        m.register_forward_hook(lambda m, _i, o: order.append((m, o)))
        for m in model.modules()
        if isinstance(m, PRUNABLE)
    ]
    with torch.no_grad():
        outputs = output_tensors(model.eval()(example))
    for h in handles:
        h.remove()
    layers = [m for m, out in order if any(out is t for t in outputs)]
    if order and order[-1][0] not in layers:
        layers.append(order[-1][0])
    return layers


def head_tied_layers(model: nn.Module) -> list[nn.Module]:
    """The projections of attention blocks this module does not rewrite (MaxViT's
    relative-position attention, a user's own): a module with a ``num_heads``/``n_heads``
    count reshapes its projections' outputs into heads and back to the input's width, so
    their widths are not free channels. Torch-Pruning's reshape mapping also cannot follow
    those head reshapes: on MaxViT-T one such group multiplied its indices until a 23 GB
    machine ran out of memory. They stay whole; the MLPs and convolutions around them are
    pruned."""

    def heads(m: nn.Module) -> bool:
        return isinstance(getattr(m, "num_heads", getattr(m, "n_heads", None)), int)

    tied: list[nn.Module] = []
    for m in model.modules():
        inner = list(m.modules())[1:]
        if heads(m) and not any(heads(d) for d in inner):
            tied += [d for d in inner if isinstance(d, PRUNABLE)]
    return tied


def _inputs_of(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if name:

            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                if name not in captured and args and isinstance(args[0], Tensor):
                    captured[name] = args[0].detach()

            handles.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(example)
    for h in handles:
        h.remove()
    return captured


@torch.enable_grad()  # the dependency graph traces through autograd
def _builds(module: nn.Module, example: Tensor) -> bool:
    try:
        tp.DependencyGraph().build_dependency(module, example_inputs=example)
    except Exception:
        return False
    return True


@torch.enable_grad()  # the dependency graph traces through autograd
def find_scopes(model: nn.Module, example: Tensor) -> list[Scope]:
    """The whole model if its graph builds, else the largest sub-blocks whose graphs do."""
    if _builds(model, example):
        return [Scope("", example)]
    inputs = _inputs_of(model, example)
    scopes: list[Scope] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            convs = sum(isinstance(m, PRUNABLE) for m in child.modules())
            if convs < 2 or name not in inputs:
                continue
            # Only chains: their boundaries are unambiguous (first and last layers).
            if isinstance(child, nn.Sequential) and _builds(child, inputs[name][:1]):
                scopes.append(Scope(name, inputs[name][:1]))
            else:
                visit(name, child)

    visit("", model)
    if not scopes:
        raise UnsupportedOpError(
            "no part of the model has a channel dependency graph that can be built; "
            "it cannot be pruned structurally"
        )
    return scopes


def _scope_boundary_layers(module: nn.Module) -> list[nn.Module]:
    """A chain's boundaries stay: its last conv/linear (the output width) and any depthwise
    convs before its first ordinary conv (their channels are the input's)."""
    layers: list[nn.Module] = [m for m in module.modules() if isinstance(m, PRUNABLE)]
    boundary = layers[-1:]
    for m in layers:
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            boundary.append(m)
        else:
            break
    return boundary


class _WeightedImportance(tp.importance.Importance):
    """A criterion's scores divided by the allocation weight of the group's root layer: in
    one global ranking, a layer with twice the weight loses its channels as if they were
    half as important. Each group's most important channels (``1 - max_ratio`` of them, at
    least ``keep_min``) are never ranked low: a heavily weighted layer could otherwise fall
    wholly under the threshold, and Torch-Pruning then leaves it whole. Unlike per-layer
    ratios (Torch-Pruning gives a coupled group the ratio of whichever member it meets
    first), the pruned share grows with the global ratio, so a budget bisection converges."""

    def __init__(
        self, inner: Any, weights: dict[nn.Module, float], max_ratio: float, keep_min: int
    ) -> None:
        self.inner, self.weights = inner, weights
        self.max_ratio, self.keep_min = max_ratio, keep_min

    def __call__(self, group: Any) -> Tensor | None:
        scores = self.inner(group)
        if scores is None:
            return None
        scores = scores / self.weights.get(group[0][0].target.module, 1.0)
        keep = max(math.ceil(len(scores) * (1 - self.max_ratio)), self.keep_min)
        if keep < len(scores):
            top = torch.topk(scores, keep).indices
            scores[top] = scores.max() * 1e6 + 1.0
        return scores


@dataclass
class PruneSettings:
    criterion: str = "l1"
    allocation: str = "global"
    round_to: int | None = None
    ignored: tuple[str, ...] = ()
    max_layer_ratio: float = 0.9
    layer_weights: dict[str, float] = field(default_factory=dict)  # allocation output

    @property
    def scales_ratios(self) -> bool:
        """Do the layer weights scale per-layer pruning ratios? ``latency``'s divide the
        criterion's scores in one global ranking instead (:class:`_WeightedImportance`)."""
        return bool(self.layer_weights) and self.allocation != "latency"


@torch.enable_grad()  # the dependency graph traces through autograd
def prune_once(
    model: nn.Module,
    example: Tensor,
    ratio: float,
    s: PruneSettings,
    batches: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Prune a copy of ``model`` at ``ratio`` (per-layer ratios scaled by the allocation's
    weights) and return it with the plan steps that did it.

    A transformer (ViT, DeiT, Swin) loses whole attention heads and MLP hidden units,
    ranked by ``s.criterion`` across blocks (``global``) or the same share in every block
    (``uniform``; see ``prune.attention``); its residual width stays."""
    # Earlier tries (a bisection's, an allocation's probes) are held in reference cycles
    # with their dependency graphs: freed before this copy, not when the collector runs.
    memory.release()
    pruned = copy.deepcopy(model).eval()
    names = dict(pruned.named_modules())
    ignored = [names[n] for n in s.ignored if n in names] + classifier_layers(pruned, example)
    if attention.is_transformer(pruned):
        attention.standardize_attention(pruned)
        ratio = min(ratio, s.max_layer_ratio)
        return pruned, attention.prune_transformer(
            pruned, ratio, s.round_to, set(ignored), s.criterion, batches,
            s.allocation, s.max_layer_ratio,
        )  # fmt: skip
    ignored += head_tied_layers(pruned)
    steps: list[dict[str, Any]] = []
    for scope in find_scopes(pruned, example):
        root = pruned.get_submodule(scope.name) if scope.name else pruned
        scope_ignored = list(ignored) + (_scope_boundary_layers(root) if scope.name else [])
        crit = prepare_criterion(s.criterion, pruned, batches or [])
        modules = dict(root.named_modules())
        weights = {}
        for n, w in s.layer_weights.items():
            full = n if not scope.name else n.removeprefix(scope.name + ".")
            if (not scope.name or n.startswith(scope.name + ".")) and full in modules:
                weights[modules[full]] = w
        ratio_dict = (
            {m: min(s.max_layer_ratio, ratio * w) for m, w in weights.items()}
            if s.scales_ratios
            else {}
        )
        if weights and not s.scales_ratios:
            crit = _WeightedImportance(crit, weights, s.max_layer_ratio, s.round_to or 1)
        pruner = tp.pruner.MagnitudePruner(
            # With per-layer ratios every candidate layer is in the dict; others stay whole.
            root,
            scope.example,
            importance=crit,
            pruning_ratio=0.0 if ratio_dict else min(ratio, s.max_layer_ratio),
            pruning_ratio_dict=ratio_dict or None,
            global_pruning=s.allocation in ("global", "latency"),
            max_pruning_ratio=s.max_layer_ratio,
            ignored_layers=scope_ignored,
            round_to=s.round_to,
        )
        pruner.step()
        for mod_name, is_out, idxs in pruner.pruning_history():
            steps.append(
                {
                    "scope": scope.name,
                    "module": mod_name,
                    "dim": "out" if is_out else "in",
                    "pruned": [int(i) for i in idxs],
                }
            )
    pruned.zero_grad(set_to_none=True)
    return pruned, steps


def prune_to_budget(
    model: nn.Module,
    example: Tensor,
    keep: float,
    measure: Callable[[nn.Module], float],
    s: PruneSettings,
    batches: list[tuple[Tensor, Tensor]] | None = None,
    iters: int = 14,
    tol: float = 0.01,
    progress: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """Bisect the pruning ratio until ``measure(pruned) / measure(model)`` is at most
    ``keep`` (e.g. 0.5 of the MACs: a budget is a ceiling) and within ``tol`` of it, at most
    ``iters`` tries; returns the closest result under the budget (the smallest over it if
    none is under) and its measured fraction. Each try prunes a copy of the whole model
    (seconds on a big one), so the tries show progress on stderr unless ``progress`` is
    false."""
    if not 0 < keep < 1:
        raise ConfigError(f"prune: the budget must keep between 0 and 1 of the model, got {keep}")
    base = measure(model)
    # With per-layer weights the global ratio is scaled per layer (and capped per layer at
    # max_layer_ratio): the search goes high enough for lightly weighted layers, capped so a
    # near-zero weight (a layer the allocation most wants to keep) cannot stretch it.
    floor = max(min(s.layer_weights.values()), 0.05) if s.scales_ratios else 1.0
    lo, hi = 0.0, s.max_layer_ratio / floor
    best: tuple[nn.Module, list[dict[str, Any]], float] | None = None
    # The total is the most tries; a bisection that meets the budget stops earlier.
    with show(range(iters), iters, f"prune: bisecting to keep {keep:.3f}", progress) as bar:
        for _ in bar:
            mid = (lo + hi) / 2
            pruned, steps = prune_once(model, example, mid, s, batches)
            frac = measure(pruned) / base
            bar.set_postfix_str(f"ratio {mid:.3f} keeps {frac:.3f}")
            if best is None or _closer_under(frac, best[2], keep):
                best = (pruned, steps, frac)
            del pruned  # a try that is not the best is freed before the next is made
            if keep - tol <= frac <= keep:
                break
            if frac > keep:
                lo = mid
            else:
                hi = mid
        assert best is not None
        # the closing line reports the try kept, not the last one made
        bar.set_postfix_str(f"chose a try that keeps {best[2]:.3f}")
    return best


def _closer_under(frac: float, best: float, keep: float) -> bool:
    """Is ``frac`` a better answer to a ``keep`` budget than ``best``? Under the budget
    beats over it; then the closer to it."""
    if (frac <= keep) != (best <= keep):
        return frac <= keep
    return abs(frac - keep) < abs(best - keep)


@torch.enable_grad()  # the dependency graph traces through autograd
def replay(model: nn.Module, example: Tensor, steps: list[dict[str, Any]]) -> nn.Module:
    """Apply a saved plan to the original model: gives the same pruned model."""
    model = copy.deepcopy(model).eval()
    if attention.is_transformer(model):
        attention.standardize_attention(model)
    inputs = _inputs_of(model, example)
    graphs: dict[str, Any] = {}
    for step in steps:
        if step["dim"] in ("heads", "hidden"):
            attention.apply_step(model, step)
            continue
        scope = step["scope"]
        if scope not in graphs:
            root = model.get_submodule(scope) if scope else model
            ex = inputs[scope][:1] if scope else example
            graphs[scope] = (root, tp.DependencyGraph().build_dependency(root, example_inputs=ex))
        root, dg = graphs[scope]
        mod = root.get_submodule(step["module"])
        handler = dg.get_pruner_of_module(mod)
        fn = handler.prune_out_channels if step["dim"] == "out" else handler.prune_in_channels
        dg.get_pruning_group(mod, fn, step["pruned"]).prune()
    return model


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv/linear layer, by name. An ``nn.MultiheadAttention``
    is listed as the ``qkv`` and ``proj`` layers that pruning turns it into."""
    out: dict[str, int] = {}
    inside: tuple[str, ...] = ()
    for n, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            out[f"{n}.qkv"] = 3 * m.embed_dim
            out[f"{n}.proj"] = m.embed_dim
            inside += (f"{n}.",)
        elif isinstance(m, PRUNABLE) and not n.startswith(inside):
            out[n] = int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
    return out
