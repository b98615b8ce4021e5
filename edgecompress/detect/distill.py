"""Distillation for the YOLOv8-style detector: FGD on the neck's features plus response
distillation on the head, for recovering a pruned detector from the original.

FGD (Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022),
on each neck output (strides 8, 16, 32), teacher features ``T`` and the student's ``S``
passed through ``f`` (a 1x1 convolution where their channel counts differ, else nothing):

- masks from the ground-truth boxes: ``M`` is 1 on the cells a box covers; the scale
  ``S_ij`` is ``1 / (box area in cells)`` there (the smallest box where several cover a
  cell) and ``1 / (number of background cells)`` elsewhere, so every object weighs as
  much as the whole background, whatever its size;
- attention from the teacher: spatial ``A_s = H W softmax(mean_c |T| / temperature)``,
  channel ``A_c = C softmax(mean_hw |T| / temperature)``;
- focal feature loss ``alpha * sum(M S A_s A_c (T - f(S))^2) + beta * sum((1 - M) S A_s A_c
  (T - f(S))^2)``, and attention loss ``gamma * (|A_s(T) - A_s(f(S))|_1 + |A_c(T) -
  A_c(f(S))|_1)``;
- global relation loss ``lambda * sum((R(T) - R(f(S)))^2)``, ``R`` a GcBlock (Cao et al.,
  "GCNet", 2019): attention pooling to one context vector per image, a bottleneck
  transform (1x1 convolution, LayerNorm, ReLU, 1x1 convolution), added to every cell.
  One block per level serves both networks (the paper's ``R`` is one function), so the
  term is exactly zero when the student's features are the teacher's; its last
  convolution starts at zero (``R`` starts as the identity, as in GCNet).

Response distillation on the head's raw outputs: class logits by the binary KL between
the teacher's and the student's sigmoids (BCE against the teacher's probabilities minus
the teacher's own entropy, so it is zero at a match), and the DFL bins by the KL between
the teacher's and the student's softmax over the bins at ``dfl_temperature`` (times
``temperature ** 2``), each cell weighted by the teacher's highest class probability (its
box distribution means something only where it sees an object). Both are normalised by
the sum of those weights, as :class:`~edgecompress.detect.loss.DetectionLoss` normalises
by its soft targets.

Every sum runs over channels, cells and levels and is averaged over the images of the
batch. The weights: see :class:`DetectDistillConfig`.

>>> distiller = DetectionDistiller(student, teacher)  # doctest: +SKIP
>>> step = distiller(x, targets)  # doctest: +SKIP
>>> loss = detection_loss(step.outputs, targets)[0] + step.loss  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.detect.loss import Targets
from edgecompress.detect.model import YoloDetector, split_outputs

FEATURE_TERMS = ("fgd_fg", "fgd_bg", "fgd_att", "fgd_global")
RESPONSE_TERMS = ("kd_cls", "kd_dfl")


@dataclass(frozen=True)
class DetectDistillConfig:
    """Weights of the distillation terms (each multiplies the unweighted term that the
    training history records under the same name).

    The paper's weights for anchor-free one-stage detectors are alpha 1.6e-3, beta 8e-4,
    gamma 8e-4, lambda 8e-6 (temperature 0.5); its sums run over 256-channel FPN maps of
    800-pixel images, so their size does not carry over. Kept here: the paper's ratios
    (beta = gamma = alpha / 2, lambda = alpha / 200) and its temperature. The common scale
    was measured on the example detector (``fashion_detector``, neck 32/64/128 channels)
    pruned to 56% of its MACs (neck 16/48/120), on its first four training batches of 16
    at 160x160 before any recovery: unweighted, per image, fg 430, bg 140, attention 245,
    global 10,200 (the GcBlock starts as the identity, so this is the plain squared error
    over every cell), against a detection loss of 12.5 (box 0.5, class 11.2, DFL 2.1;
    weighted 3.7 + 5.6 + 3.2). alpha = 5e-3 makes the four feature terms, weighted,
    2.2 + 0.35 + 0.6 + 0.25 = 3.4, about a quarter of the detection loss and the size of
    its box or DFL part: large enough to steer, small enough that the ground truth still
    leads. The response weights repeat the detection loss's class and DFL weights (0.5 and
    1.5), so the teacher's outputs have as much say as the ground truth's targets: the KL
    terms start at cls 16 and DFL 1.7 (weighted 8 and 2.5; 10.5 against the detection
    loss's 12.5). AdamW divides out the overall size of the loss; what these numbers set
    is how the terms share it."""

    alpha: float = 5e-3  # foreground feature term
    beta: float = 2.5e-3  # background feature term
    gamma: float = 2.5e-3  # attention term
    lam: float = 2.5e-5  # global relation term
    temperature: float = 0.5  # of the attention softmaxes
    context_ratio: float = 0.5  # the GcBlock's bottleneck, as a fraction of the channels
    cls: float = 0.5  # class-logit KL
    dfl: float = 1.5  # DFL-bin KL
    dfl_temperature: float = 1.0

    def __post_init__(self) -> None:
        weights = (self.alpha, self.beta, self.gamma, self.lam, self.cls, self.dfl)
        if min(weights) < 0 or self.temperature <= 0 or self.dfl_temperature <= 0:
            raise ValueError(
                f"DetectDistillConfig: weights must be >= 0 and temperatures > 0, got {self}"
            )
        if not 0 < self.context_ratio <= 1:
            raise ValueError(f"context_ratio must be in (0, 1], got {self.context_ratio}")

    @property
    def features(self) -> bool:
        return max(self.alpha, self.beta, self.gamma, self.lam) > 0

    def weight(self, term: str) -> float:
        return {
            "fgd_fg": self.alpha,
            "fgd_bg": self.beta,
            "fgd_att": self.gamma,
            "fgd_global": self.lam,
            "kd_cls": self.cls,
            "kd_dfl": self.dfl,
        }[term]


# The head's outputs only: what distils into a traced (QAT) student, whose neck is inlined.
RESPONSE_ONLY = DetectDistillConfig(alpha=0.0, beta=0.0, gamma=0.0, lam=0.0)


# -- masks and attention -----------------------------------------------------------------


def box_masks(targets: Targets, shape: tuple[int, int], stride: float) -> tuple[Tensor, Tensor]:
    """FGD's scaled foreground and background masks for a ``shape`` (H, W) feature map at
    ``stride`` pixels per cell, each (B, H, W): ``M * S`` and ``(1 - M) * S``.

    A box covers the cells it overlaps (at least one, however small). Each box's cells sum
    to 1 in the foreground mask (less where a smaller box takes a shared cell); an image's
    background cells sum to 1 (0 when boxes cover it all)."""
    h, w = shape
    boxes = targets.boxes / stride  # (B, M, 4) in cells
    lo = boxes[..., :2].floor().clamp(min=0)
    hi = torch.maximum(boxes[..., 2:].ceil(), lo + 1)
    hi = torch.minimum(hi, torch.tensor([float(w), float(h)]))
    xs = torch.arange(w, dtype=boxes.dtype)
    ys = torch.arange(h, dtype=boxes.dtype)
    in_x = (xs >= lo[..., 0:1]) & (xs < hi[..., 0:1])  # (B, M, W)
    in_y = (ys >= lo[..., 1:2]) & (ys < hi[..., 1:2])  # (B, M, H)
    inside = in_y[..., :, None] & in_x[..., None, :] & targets.valid[..., None, None]
    area = ((hi - lo).prod(-1)).clamp(min=1.0)  # (B, M)
    smallest = torch.where(inside, area[..., None, None], torch.inf).amin(1)  # (B, H, W)
    fg = inside.any(1)
    fg_scale = torch.where(fg, 1.0 / smallest, 0.0)
    n_bg = (~fg).flatten(1).sum(1).clamp(min=1).to(boxes.dtype)
    bg_scale = (~fg).to(boxes.dtype) / n_bg[:, None, None]
    return fg_scale, bg_scale


def spatial_attention(f: Tensor, temperature: float) -> Tensor:
    """``H W softmax(mean_c |f| / temperature)`` over the cells: (B, 1, H, W), mean 1."""
    b, _, h, w = f.shape
    g = f.abs().mean(1).reshape(b, h * w)
    return (h * w * F.softmax(g / temperature, dim=1)).reshape(b, 1, h, w)


def channel_attention(f: Tensor, temperature: float) -> Tensor:
    """``C softmax(mean_hw |f| / temperature)`` over the channels: (B, C, 1, 1), mean 1."""
    b, c = f.shape[:2]
    g = f.abs().mean((2, 3))
    return (c * F.softmax(g / temperature, dim=1)).reshape(b, c, 1, 1)


class GlobalContext(nn.Module):
    """GcBlock: ``f + transform(sum_j softmax_j(W_k f) f_j)``, the context added to every
    cell. The transform's last convolution starts at zero, so the block starts as the
    identity."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(channels * ratio))
        self.key = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        last = self.transform[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, f: Tensor) -> Tensor:
        b, c, h, w = f.shape
        weights = F.softmax(self.key(f).reshape(b, 1, h * w), dim=2)  # (B, 1, HW)
        context = torch.bmm(f.reshape(b, c, h * w), weights.transpose(1, 2))  # (B, C, 1)
        return f + self.transform(context.reshape(b, c, 1, 1))


class LevelDistill(nn.Module):
    """The trainable parts for one neck level: the adapter ``f`` (student channels to the
    teacher's; nothing when equal) and the GcBlock ``R``."""

    def __init__(self, student_channels: int, teacher_channels: int, ratio: float) -> None:
        super().__init__()
        self.adapter: nn.Module = (
            nn.Conv2d(student_channels, teacher_channels, 1)
            if student_channels != teacher_channels
            else nn.Identity()
        )
        self.context = GlobalContext(teacher_channels, ratio)

    def forward(
        self, fs: Tensor, ft: Tensor, fg: Tensor, bg: Tensor, temperature: float
    ) -> dict[str, Tensor]:
        """The four unweighted FGD terms, summed over this level, per image."""
        n = fs.shape[0]
        s = self.adapter(fs)
        t = ft.detach()
        att_s, att_c = spatial_attention(t, temperature), channel_attention(t, temperature)
        err = (t - s).pow(2) * att_s * att_c
        at_s, at_c = spatial_attention(s, temperature), channel_attention(s, temperature)
        return {
            "fgd_fg": (err * fg[:, None]).sum() / n,
            "fgd_bg": (err * bg[:, None]).sum() / n,
            "fgd_att": ((att_s - at_s).abs().sum() + (att_c - at_c).abs().sum()) / n,
            "fgd_global": (self.context(t) - self.context(s)).pow(2).sum() / n,
        }


# -- response distillation ---------------------------------------------------------------


def response_terms(
    student: Sequence[Tensor], teacher: Sequence[Tensor], reg_max: int, dfl_temperature: float
) -> dict[str, Tensor]:
    """The unweighted class-logit and DFL-bin KL terms between two heads' raw outputs
    (see the module docstring)."""
    s_box, s_cls = split_outputs(list(student))
    t_box, t_cls = split_outputs(list(teacher))
    n = s_cls[0].shape[0]

    def cells(outs: Sequence[Tensor]) -> Tensor:  # (B, A, channels)
        return torch.cat([o.flatten(2) for o in outs], 2).transpose(1, 2)

    sc, tc = cells(s_cls), cells(t_cls).detach()
    p_t = tc.sigmoid()
    weight = p_t.amax(-1)  # (B, A)
    norm = weight.sum().clamp(min=1.0)
    kl_cls = F.binary_cross_entropy_with_logits(
        sc, p_t, reduction="none"
    ) - F.binary_cross_entropy_with_logits(tc, p_t, reduction="none")
    tau = dfl_temperature
    sb = cells(s_box).reshape(n, -1, 4, reg_max) / tau
    tb = cells(t_box).detach().reshape(n, -1, 4, reg_max) / tau
    log_q, log_p = F.log_softmax(sb, -1), F.log_softmax(tb, -1)
    kl_dfl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1) * tau * tau  # (B, A)
    return {
        "kd_cls": kl_cls.sum() / norm,
        "kd_dfl": (kl_dfl * weight).sum() / norm,
    }


# -- the distiller -----------------------------------------------------------------------


def run_with_neck(model: YoloDetector, x: Tensor) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """The head's outputs and the neck's (n3, n4, n5), caught by a forward hook on
    ``model.neck`` that lives only for this call (a hook left behind would follow the model
    into copies such as the EMA's)."""
    caught: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: Sequence[Tensor]) -> None:
        caught.extend(out)

    handle = model.neck.register_forward_hook(hook)
    try:
        outputs = model(x)
    finally:
        handle.remove()
    return outputs, caught


def neck_channels(model: YoloDetector, size: int = 64) -> list[int]:
    """The channel count of each neck output, read from one forward pass on zeros (in eval
    mode, so no norm statistics move; the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, feats = run_with_neck(model, torch.zeros(1, 3, size, size))
    finally:
        model.train(was)
    return [int(f.shape[1]) for f in feats]


@dataclass
class DistillStep:
    """One batch: the student's head outputs (for the detection loss), the weighted sum of
    the distillation terms, and each term unweighted (floats, for the history)."""

    outputs: tuple[Tensor, ...]
    loss: Tensor
    parts: dict[str, float]


class DetectionDistiller:
    """Runs the student and the (frozen, eval-mode) teacher on a batch and returns the
    student's outputs with the distillation loss. Its own trainable parameters (adapters,
    GcBlocks) are :meth:`parameters`; they belong in the optimiser beside the student's
    and are thrown away after training. The teacher gets no gradient and its mode is
    restored after each call."""

    def __init__(
        self,
        student: YoloDetector,
        teacher: YoloDetector,
        cfg: DetectDistillConfig | None = None,
    ) -> None:
        if (student.num_classes, student.reg_max) != (teacher.num_classes, teacher.reg_max):
            raise ValueError(
                f"student and teacher heads differ: {student.num_classes} classes / reg_max "
                f"{student.reg_max} against {teacher.num_classes} / {teacher.reg_max}; a "
                "teacher for response distillation must predict the same classes and bins"
            )
        self.student, self.teacher = student, teacher
        self.cfg = cfg or DetectDistillConfig()
        self.levels = nn.ModuleList()
        if self.cfg.features:  # response terms alone need no neck: any student will do
            s_ch, t_ch = neck_channels(student), neck_channels(teacher)
            if len(s_ch) != len(t_ch):
                raise ValueError(
                    f"student neck has {len(s_ch)} outputs, the teacher's {len(t_ch)} (a "
                    "traced or QAT student runs its neck without calling model.neck: "
                    "distil it by the response terms alone, feature weights 0)"
                )
            self.levels.extend(
                LevelDistill(s, t, self.cfg.context_ratio) for s, t in zip(s_ch, t_ch, strict=True)
            )

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.levels.parameters()

    def _teacher(self, x: Tensor) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        was = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():
                return run_with_neck(self.teacher, x)
        finally:
            self.teacher.train(was)

    def __call__(self, x: Tensor, targets: Targets) -> DistillStep:
        cfg = self.cfg
        if cfg.features:
            s_out, s_feats = run_with_neck(self.student, x)
        else:
            s_out, s_feats = tuple(self.student(x)), []
        t_out, t_feats = self._teacher(x)
        terms = response_terms(s_out, t_out, self.student.reg_max, cfg.dfl_temperature)
        if cfg.features:
            for level, fs, ft in zip(self.levels, s_feats, t_feats, strict=True):
                h, w = ft.shape[2:]
                fg, bg = box_masks(targets, (h, w), x.shape[3] / w)
                for k, v in level(fs, ft, fg, bg, cfg.temperature).items():
                    terms[k] = terms[k] + v if k in terms else v
        loss = sum((cfg.weight(k) * v for k, v in terms.items()), start=x.new_zeros(()))
        return DistillStep(s_out, loss, {k: float(v.item()) for k, v in terms.items()})
