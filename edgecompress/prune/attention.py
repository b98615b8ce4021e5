"""Structured pruning of transformers: whole attention heads and MLP hidden units.

Torch-Pruning's dependency graph couples every residual-stream width of a ViT (patch
embedding, class token, positional embedding, every LayerNorm) into one group, and on
torchvision's Swin its index mapping through the window reshapes does not finish. The
widths that are worth removing in a transformer are not on the residual stream anyway:
they are the heads of each attention block and the hidden units of each MLP. This module
removes those by direct surgery and leaves the residual width alone:

- ``standardize_attention`` (:mod:`edgecompress.attention`) swaps
  ``nn.MultiheadAttention`` (one packed ``in_proj_weight`` that must stay ``3 * embed_dim``
  wide) for ``SelfAttention``, an equivalent module with a ``qkv`` and a ``proj`` Linear
  whose inner width may shrink, and torchvision's Swin attention for a class whose
  forward takes the head width from its own weights instead of ``channels // heads``;
- ``prune_transformer`` ranks heads and hidden units by the weights that read and write
  them (criterion ``l1``, ``l2``, ``taylor`` — |weight x gradient| on the calibration
  batches — or ``random``) and removes the lowest as the allocation shares them out (below),
  recording plan steps (``dim: "heads"`` / ``dim: "hidden"``) that ``apply_step`` replays.

Allocation: ``uniform`` removes the same share of every block's heads and of every MLP's
units; ``global`` (the default, as in Torch-Pruning) ranks all heads across blocks in one
list, and all hidden units in another, each block's scores divided by its own mean (scales
differ from block to block: Torch-Pruning's ``mean`` normaliser) and no block losing more
than ``max_ratio`` of its heads or units. Allocations that time or probe single layers do
not apply to heads and are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
)

from edgecompress.attention import (  # re-exported: the model side lives below prune/
    ATTENTION,
    SelfAttention,
    attention_blocks,
    hides_layers,
    is_transformer,
    standardize_attention,
)
from edgecompress.errors import ConfigError

__all__ = [
    "ATTENTION",
    "SelfAttention",
    "apply_step",
    "attention_blocks",
    "check_allocation",
    "hides_layers",
    "is_transformer",
    "mlp_pairs",
    "prune_transformer",
    "standardize_attention",
]

ELEMENTWISE = (nn.GELU, nn.ReLU, nn.SiLU, nn.Dropout, nn.Identity, nn.Tanh, nn.Hardswish)


def mlp_pairs(model: nn.Module, keep: set[nn.Module]) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """Linear -> elementwise ops -> Linear inside a Sequential, by the first Linear's name;
    a pair whose second Linear is in ``keep`` (the classifier) is still prunable (its
    outputs stay), one whose first is in ``keep`` is not."""
    pairs: dict[str, tuple[nn.Linear, nn.Linear]] = {}
    inside = tuple(f"{n}." for n in attention_blocks(model))  # e.g. Swin V2's bias MLP
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or prefix.startswith(inside):
            continue
        items = list(seq.named_children())
        for i, (name, first) in enumerate(items):
            if not isinstance(first, nn.Linear) or first in keep:
                continue
            for _n, nxt in items[i + 1 :]:
                if isinstance(nxt, nn.Linear):
                    if nxt.in_features == first.out_features:
                        pairs[f"{prefix}.{name}" if prefix else name] = (first, nxt)
                    break
                if not isinstance(nxt, ELEMENTWISE):
                    break
    return pairs


# What ranks a head or hidden unit: a per-weight score summed over the weights that read
# and write it. Activation statistics (apoz, entropy), BatchNorm scales and SVD do not
# apply to these widths.
CRITERIA = ("l1", "l2", "taylor", "random")


def _weight_score(w: Tensor, criterion: str, gen: torch.Generator) -> Tensor:
    if criterion == "l2":
        return w.detach().pow(2)
    if criterion == "taylor":
        if w.grad is None:
            raise ConfigError("prune: criterion 'taylor' needs calibration batches with labels")
        return (w.detach() * w.grad).abs()
    if criterion == "random":
        return torch.rand(w.shape, generator=gen)
    return w.detach().abs()


def _head_scores(attn: Any, criterion: str = "l1", gen: torch.Generator | None = None) -> Tensor:
    gen = gen or torch.Generator().manual_seed(0)
    heads = int(attn.num_heads)
    w = _weight_score(attn.qkv.weight, criterion, gen)  # (3 * heads * dim, channels)
    per_head = w.view(3, heads, -1).sum(dim=(0, 2))
    proj = _weight_score(attn.proj.weight, criterion, gen)  # (channels, heads * dim)
    per_head += proj.view(proj.shape[0], heads, -1).sum(dim=(0, 2))
    return per_head


def _unit_scores(
    first: nn.Linear, second: nn.Linear, criterion: str = "l1", gen: torch.Generator | None = None
) -> Tensor:
    gen = gen or torch.Generator().manual_seed(0)
    return _weight_score(first.weight, criterion, gen).sum(1) + _weight_score(
        second.weight, criterion, gen
    ).sum(0)


def _gradients(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
    """Cross-entropy gradients summed over ``batches`` into every ``.grad`` (taylor)."""
    if not batches:
        raise ConfigError(
            "prune: criterion 'taylor' needs data (labelled batches) to take gradients on"
        )
    model.zero_grad()
    with torch.enable_grad():
        for x, y in batches:
            F.cross_entropy(model(x), y.long()).backward()


def _lowest(scores: Tensor, count: int) -> list[int]:
    return sorted(int(i) for i in torch.argsort(scores, stable=True)[:count])


ALLOCATIONS = ("uniform", "global")


def check_allocation(allocation: str) -> None:
    if allocation not in ALLOCATIONS:
        raise ConfigError(
            f"prune: allocation {allocation!r} weighs single layers; a transformer's heads "
            f"and MLP units are allocated by one of {', '.join(ALLOCATIONS)}"
        )


def _global_counts(scores: dict[str, Tensor], ratio: float, max_ratio: float) -> dict[str, int]:
    """How many of each block's items go when ``ratio`` of all of them are removed
    lowest-first from one ranking of mean-normalised scores, no block losing more than
    ``max_ratio`` of its items (and never its last one)."""
    total = sum(len(v) for v in scores.values())
    ranked = sorted(
        (float(v) / max(float(s.mean()), 1e-12), name) for name, s in scores.items() for v in s
    )
    caps = {n: min(int(max_ratio * len(s)), len(s) - 1) for n, s in scores.items()}
    counts = dict.fromkeys(scores, 0)
    left = int(ratio * total)
    for _score, name in ranked:
        if left <= 0:
            break
        if counts[name] < caps[name]:
            counts[name] += 1
            left -= 1
    return counts


def prune_transformer(
    model: nn.Module,
    ratio: float,
    round_to: int | None,
    keep: set[nn.Module],
    criterion: str = "l1",
    batches: list[tuple[Tensor, Tensor]] | None = None,
    allocation: str = "uniform",
    max_ratio: float = 0.9,
) -> list[dict[str, Any]]:
    """Remove ``ratio`` of the attention heads and of the MLP hidden units (in place;
    lowest ``criterion`` score first; kept hidden widths rounded to ``round_to``): the same
    share in every block (``uniform``) or from one ranking across blocks (``global``).
    Returns the plan steps."""
    if criterion not in CRITERIA:
        raise ConfigError(
            f"prune: criterion {criterion!r} does not rank attention heads or MLP units; "
            f"for a transformer use one of {', '.join(CRITERIA)}"
        )
    check_allocation(allocation)
    if criterion == "taylor":
        _gradients(model, batches or [])
    gen = torch.Generator().manual_seed(0)
    blocks = attention_blocks(model)
    mlps = mlp_pairs(model, keep)
    head_scores = {n: _head_scores(a, criterion, gen) for n, a in blocks.items()}
    unit_scores = {n: _unit_scores(f, s, criterion, gen) for n, (f, s) in mlps.items()}
    if allocation == "global":
        head_drop = _global_counts(head_scores, ratio, max_ratio)
        unit_drop = _global_counts(unit_scores, ratio, max_ratio)
    else:
        head_drop = {n: min(int(ratio * len(v)), len(v) - 1) for n, v in head_scores.items()}
        unit_drop = {n: int(ratio * len(v)) for n, v in unit_scores.items()}
    steps: list[dict[str, Any]] = []
    for name, scores in head_scores.items():
        if head_drop[name]:
            pruned = _lowest(scores, head_drop[name])
            step = {"scope": "", "module": name, "dim": "heads", "pruned": pruned}
            apply_step(model, step)
            steps.append(step)
    for name, scores in unit_scores.items():
        width = len(scores)
        kept = width - unit_drop[name]
        if round_to:
            rounded = kept // round_to if allocation == "uniform" else round(kept / round_to)
            kept = min(width, max(round_to, rounded * round_to))
        if 0 < kept < width:
            step = {
                "scope": "",
                "module": name,
                "dim": "hidden",
                "pruned": _lowest(scores, width - kept),
            }
            apply_step(model, step)
            steps.append(step)
    model.zero_grad(set_to_none=True)
    return steps


def apply_step(model: nn.Module, step: dict[str, Any]) -> None:
    """Replay one ``heads`` or ``hidden`` plan step on ``model`` (in place)."""
    module: Any = model.get_submodule(step["module"])
    if step["dim"] == "heads":
        _drop_heads(module, step["pruned"])
        return
    seq_name, _, first_name = step["module"].rpartition(".")
    seq = model.get_submodule(seq_name) if seq_name else model
    first = module
    names = [n for n, _m in seq.named_children()]
    second: Any = next(
        seq.get_submodule(n)
        for n in names[names.index(first_name) + 1 :]
        if isinstance(seq.get_submodule(n), nn.Linear)
    )
    kept = _kept(first.out_features, step["pruned"])
    _set(first, "weight", first.weight[kept])
    if first.bias is not None:
        _set(first, "bias", first.bias[kept])
    first.out_features = len(kept)
    _set(second, "weight", second.weight[:, kept])
    second.in_features = len(kept)


def _drop_heads(attn: Any, pruned: list[int]) -> None:
    heads = int(attn.num_heads)
    kept_heads = _kept(heads, pruned)
    dim = attn.qkv.out_features // (3 * heads)
    rows = torch.tensor(
        [p * heads * dim + h * dim + d for p in range(3) for h in kept_heads for d in range(dim)]
    )
    cols = torch.tensor([h * dim + d for h in kept_heads for d in range(dim)])
    _set(attn.qkv, "weight", attn.qkv.weight[rows])
    if attn.qkv.bias is not None:
        _set(attn.qkv, "bias", attn.qkv.bias[rows])
    attn.qkv.out_features = len(rows)
    _set(attn.proj, "weight", attn.proj.weight[:, cols])
    attn.proj.in_features = len(cols)
    index = torch.tensor(kept_heads)
    if isinstance(attn, ShiftedWindowAttentionV2):
        last: Any = attn.cpb_mlp[-1]
        _set(last, "weight", last.weight[index])
        last.out_features = len(kept_heads)
        _set(attn, "logit_scale", attn.logit_scale[index])
    elif isinstance(attn, ShiftedWindowAttention):
        _set(attn, "relative_position_bias_table", attn.relative_position_bias_table[:, index])
    attn.num_heads = len(kept_heads)
    if isinstance(attn, SelfAttention):
        attn.head_dim = dim


def _kept(total: int, pruned: list[int]) -> list[int]:
    gone = set(pruned)
    return [i for i in range(total) if i not in gone]


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    setattr(module, name, nn.Parameter(value.detach().clone()))
