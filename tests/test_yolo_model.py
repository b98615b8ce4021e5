"""The YOLOv8-style detector and its loss: the head's outputs are what decode_yolov8 reads,
layer names are stable, the sizes match YOLOv8n's, the assigner gives objects the cells
inside them that fit them best, and the loss terms are right on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.detect.loss import (
    DetectionLoss,
    LossConfig,
    Targets,
    anchor_points,
    assign,
    box_iou,
    complete_iou,
    dfl_loss,
)
from edgecompress.detect.model import (
    YoloDetector,
    fashion_detector,
    split_outputs,
    yolo_detector,
)
from edgecompress.measure import count_macs
from edgecompress.runtime.detect_post import PostConfig, decode_yolov8


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(("size", "classes"), [(160, 10), (96, 3)])
def test_head_outputs_are_the_layout_decode_yolov8_reads(size: int, classes: int) -> None:
    torch.manual_seed(0)
    model = fashion_detector(num_classes=classes).eval()
    with torch.inference_mode():
        outs = model(torch.rand(2, 3, size, size))
    boxes, cls = split_outputs(outs)
    assert [tuple(b.shape) for b in boxes] == [(2, 64, size // s, size // s) for s in (8, 16, 32)]
    assert [tuple(c.shape) for c in cls] == [
        (2, classes, size // s, size // s) for s in (8, 16, 32)
    ]
    assert model.strides == (8, 16, 32) and model.reg_max == 16
    dets = decode_yolov8(
        [b[0].numpy() for b in boxes],
        [c[0].numpy() for c in cls],
        model.strides,
        PostConfig(conf=0.0, max_det=1000),
    )
    # Every cell of every level gives a box (conf 0 keeps all; NMS removes some).
    assert 0 < len(dets) <= sum((size // s) ** 2 for s in (8, 16, 32))
    assert set(dets.classes.tolist()) <= set(range(classes))


def test_training_and_eval_forward_give_the_same_layout() -> None:
    model = fashion_detector()
    x = torch.rand(2, 3, 64, 64)
    train_shapes = [o.shape for o in model.train()(x)]
    with torch.inference_mode():
        eval_shapes = [o.shape for o in model.eval()(x)]
    assert train_shapes == eval_shapes


def test_layer_names_say_where_a_layer_sits() -> None:
    model = yolo_detector(num_classes=7)
    modules = dict(model.named_modules())
    for level in range(3):
        cls_out, box_out = modules[f"head.cls.{level}.2"], modules[f"head.box.{level}.2"]
        assert isinstance(cls_out, nn.Conv2d) and cls_out.out_channels == 7
        assert isinstance(box_out, nn.Conv2d) and box_out.out_channels == 4 * 16
        assert isinstance(modules[f"head.cls.{level}.0.conv"], nn.Conv2d)
    for name in (
        "backbone.stem.conv",
        "backbone.stage2.1.cv_out.conv",
        "backbone.stage4.2.cv_in.bn",
        "neck.down4.conv",
        "neck.out5.blocks.0.cv1.conv",
    ):
        assert name in modules, name
    # Same names for another instance: nothing depends on construction order or counters.
    assert list(modules) == [n for n, _ in yolo_detector(num_classes=7).named_modules()]


def test_yolov8n_sizes_and_the_example_detector_macs() -> None:
    # YOLOv8n (80 classes) has 3.16M parameters and 8.7 GFLOPs (4.4 GMACs) at 640x640.
    n80 = YoloDetector(num_classes=80).eval()
    macs, params = count_macs(n80, torch.zeros(1, 3, 640, 640))
    assert params == pytest.approx(3.157e6, rel=0.01)
    assert macs == pytest.approx(4.40e9, rel=0.02)
    # The example's detector at 160x160: measured 87.6M MACs, 0.914M parameters (YOLOv8n
    # with 10 classes: 255M MACs there).
    macs, params = count_macs(fashion_detector().eval(), torch.zeros(1, 3, 160, 160))
    assert 80e6 < macs < 95e6
    assert 0.85e6 < params < 0.95e6


def test_width_and_depth_multipliers_scale_channels_and_blocks() -> None:
    def convs(m: nn.Module) -> int:
        return sum(isinstance(x, nn.Conv2d) for x in m.modules())

    n, s, m = yolo_detector(), yolo_detector(width=0.5), yolo_detector(width=0.75, depth=0.67)
    assert n.backbone.stem.conv.out_channels == 16
    assert s.backbone.stem.conv.out_channels == 32
    assert convs(s) == convs(n) < convs(m)


# -- the assigner and the loss -----------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = [(size // s, size // s) for s in (8, 16, 32)]
    return anchor_points(shapes, (8, 16, 32))


def test_assigner_gives_each_object_the_best_fitting_cells_inside_it() -> None:
    points, _ = _grid(128)
    a = len(points)
    # Predictions: every cell predicts a 24 px box around its centre; class scores 0.5.
    boxes = torch.cat([points - 12, points + 12], -1)[None]
    scores = torch.full((1, a, 3), 0.5)
    gt = [np.array([[8.0, 8.0, 56.0, 40.0], [70.0, 60.0, 120.0, 124.0]])]
    targets = Targets.from_lists(gt, [np.array([2, 0])])
    found = assign(scores, boxes, points, targets, LossConfig(topk=5))
    fg = found.fg[0]
    assert 2 <= int(fg.sum()) <= 10
    for k, box in enumerate(gt[0]):
        mine = fg & (found.gt[0] == k)
        assert 1 <= int(mine.sum()) <= 5
        p = points[mine]
        assert (
            (p[:, 0] > box[0]) & (p[:, 0] < box[2]) & (p[:, 1] > box[1]) & (p[:, 1] < box[3])
        ).all()
        assert torch.equal(
            found.boxes[0, mine], torch.tensor(box, dtype=torch.float32).expand(len(p), 4)
        )
        # The soft target sits in the object's class only; the best cell's equals its IoU.
        label = int(targets.classes[0, k])
        s = found.scores[0, mine]
        assert (s[:, label] > 0).all() and s.sum() == s[:, label].sum()
        ious = box_iou(boxes[0, mine], torch.tensor(box, dtype=torch.float32))
        assert float(s[:, label].max()) == pytest.approx(float(ious.max()), rel=1e-4)
        # The chosen cells are those whose boxes overlap the object most (scores are equal).
        inside = (
            (points[:, 0] > box[0])
            & (points[:, 0] < box[2])
            & (points[:, 1] > box[1])
            & (points[:, 1] < box[3])
        )
        all_ious = box_iou(boxes[0], torch.tensor(box, dtype=torch.float32))
        assert float(ious.min()) >= float(all_ious[inside & ~mine].max()) - 1e-6
    assert (found.scores[0, ~fg] == 0).all()


def test_a_cell_claimed_by_two_objects_goes_to_the_one_it_overlaps_most() -> None:
    points, _ = _grid(64)
    boxes = torch.cat([points - 10, points + 10], -1)[None]
    scores = torch.full((1, len(points), 2), 0.5)
    # Both objects contain the cell centred at (20, 20) (stride 8); its predicted box is
    # the first object's (IoU 1) and overlaps the second's by IoU 0.31.
    gt = [np.array([[10.0, 10.0, 30.0, 30.0], [14.0, 14.0, 40.0, 40.0]])]
    targets = Targets.from_lists(gt, [np.array([0, 1])])
    # topk 13 > the cells inside either object: each object asks for every cell inside it.
    found = assign(scores, boxes, points, targets, LossConfig(topk=13))
    cell = int(((points[:, 0] == 20) & (points[:, 1] == 20)).nonzero()[0, 0])
    assert bool(found.fg[0, cell]) and int(found.gt[0, cell]) == 0
    assert float(found.scores[0, cell, 1]) == 0.0


def test_images_without_objects_only_teach_background() -> None:
    torch.manual_seed(0)
    model = fashion_detector(num_classes=3)
    outs = model(torch.rand(2, 3, 64, 64))
    targets = Targets.from_lists(
        [np.array([[4.0, 4.0, 40.0, 50.0]]), np.zeros((0, 4))], [np.array([1]), np.zeros(0)]
    )
    loss, parts = DetectionLoss(num_classes=3)(outs, targets)
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
    empty = Targets.from_lists([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2)
    loss, parts = DetectionLoss(num_classes=3)(outs, empty)
    assert parts["box"] == 0.0 and parts["dfl"] == 0.0 and parts["cls"] > 0
    loss.backward()


def test_ciou_and_dfl_on_hand_made_cases() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert float(complete_iou(a, a)) == pytest.approx(1.0, abs=1e-6)
    # Same centre and aspect: CIoU is the IoU (25 / 100).
    b = torch.tensor([[2.5, 2.5, 7.5, 7.5]])
    assert float(complete_iou(a, b)) == pytest.approx(0.25, abs=1e-6)
    # Disjoint: negative, by the centre distance over the enclosing diagonal.
    c = torch.tensor([[20.0, 0.0, 30.0, 10.0]])
    assert float(complete_iou(a, c)) == pytest.approx(-(20.0**2) / (30.0**2 + 10.0**2), abs=1e-6)
    # DFL: a target of 2.25 bins is learnt as 75% bin 2, 25% bin 3; that distribution
    # (as logits) has the lowest loss, and its expectation is the target.
    target = torch.full((1, 4), 2.25)
    probs = torch.zeros(1, 4, 8)
    probs[..., 2], probs[..., 3] = 0.75, 0.25
    best = dfl_loss(probs.clamp(min=1e-9).log(), target)
    worse = dfl_loss(torch.zeros(1, 4, 8), target)
    assert float(best) < float(worse)
    assert float((probs * torch.arange(8)).sum(-1).mean()) == pytest.approx(2.25)
