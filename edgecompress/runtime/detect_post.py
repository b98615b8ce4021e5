"""Post-processing of a YOLOv8-style anchor-free head cut before its decoding, in NumPy.

The exported model ends at the convolutions (what an NPU runs well); per stride level it
outputs box-distribution logits (``4 * reg_max`` bins: left, top, right, bottom, in that
order) and class logits. This module does the rest on the host or the board: sigmoid class
scores, confidence threshold, DFL (softmax over the bins -> expected distance in grid
cells), grid-cell centres + distances * stride -> xyxy, class-aware NMS, the detection
limit, and the mapping back through the letterbox into the original image's pixels.

:func:`decode_yolov8` is vectorised; :func:`decode_yolov8_per_box` computes the same
detections with Python loops over cells and boxes: the benchmark's baseline and the tests'
reference. Numpy only: it must run on a board without torch, on the Python 3.8 some
boards ship (the agent's stream job decodes with it).

>>> lb = letterbox_geometry(width=640, height=480, size=(640, 640))
>>> lb.scale, lb.pad_x, lb.pad_y
(1.0, 0, 80)
>>> dets = decode_yolov8(box_logits, cls_logits, (8, 16, 32), letterbox=lb)  # doctest: +SKIP
>>> dets.boxes.shape, dets.scores.shape, dets.classes.shape  # doctest: +SKIP
((N, 4), (N,), (N,))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# A box with no area has an IoU of 0 with anything (its union is clamped to this).
_MIN_UNION = 1e-12


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``width`` x ``height`` pixels sits in a letterboxed model input:
    resized by ``scale`` (aspect kept), then padded by ``pad_x`` on the left and ``pad_y``
    at the top."""

    width: int
    height: int
    scale: float
    pad_x: int
    pad_y: int


def letterbox_geometry(width: int, height: int, size: int | tuple[int, int]) -> Letterbox:
    """The letterbox of a ``width`` x ``height`` image into ``size`` (``(height, width)``
    or one side): the same geometry as ``PreprocessSpec(resize="letterbox")``, so every
    runtime sees the same input. The resized image is ``round(width * scale)`` x
    ``round(height * scale)``, centred (odd padding puts the extra pixel right/bottom)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if width <= 0 or height <= 0 or out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"letterbox of a {width}x{height} image into {out_w}x{out_h}: sizes must be positive"
        )
    scale = min(out_h / height, out_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return Letterbox(width, height, scale, (out_w - new_w) // 2, (out_h - new_h) // 2)


def to_letterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """xyxy boxes in the original image's pixels -> the letterboxed input's pixels."""
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float64)
    return np.asarray(boxes, np.float64).reshape(-1, 4) * lb.scale + pad


def from_letterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """xyxy boxes in the letterboxed input's pixels -> the original image's pixels, clipped
    to the image (a box reaching into the padding ends at the image's edge)."""
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float64)
    out = (np.asarray(boxes, np.float64).reshape(-1, 4) - pad) / lb.scale
    np.clip(out[:, 0::2], 0.0, lb.width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, lb.height, out=out[:, 1::2])
    return out


@dataclass(frozen=True)
class PostConfig:
    """The thresholds: YOLOv8's prediction defaults (use ``conf=0.001`` and
    ``multi_label=True`` to measure mAP, as its validation does)."""

    conf: float = 0.25  # keep a (box, class) whose sigmoid score is above this
    iou: float = 0.7  # NMS: drop a box overlapping a better box of its class by more
    max_det: int = 300  # at most this many detections per image, best first
    max_candidates: int = 30000  # NMS sees at most this many boxes, the best scored
    multi_label: bool = False  # a cell may give one box per class above conf, not only its best

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf < 1.0:
            raise ValueError(f"PostConfig.conf must be in [0, 1), got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"PostConfig.iou must be in [0, 1], got {self.iou}")
        if self.max_det < 1 or self.max_candidates < 1:
            raise ValueError("PostConfig.max_det and max_candidates must be at least 1")

    def logit_threshold(self) -> float:
        """``conf`` as a logit (sigmoid is monotone, so cells are thresholded before any
        sigmoid), rounded to float32 so that both implementations compare float32 logits
        against the same number."""
        if self.conf == 0.0:
            return -math.inf
        return float(np.float32(math.log(self.conf / (1.0 - self.conf))))


@dataclass(frozen=True)
class Detections:
    """One image's detections, best score first: ``boxes`` xyxy (N x 4, pixels),
    ``scores`` in (0, 1), ``classes`` (class indices)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class _Level:
    boxes: np.ndarray  # (4 * reg_max, H * W)
    classes: np.ndarray  # (classes, H * W)
    width: int  # W, to find a cell's column
    stride: int


def _levels(
    box_logits: Sequence[np.ndarray], cls_logits: Sequence[np.ndarray], strides: Sequence[int]
) -> tuple[list[_Level], int]:
    """The per-level outputs, checked and flattened to (channels, cells); and reg_max."""
    if not len(box_logits) == len(cls_logits) == len(strides) or not strides:
        raise ValueError(
            f"decode_yolov8: {len(box_logits)} box outputs, {len(cls_logits)} class outputs "
            f"and {len(strides)} strides; expected one of each per stride level"
        )
    levels, reg_max, nc, extent = [], 0, 0, None
    # No zip(strict=): the on-device agent runs this on 3.8; the lengths are checked above.
    for k, (b, c, s) in enumerate(zip(box_logits, cls_logits, strides)):  # noqa: B905
        b, c = np.asarray(b), np.asarray(c)
        b = b[0] if b.ndim == 4 and b.shape[0] == 1 else b
        c = c[0] if c.ndim == 4 and c.shape[0] == 1 else c
        if b.ndim != 3 or c.ndim != 3 or b.shape[1:] != c.shape[1:] or b.shape[0] % 4:
            raise ValueError(
                f"decode_yolov8: level {k} (stride {s}): box output {b.shape} and class output "
                f"{c.shape}; expected (4*reg_max, H, W) and (classes, H, W), batch 1 allowed"
            )
        if k and (b.shape[0] // 4 != reg_max or c.shape[0] != nc):
            raise ValueError(
                f"decode_yolov8: level {k} has reg_max {b.shape[0] // 4} and {c.shape[0]} "
                f"classes, level 0 has {reg_max} and {nc}"
            )
        reg_max, nc = b.shape[0] // 4, c.shape[0]
        if extent is not None and extent != (b.shape[1] * s, b.shape[2] * s):
            raise ValueError(
                f"decode_yolov8: level {k}: a {b.shape[1]}x{b.shape[2]} grid at stride {s} "
                f"does not cover the {extent[0]}x{extent[1]} input the previous levels cover"
            )
        extent = (b.shape[1] * s, b.shape[2] * s)
        levels.append(_Level(b.reshape(b.shape[0], -1), c.reshape(nc, -1), b.shape[2], int(s)))
    return levels, reg_max


# -- vectorised --------------------------------------------------------------------------


def decode_yolov8(
    box_logits: Sequence[np.ndarray],
    cls_logits: Sequence[np.ndarray],
    strides: Sequence[int] = (8, 16, 32),
    config: PostConfig | None = None,
    letterbox: Letterbox | None = None,
) -> Detections:
    """Detections of one image from the head's raw outputs, one ``(4 * reg_max, H, W)``
    box output and one ``(classes, H, W)`` class output per stride level (a leading batch
    dimension of 1 is allowed). Boxes are in the model input's pixels, or in the original
    image's when its ``letterbox`` is given."""
    cfg = config or PostConfig()
    levels, reg_max = _levels(box_logits, cls_logits, strides)
    thr = cfg.logit_threshold()
    cand: list[tuple[np.ndarray, ...]] = []  # (anchor, class, logit, box) per level
    base = 0
    for lv in levels:
        c = lv.classes
        if cfg.multi_label:
            cls_idx, cell = np.nonzero(c > thr)
            logit = c[cls_idx, cell]
        else:
            best = c.argmax(axis=0)
            cell = np.flatnonzero(c[best, np.arange(c.shape[1])] > thr)
            cls_idx, logit = best[cell], c[best[cell], cell]
        # A cell's box is decoded once, however many of its classes pass.
        cells, back = np.unique(cell, return_inverse=True) if cfg.multi_label else (cell, None)
        xyxy = _dfl_boxes(lv.boxes[:, cells], cells, lv.width, lv.stride, reg_max)
        xyxy = xyxy if back is None else xyxy[back]
        cand.append((cell + base, cls_idx, logit, xyxy))
        base += c.shape[1]
    anchor, cls, logit, xyxy = (np.concatenate(parts) for parts in zip(*cand))  # noqa: B905
    scores = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
    # Best first; ties by anchor then class, as the per-box version's stable sort gives.
    order = np.lexsort((cls, anchor, -scores))[: cfg.max_candidates]
    keep = _nms(xyxy[order], scores[order], cls[order], cfg.iou, cfg.max_det)
    idx = order[keep]
    out = xyxy[idx] if letterbox is None else from_letterbox(xyxy[idx], letterbox)
    return Detections(out, scores[idx], cls[idx].astype(np.int64))


def _dfl_boxes(
    logits: np.ndarray, cell: np.ndarray, width: int, stride: int, reg_max: int
) -> np.ndarray:
    """xyxy boxes (input pixels) of the cells ``cell`` of one level from their box logits
    (``4 * reg_max`` x n): DFL softmax -> expected distance in cells, around the cell's
    centre, times the stride."""
    x = logits.astype(np.float64).reshape(4, reg_max, -1)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    dist = (e * np.arange(reg_max, dtype=np.float64)[:, None]).sum(axis=1) / e.sum(axis=1)
    cx = (cell % width).astype(np.float64) + 0.5
    cy = (cell // width).astype(np.float64) + 0.5
    return np.stack(
        [
            (cx - dist[0]) * stride,
            (cy - dist[1]) * stride,
            (cx + dist[2]) * stride,
            (cy + dist[3]) * stride,
        ],
        axis=1,
    )


def _nms(
    boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou: float, max_det: int
) -> np.ndarray:
    """Greedy class-aware NMS over boxes sorted best first; indices kept, best first.

    One pass in score order that stops at ``max_det`` kept; each kept box computes one
    vectorised IoU row against the boxes of its own class that come after it and are
    still alive, so a step costs the size of its class, not of all candidates."""
    n = len(scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    by_class = np.argsort(cls, kind="stable")  # grouped by class, best first inside
    where = np.empty(n, np.int64)
    where[by_class] = np.arange(n)
    group_end = np.searchsorted(cls[by_class], cls[by_class], side="right")
    alive = np.ones(n, bool)
    keep: list[int] = []
    i = 0
    while i < n and len(keep) < max_det:
        keep.append(i)
        later = by_class[where[i] + 1 : group_end[where[i]]]
        later = later[alive[later]]
        w = np.minimum(boxes[i, 2], boxes[later, 2]) - np.maximum(boxes[i, 0], boxes[later, 0])
        h = np.minimum(boxes[i, 3], boxes[later, 3]) - np.maximum(boxes[i, 1], boxes[later, 1])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        alive[later[inter / np.maximum(area[i] + area[later] - inter, _MIN_UNION) > iou]] = False
        nxt = np.flatnonzero(alive[i + 1 :])
        i = i + 1 + int(nxt[0]) if nxt.size else n
    return np.asarray(keep, dtype=np.int64)


# -- per box (the baseline) --------------------------------------------------------------


def decode_yolov8_per_box(
    box_logits: Sequence[np.ndarray],
    cls_logits: Sequence[np.ndarray],
    strides: Sequence[int] = (8, 16, 32),
    config: PostConfig | None = None,
    letterbox: Letterbox | None = None,
) -> Detections:
    """:func:`decode_yolov8` written with Python loops over cells, classes and boxes on
    Python floats (the arrays are read as lists first), as post-processing is often
    written for a board. The same detections; the baseline the vectorised version is
    measured against."""
    cfg = config or PostConfig()
    levels, reg_max = _levels(box_logits, cls_logits, strides)
    thr = cfg.logit_threshold()
    cands: list[tuple[float, int, int, list[float]]] = []  # (score, anchor, class, xyxy)
    base = 0
    for lv in levels:
        rows = lv.classes.T.tolist()  # per cell, its class logits
        for cell, row in enumerate(rows):
            hits = _cell_hits(row, thr, cfg.multi_label)
            if not hits:
                continue
            box = _dfl_box(lv.boxes[:, cell].tolist(), cell, lv.width, lv.stride, reg_max)
            for cls, v in hits:
                cands.append((1.0 / (1.0 + math.exp(-v)), base + cell, cls, box))
        base += len(rows)
    cands.sort(key=lambda t: (-t[0], t[1], t[2]))
    kept = _nms_per_box(cands[: cfg.max_candidates], cfg.iou, cfg.max_det)
    boxes = [_unletterbox_box(box, letterbox) for _, _, _, box in kept]
    return Detections(
        np.array(boxes, np.float64).reshape(-1, 4),
        np.array([t[0] for t in kept], np.float64),
        np.array([t[2] for t in kept], np.int64),
    )


def _cell_hits(row: list[float], thr: float, multi_label: bool) -> list[tuple[int, float]]:
    if multi_label:
        return [(j, v) for j, v in enumerate(row) if v > thr]
    best, best_v = 0, row[0]
    for j, v in enumerate(row):
        if v > best_v:
            best, best_v = j, v
    return [(best, best_v)] if best_v > thr else []


def _dfl_box(logits: list[float], cell: int, width: int, stride: int, reg_max: int) -> list[float]:
    dist = []
    for side in range(4):
        bins = logits[side * reg_max : (side + 1) * reg_max]
        top = max(bins)
        e = [math.exp(v - top) for v in bins]
        dist.append(sum(p * i for i, p in enumerate(e)) / sum(e))
    cx, cy = cell % width + 0.5, cell // width + 0.5
    return [
        (cx - dist[0]) * stride,
        (cy - dist[1]) * stride,
        (cx + dist[2]) * stride,
        (cy + dist[3]) * stride,
    ]


def _nms_per_box(
    cands: list[tuple[float, int, int, list[float]]], iou: float, max_det: int
) -> list[tuple[float, int, int, list[float]]]:
    kept: list[tuple[float, int, int, list[float]]] = []
    suppressed = [False] * len(cands)
    for i, (_, _, cls, a) in enumerate(cands):
        if suppressed[i]:
            continue
        kept.append(cands[i])
        if len(kept) == max_det:
            break
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        for j in range(i + 1, len(cands)):
            if suppressed[j] or cands[j][2] != cls:
                continue
            b = cands[j][3]
            w = min(a[2], b[2]) - max(a[0], b[0])
            h = min(a[3], b[3]) - max(a[1], b[1])
            inter = max(w, 0.0) * max(h, 0.0)
            area_b = (b[2] - b[0]) * (b[3] - b[1])
            if inter / max(area_a + area_b - inter, _MIN_UNION) > iou:
                suppressed[j] = True
    return kept


def _unletterbox_box(box: list[float], lb: Letterbox | None) -> list[float]:
    if lb is None:
        return box
    x1, y1, x2, y2 = (
        (v - p) / lb.scale
        for v, p in zip(box, (lb.pad_x, lb.pad_y) * 2)  # noqa: B905
    )
    return [
        min(max(x1, 0.0), lb.width),
        min(max(y1, 0.0), lb.height),
        min(max(x2, 0.0), lb.width),
        min(max(y2, 0.0), lb.height),
    ]
