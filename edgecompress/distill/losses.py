"""Distillation losses, one registry, combined with weights in the recipe.

- response-based: ``ce`` (hard labels), ``kd`` (softened logits, Hinton et al. 2015);
- feature-based: ``hint`` (FitNets, Romero et al. 2015: regress the teacher's feature maps
  through a 1x1 adapter where channel counts differ), ``attention`` (attention transfer,
  Zagoruyko & Komodakis 2017);
- relation-based: ``similarity`` (the batch's cosine-similarity matrix of embeddings,
  Tung & Mori 2019), ``rkd_distance`` and ``rkd_angle`` (Park et al. 2019).

Each loss is zero when the student computes what the teacher does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from edgecompress.distill.config import LossConfig
from edgecompress.registry import Registry


@dataclass
class Batch:
    """What a loss may look at for one batch."""

    labels: Tensor
    student_logits: Tensor
    teacher_logits: Tensor | None = None
    # Matched feature maps, student (already through its adapter) and teacher, same order.
    student_features: list[Tensor] = field(default_factory=list)
    teacher_features: list[Tensor] = field(default_factory=list)


class Loss:
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(self, b: Batch) -> Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("distillation loss")


def register_loss(cls: type[Loss]) -> type[Loss]:
    LOSSES.register(cls.name)(cls)
    return cls


@register_loss
class HardLabels(Loss):
    name = "ce"
    needs_teacher = False

    def __call__(self, b: Batch) -> Tensor:
        return F.cross_entropy(b.student_logits, b.labels)


@register_loss
class SoftLogits(Loss):
    """KL(teacher || student) on logits softened by T, scaled by T^2 so its gradients keep
    the same size as the hard-label loss's when T changes."""

    name = "kd"

    def __call__(self, b: Batch) -> Tensor:
        assert b.teacher_logits is not None
        t = self.cfg.temperature
        log_p_s = F.log_softmax(b.student_logits.float() / t, dim=1)
        log_p_t = F.log_softmax(b.teacher_logits.float() / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@register_loss
class Hint(Loss):
    """Mean squared error between adapted student and teacher feature maps."""

    name = "hint"
    needs_features = True

    def __call__(self, b: Batch) -> Tensor:
        terms = [
            F.mse_loss(s.float(), t.float())
            for s, t in zip(b.student_features, b.teacher_features, strict=True)
        ]
        return torch.stack(terms).mean()


def attention_map(f: Tensor, p: float) -> Tensor:
    """Spatial attention: channel-mean of |f|^p, flattened and L2-normalised per sample."""
    return F.normalize(f.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_loss
class Attention(Loss):
    name = "attention"
    needs_features = True

    def __call__(self, b: Batch) -> Tensor:
        terms = []
        for s, t in zip(b.student_features, b.teacher_features, strict=True):
            if s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, (t.shape[-2], t.shape[-1]))
            terms.append(
                (attention_map(s, self.cfg.p) - attention_map(t, self.cfg.p)).pow(2).sum(1).mean()
            )
        return torch.stack(terms).mean()


def embedding(f: Tensor) -> Tensor:
    """A sample's embedding: a 4D feature map pooled over space, else flattened."""
    return f.float().mean(dim=(2, 3)) if f.dim() == 4 else f.float().flatten(1)


def _relation_inputs(b: Batch) -> list[tuple[Tensor, Tensor]]:
    # The last matched stage if features are tapped, else the logits: both describe a sample.
    if b.student_features:
        return [(embedding(b.student_features[-1]), embedding(b.teacher_features[-1]))]
    assert b.teacher_logits is not None
    return [(b.student_logits.float(), b.teacher_logits.float())]


@register_loss
class Similarity(Loss):
    """Match the batch's cosine-similarity matrices (which samples look alike).

    Embeddings are centred on the batch mean first: post-ReLU embeddings are all positive
    and nearly parallel, so raw cosines sit near 1 and carry almost no signal."""

    name = "similarity"

    def __call__(self, b: Batch) -> Tensor:
        terms = []
        for s, t in _relation_inputs(b):
            s, t = s - s.mean(0, keepdim=True), t - t.mean(0, keepdim=True)
            gs, gt = F.normalize(s, dim=1), F.normalize(t, dim=1)
            terms.append(F.mse_loss(gs @ gs.T, gt @ gt.T))
        return torch.stack(terms).mean()


def _pairwise_distance(e: Tensor) -> Tensor:
    d = torch.cdist(e, e)
    mean = d[d > 0].mean() if (d > 0).any() else d.new_tensor(1.0)
    return d / mean


@register_loss
class RkdDistance(Loss):
    """Match pairwise distances, each set normalised by its mean distance."""

    name = "rkd_distance"

    def __call__(self, b: Batch) -> Tensor:
        terms = [
            F.smooth_l1_loss(_pairwise_distance(s), _pairwise_distance(t).detach())
            for s, t in _relation_inputs(b)
        ]
        return torch.stack(terms).mean()


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i, unit
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of the angle at each vertex


@register_loss
class RkdAngle(Loss):
    """Match the angles formed by every triplet of samples."""

    name = "rkd_angle"

    def __call__(self, b: Batch) -> Tensor:
        terms = [F.smooth_l1_loss(_angles(s), _angles(t).detach()) for s, t in _relation_inputs(b)]
        return torch.stack(terms).mean()


def build_losses(configs: list[LossConfig]) -> list[Loss]:
    return [LOSSES.get(c.name)(c) for c in configs]


def combined(losses: list[Loss], b: Batch) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum and each term's value (for the progress bar and the report)."""
    total = b.student_logits.new_zeros(())
    parts: dict[str, float] = {}
    for loss in losses:
        value = loss(b)
        parts[loss.name] = float(value.detach())
        total = total + loss.cfg.weight * value
    return total, parts
