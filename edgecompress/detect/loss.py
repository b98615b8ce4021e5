"""The training loss of the YOLOv8-style detector: a task-aligned assigner picks, per object,
the cells whose predictions already fit it best, then BCE on the classes (soft targets:
the alignment, scaled to the object's best IoU), CIoU on the boxes and DFL on the box
distributions, weighted 7.5 (box), 0.5 (class), 1.5 (DFL) as YOLOv8 does.

Boxes are xyxy in the model input's pixels (letterboxed). Vectorised over the batch, the
objects and the cells; runs on the CPU.

>>> loss_fn = DetectionLoss(num_classes=10)
>>> targets = Targets.from_lists([boxes_img0, boxes_img1], [classes_img0, classes_img1])
... # doctest: +SKIP
>>> loss, parts = loss_fn(model(x), targets)  # doctest: +SKIP
>>> loss.backward()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgecompress.detect.model import STRIDES, split_outputs

_EPS = 1e-9


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the assigner's settings (YOLOv8's defaults)."""

    box: float = 7.5  # CIoU term
    cls: float = 0.5  # BCE term
    dfl: float = 1.5  # distribution focal loss term
    topk: int = 10  # at most this many cells per object
    alpha: float = 0.5  # alignment = class score ** alpha * IoU ** beta
    beta: float = 6.0


@dataclass(frozen=True)
class Targets:
    """The objects of a batch, padded to the most objects in one image: ``boxes`` (B, M, 4)
    xyxy in input pixels, ``classes`` (B, M), ``valid`` (B, M) marks real objects."""

    boxes: Tensor
    classes: Tensor
    valid: Tensor

    @classmethod
    def from_lists(cls, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray]) -> Targets:
        """One (N_i x 4) box array and one (N_i) class array per image."""
        m = max((len(c) for c in classes), default=0)
        b = torch.zeros(len(boxes), max(m, 1), 4)
        c = torch.zeros(len(boxes), max(m, 1), dtype=torch.long)
        v = torch.zeros(len(boxes), max(m, 1), dtype=torch.bool)
        for i, (bx, cl) in enumerate(zip(boxes, classes, strict=True)):
            n = len(cl)
            b[i, :n] = torch.as_tensor(np.asarray(bx, np.float32).reshape(-1, 4))
            c[i, :n] = torch.as_tensor(np.asarray(cl, np.int64))
            v[i, :n] = True
        return cls(b, c, v)


@dataclass(frozen=True)
class Assignment:
    """Per cell (B, A): ``fg`` whether it is a positive, ``gt`` the object it is assigned
    (an index into the image's objects; meaningless where not ``fg``), ``boxes`` (B, A, 4)
    that object's box, ``scores`` (B, A, classes) the soft class targets."""

    fg: Tensor
    gt: Tensor
    boxes: Tensor
    scores: Tensor


def anchor_points(
    shapes: Sequence[tuple[int, int]], strides: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Every cell's centre in input pixels (A, 2: x, y) and its stride (A,), level by
    level, row-major: the cell order of the flattened head outputs."""
    points, steps = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s)
        steps.append(torch.full((h * w,), float(s)))
    return torch.cat(points), torch.cat(steps)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes, broadcast over the leading dimensions."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + _EPS)


def complete_iou(a: Tensor, b: Tensor) -> Tensor:
    """CIoU of matching xyxy boxes (N x 4 each): IoU minus the squared centre distance over
    the squared diagonal of the enclosing box, minus the aspect-ratio term ``alpha * v``
    (``alpha`` held constant in the gradient, as in the CIoU paper)."""
    iou = box_iou(a, b)
    cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
    ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    diag = cw**2 + ch**2 + _EPS
    dx = (a[:, 0] + a[:, 2] - b[:, 0] - b[:, 2]) / 2
    dy = (a[:, 1] + a[:, 3] - b[:, 1] - b[:, 3]) / 2
    wa, ha = a[:, 2] - a[:, 0], (a[:, 3] - a[:, 1]).clamp(min=_EPS)
    wb, hb = b[:, 2] - b[:, 0], (b[:, 3] - b[:, 1]).clamp(min=_EPS)
    v = (4 / math.pi**2) * (torch.atan(wb / hb) - torch.atan(wa / ha)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + _EPS)
    return iou - (dx**2 + dy**2) / diag - alpha * v


@torch.no_grad()
def assign(
    scores: Tensor, boxes: Tensor, points: Tensor, targets: Targets, cfg: LossConfig
) -> Assignment:
    """The task-aligned assignment. ``scores`` (B, A, classes) are the predicted class
    probabilities, ``boxes`` (B, A, 4) the predicted boxes (pixels), ``points`` (A, 2) the
    cell centres.

    A cell may serve an object only when its centre lies inside the object's box; among
    those the ``topk`` with the largest alignment ``score[class] ** alpha * IoU ** beta``
    are positives. A cell chosen by several objects keeps the one its box overlaps most.
    Its class target is the alignment scaled so that the object's best cell gets that
    cell's IoU (a well-placed box earns a confident score; a poor one, a modest one)."""
    b, m = targets.classes.shape
    a, nc = scores.shape[1], scores.shape[2]
    gt = targets.boxes  # (B, M, 4)
    px, py = points[:, 0], points[:, 1]  # (A,)
    inside = (
        torch.stack(
            [
                px - gt[..., 0:1],
                py - gt[..., 1:2],
                gt[..., 2:3] - px,
                gt[..., 3:4] - py,
            ],
            -1,
        ).amin(-1)
        > _EPS
    ) & targets.valid[..., None]  # (B, M, A)
    iou = box_iou(gt[:, :, None, :], boxes[:, None, :, :]) * inside  # (B, M, A)
    cls_score = scores.gather(2, targets.classes[:, None, :].expand(b, a, m)).transpose(1, 2)
    align = cls_score.pow(cfg.alpha) * iou.pow(cfg.beta) * inside
    k = min(cfg.topk, a)
    top = align.topk(k, dim=-1).indices  # (B, M, k)
    chosen = torch.zeros_like(inside).scatter_(-1, top, True) & inside
    # A cell claimed by several objects goes to the one it overlaps most.
    many = chosen.sum(1, keepdim=True) > 1  # (B, 1, A)
    best = F.one_hot(torch.where(chosen, iou, -1.0).argmax(1), m).transpose(1, 2).bool()
    chosen = torch.where(many, best, chosen)
    fg = chosen.any(1)  # (B, A)
    gt_idx = chosen.float().argmax(1)  # (B, A)
    align = align * chosen
    iou = iou * chosen
    norm = align * iou.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + _EPS)
    norm = norm.amax(1)  # (B, A)
    labels = targets.classes.gather(1, gt_idx)
    target_scores = F.one_hot(labels, nc).float() * (norm * fg)[..., None]
    target_boxes = gt.gather(1, gt_idx[..., None].expand(b, a, 4))
    return Assignment(fg, gt_idx, target_boxes, target_scores)


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss per box (N,): for each side, cross-entropy towards the two
    bins around the target distance (``target``, N x 4, in bins), weighted by how close
    each is; averaged over the four sides. ``logits`` is (N, 4, reg_max)."""
    left = target.floor().long()
    w_right = target - left
    logp = F.log_softmax(logits, dim=-1)
    right = (left + 1).clamp(max=logits.shape[-1] - 1)
    ce_left = -logp.gather(-1, left[..., None])[..., 0]
    ce_right = -logp.gather(-1, right[..., None])[..., 0]
    return (ce_left * (1 - w_right) + ce_right * w_right).mean(-1)


class DetectionLoss:
    """``loss(outputs, targets) -> (total, parts)``: ``outputs`` the detector's raw head
    outputs (see :mod:`edgecompress.detect.model`), ``parts`` the unweighted box, class
    and DFL terms (floats, for logging). Each term is normalised by the sum of the soft
    class targets, so it does not grow with the batch size."""

    def __init__(
        self,
        num_classes: int,
        reg_max: int = 16,
        strides: Sequence[int] = STRIDES,
        cfg: LossConfig | None = None,
    ) -> None:
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.cfg = cfg or LossConfig()
        self._grid: tuple[tuple[tuple[int, int], ...], Tensor, Tensor] | None = None

    def _anchors(self, shapes: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
        if self._grid is None or self._grid[0] != shapes:
            self._grid = (shapes, *anchor_points(shapes, self.strides))
        return self._grid[1], self._grid[2]

    def __call__(
        self, outputs: Sequence[Tensor], targets: Targets
    ) -> tuple[Tensor, dict[str, float]]:
        box_out, cls_out = split_outputs(outputs)
        n, r, nc = box_out[0].shape[0], self.reg_max, self.num_classes
        if box_out[0].shape[1] != 4 * r or cls_out[0].shape[1] != nc:
            raise ValueError(
                f"DetectionLoss for {nc} classes, reg_max {r}: the head gives "
                f"{box_out[0].shape[1]} box and {cls_out[0].shape[1]} class channels"
            )
        shapes = tuple((int(o.shape[2]), int(o.shape[3])) for o in box_out)
        points, stride = self._anchors(shapes)
        dist_logits = torch.cat([o.flatten(2) for o in box_out], 2)  # (B, 4R, A)
        dist_logits = dist_logits.view(n, 4, r, -1).permute(0, 3, 1, 2)  # (B, A, 4, R)
        cls_logits = torch.cat([o.flatten(2) for o in cls_out], 2).transpose(1, 2)  # (B, A, C)
        bins = torch.arange(r, dtype=dist_logits.dtype)
        dist = (dist_logits.softmax(-1) * bins).sum(-1)  # (B, A, 4), in cells
        pix = dist * stride[:, None]
        boxes = torch.cat([points - pix[..., :2], points + pix[..., 2:]], -1)

        found = assign(cls_logits.detach().sigmoid(), boxes.detach(), points, targets, self.cfg)
        norm = found.scores.sum().clamp(min=1.0)
        cls_loss = (
            F.binary_cross_entropy_with_logits(cls_logits, found.scores, reduction="sum") / norm
        )
        fg = found.fg
        if fg.any():
            weight = found.scores.sum(-1)[fg]
            ciou = complete_iou(boxes[fg], found.boxes[fg])
            box_loss = ((1.0 - ciou) * weight).sum() / norm
            pts = points.expand(n, -1, -1)[fg]
            gt = found.boxes[fg]
            ltrb = (
                torch.cat([pts - gt[:, :2], gt[:, 2:] - pts], -1)
                / stride.expand(n, -1)[fg][:, None]
            )
            ltrb = ltrb.clamp(0, r - 1 - 0.01)
            dfl = (dfl_loss(dist_logits[fg], ltrb) * weight).sum() / norm
        else:
            box_loss = dfl = dist_logits.sum() * 0.0
        c = self.cfg
        total = c.box * box_loss + c.cls * cls_loss + c.dfl * dfl
        parts = {"box": box_loss.item(), "cls": cls_loss.item(), "dfl": dfl.item()}
        return total, parts
