"""YOLOv8 head decoding and NMS in NumPy: the vectorised and the per-box versions give the
same detections; the decoding follows DFL, grid centres and strides exactly; NMS is
class-aware; nothing of it imports torch (it runs on the board)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from edgecompress.runtime.detect_post import (
    Detections,
    PostConfig,
    decode_yolov8,
    decode_yolov8_per_box,
    letterbox_geometry,
)

STRIDES = (8, 16, 32)
REG_MAX = 16


def _head(
    rng: np.random.Generator, height: int = 64, width: int = 96, classes: int = 7
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random raw outputs of a head at ``height x width`` input: box logits spread over
    the bins, class logits mostly low, so a few dozen cells pass a 0.25 threshold."""
    boxes, scores = [], []
    for s in STRIDES:
        h, w = height // s, width // s
        boxes.append(rng.normal(0, 2, (4 * REG_MAX, h, w)).astype(np.float32))
        scores.append(rng.normal(-3, 1.5, (classes, h, w)).astype(np.float32))
    return boxes, scores


def _assert_same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-9)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_vectorised_and_per_box_agree_on_random_heads(seed: int, multi_label: bool) -> None:
    rng = np.random.default_rng(seed)
    boxes, scores = _head(rng)
    cfg = PostConfig(conf=0.25, iou=0.5, multi_label=multi_label)
    lb = letterbox_geometry(width=150, height=70, size=(64, 96))
    fast = decode_yolov8(boxes, scores, STRIDES, cfg, lb)
    _assert_same(fast, decode_yolov8_per_box(boxes, scores, STRIDES, cfg, lb))
    assert len(fast) > 10  # the case is not trivially empty
    assert (np.diff(fast.scores) <= 0).all()
    assert (fast.boxes[:, [0, 2]] <= 150).all() and (fast.boxes[:, [1, 3]] <= 70).all()


@pytest.mark.parametrize(
    "cfg",
    [
        PostConfig(conf=0.05, iou=0.3, max_det=5),
        PostConfig(conf=0.05, iou=0.7, max_candidates=40),
        PostConfig(conf=0.0, iou=0.6, max_det=50, multi_label=True),
    ],
)
def test_vectorised_and_per_box_agree_at_the_limits(cfg: PostConfig) -> None:
    boxes, scores = _head(np.random.default_rng(10), classes=3)
    fast = decode_yolov8(boxes, scores, STRIDES, cfg)
    _assert_same(fast, decode_yolov8_per_box(boxes, scores, STRIDES, cfg))
    assert len(fast) <= cfg.max_det


def _one_cell(
    level: int, row: int, col: int, dist: tuple[int, int, int, int], logit: float, cls: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A 64x64 head where only one cell fires, its box distribution one bin per side."""
    boxes, scores = [], []
    for k, s in enumerate(STRIDES):
        b = np.zeros((4 * REG_MAX, 64 // s, 64 // s), np.float32)
        c = np.full((3, 64 // s, 64 // s), -20.0, np.float32)
        if k == level:
            for side, d in enumerate(dist):
                b[side * REG_MAX + d, row, col] = 60.0  # softmax: that bin, to ~1e-26
            c[cls, row, col] = logit
        boxes.append(b)
        scores.append(c)
    return boxes, scores


def test_decoding_is_grid_centre_plus_dfl_distance_times_stride() -> None:
    boxes, scores = _one_cell(level=1, row=2, col=3, dist=(2, 1, 4, 3), logit=1.5)
    for decode in (decode_yolov8, decode_yolov8_per_box):
        dets = decode(boxes, scores, STRIDES)
        # Cell (row 2, col 3) at stride 16: centre (3.5, 2.5) cells; left 2, top 1,
        # right 4, bottom 3 cells.
        np.testing.assert_allclose(
            dets.boxes, [[(3.5 - 2) * 16, (2.5 - 1) * 16, (3.5 + 4) * 16, (2.5 + 3) * 16]]
        )
        np.testing.assert_allclose(dets.scores, [1 / (1 + math.exp(-1.5))])
        assert dets.classes.tolist() == [1]


def test_boxes_map_back_through_the_letterbox() -> None:
    # A 128x64 image letterboxed into 64x64: scale 0.5, 16 pixels of padding on top.
    boxes, scores = _one_cell(level=0, row=4, col=4, dist=(1, 1, 1, 1), logit=2.0)
    lb = letterbox_geometry(width=128, height=64, size=64)
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.5, 0, 16)
    for decode in (decode_yolov8, decode_yolov8_per_box):
        # Input box (28, 28, 44, 44) -> x / 0.5, (y - 16) / 0.5.
        np.testing.assert_allclose(
            decode(boxes, scores, STRIDES, letterbox=lb).boxes, [[56, 24, 88, 56]]
        )


def test_nms_is_class_aware() -> None:
    # Two neighbouring cells with near-identical boxes: one box per class survives.
    boxes, scores = _one_cell(level=0, row=3, col=3, dist=(3, 3, 3, 3), logit=3.0, cls=0)
    extra, extra_scores = _one_cell(level=0, row=3, col=4, dist=(4, 3, 2, 3), logit=2.0, cls=0)
    boxes[0] += extra[0]
    scores[0] = np.maximum(scores[0], extra_scores[0])
    for decode in (decode_yolov8, decode_yolov8_per_box):
        same = decode(boxes, scores, STRIDES, PostConfig(iou=0.5))
        assert len(same) == 1 and same.scores[0] == pytest.approx(1 / (1 + math.exp(-3)))
    scores[0][[0, 2], 3, 4] = scores[0][[2, 0], 3, 4]  # the second cell says class 2
    for decode in (decode_yolov8, decode_yolov8_per_box):
        assert decode(boxes, scores, STRIDES, PostConfig(iou=0.5)).classes.tolist() == [0, 2]


def test_threshold_keeps_scores_above_conf() -> None:
    boxes, scores = _one_cell(level=2, row=0, col=1, dist=(1, 1, 1, 1), logit=math.log(0.3 / 0.7))
    for decode in (decode_yolov8, decode_yolov8_per_box):
        assert len(decode(boxes, scores, STRIDES, PostConfig(conf=0.29))) == 1
        assert len(decode(boxes, scores, STRIDES, PostConfig(conf=0.31))) == 0


def test_inconsistent_head_outputs_are_named() -> None:
    boxes, scores = _head(np.random.default_rng(0))
    with pytest.raises(
        ValueError,
        match=r"level 1 \(stride 16\): box output \(64, 4, 2\) and class output \(7, 4, 6\)",
    ):
        decode_yolov8([boxes[0], boxes[1][:, :, :2], boxes[2]], scores, STRIDES)
    with pytest.raises(ValueError, match="3 box outputs, 2 class outputs and 3 strides"):
        decode_yolov8(boxes, scores[:2], STRIDES)
    with pytest.raises(ValueError, match="at stride 8 does not cover"):
        decode_yolov8(boxes, scores, (8, 8, 32))
    # A leading batch dimension of 1 is accepted.
    batched = decode_yolov8([b[None] for b in boxes], [s[None] for s in scores], STRIDES)
    _assert_same(batched, decode_yolov8(boxes, scores, STRIDES))


def test_post_processing_never_imports_torch() -> None:
    # It runs on a board with numpy and the device runtime only (no torch, no OpenCV).
    code = (
        "import sys, numpy as np\n"
        "from edgecompress.runtime.detect_post import decode_yolov8, letterbox_geometry\n"
        "rng = np.random.default_rng(0)\n"
        "S = (8, 16, 32)\n"
        "b = [rng.normal(size=(64, 96 // s, 96 // s)).astype(np.float32) for s in S]\n"
        "c = [rng.normal(-2, 1, size=(5, 96 // s, 96 // s)).astype(np.float32) for s in S]\n"
        "d = decode_yolov8(b, c, letterbox=letterbox_geometry(100, 60, 96))\n"
        "assert len(d) > 0\n"
        "bad = sorted(m for m in ('torch', 'cv2', 'pycocotools') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
