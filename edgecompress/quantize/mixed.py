"""Mixed precision down the ladder: named layers, or the layers whose weights suffer most
at the ladder's lowest width, keep higher-precision weights while the rest step down.

A layer is the conv/linear's module name in the model given (``stem.0``, ``fc``; glob
patterns such as ``layer3.*`` work). Sensitivity is measured the way a per-layer
back-off would: only that layer's weights at the low width, every other layer as it is,
and the mean KL divergence of the outputs from the model's own on validation inputs.

>>> keep = keep_map(qat, ("fc",), sensitive=2, bits=4, batches=val_batches)  # doctest: +SKIP
>>> keep  # doctest: +SKIP
{'fc': 8, 'stem.0': 8, 'layer3.conv2': 8}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from edgecompress.errors import ConfigError
from edgecompress.measure import output_tensors
from edgecompress.quantize.fake import QuantWrapper


def weight_layers(model: nn.Module) -> dict[str, QuantWrapper]:
    """The fake-quantized conv/linear layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}


def match_layers(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The quantized layers ``patterns`` name; a pattern that names none is an error that
    lists the names there are."""
    names = list(weight_layers(model))
    picked: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ConfigError(
                f"quantize.keep: {pattern!r} names no quantized conv/linear layer; the "
                f"layers are: {shown}"
            )
        picked += [n for n in hits if n not in picked]
    return picked


def _kl(out: object, ref: object) -> float:
    """How far ``out`` moved from ``ref``: the KL divergence of a classifier's softmax;
    for several outputs (a detector's head), the sum of each one's squared error relative
    to its energy."""
    outs, refs = output_tensors(out), output_tensors(ref)
    if len(outs) == 1:
        return float(
            nn.functional.kl_div(
                outs[0].log_softmax(1), refs[0].log_softmax(1), log_target=True,
                reduction="batchmean",
            )
        )  # fmt: skip
    return sum(
        float((o - r).pow(2).sum() / r.pow(2).sum().clamp_min(1e-12))
        for o, r in zip(outs, refs, strict=True)
    )


@torch.no_grad()
def weight_sensitivity(model: nn.Module, bits: int, batches: list[Tensor]) -> dict[str, float]:
    """Per layer, the KL divergence of the outputs when only its weights go to ``bits``
    (its learned scales moved to that width, as the ladder moves them), most sensitive
    first. The model is left as it was."""
    was_training = model.training
    model.eval()
    refs = [model(x) for x in batches]
    scores: dict[str, float] = {}
    for name, layer in weight_layers(model).items():
        q = layer.w_quant
        if q.bits <= bits:
            continue
        saved = (q.bits, q.scale.detach().clone(), q.zero_point.clone())
        q.set_bits(bits)
        scores[name] = sum(_kl(model(x), r) for x, r in zip(batches, refs, strict=True)) / len(
            batches
        )
        q.bits = saved[0]
        q.scale.data.copy_(saved[1])
        q.zero_point.copy_(saved[2])
    model.train(was_training)
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def keep_map(
    model: nn.Module,
    patterns: Iterable[str] = (),
    *,
    sensitive: int = 0,
    bits: int = 4,
    keep_bits: int = 8,
    batches: list[Tensor] | None = None,
) -> tuple[dict[str, int], dict[str, float]]:
    """Layer name -> the weight bits it keeps (``keep_bits``): those ``patterns`` name plus
    the ``sensitive`` most sensitive at ``bits``; and the sensitivities measured."""
    keep = dict.fromkeys(match_layers(model, patterns), keep_bits)
    scores: dict[str, float] = {}
    if sensitive:
        if not batches:
            raise ConfigError("quantize.sensitive_layers: needs validation inputs to measure on")
        scores = weight_sensitivity(model, bits, batches)
        for name in [n for n in scores if n not in keep][:sensitive]:
            keep[name] = keep_bits
    return keep, scores
