"""Distilling a detector (FGD on the neck, KL on the head): the box masks weigh exactly the
cells they claim to, the loss vanishes when the student computes what the teacher does and
not otherwise, gradients reach the student and the adapters but never the teacher, and
train_detector with a teacher trains and records every term."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgecompress.detect.data import DetectionImage, DetectionSet
from edgecompress.detect.distill import (
    FEATURE_TERMS,
    RESPONSE_TERMS,
    DetectDistillConfig,
    DetectionDistiller,
    box_masks,
    neck_channels,
)
from edgecompress.detect.loss import Targets
from edgecompress.detect.model import YoloDetector
from edgecompress.detect.train import DetectorTrainConfig, _prepare, _Steps, train_detector

SIZE = 64
TERMS = (*FEATURE_TERMS, *RESPONSE_TERMS)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread: these models are small, and a second thread beside another job only
    waits (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(width: float = 0.0625, seed: int = 0) -> YoloDetector:
    """A small detector whose norms and output biases are random too, so that, unlike a
    freshly made one, its features and outputs vary from cell to cell as a trained one's."""
    torch.manual_seed(seed)
    model = YoloDetector(num_classes=3, width=width, depth=0.33, prior_size=SIZE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.1)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 1.0)
    return model


def batch() -> tuple[torch.Tensor, Targets]:
    torch.manual_seed(1)
    x = torch.rand(2, 3, SIZE, SIZE)
    targets = Targets.from_lists(
        [np.array([[4.0, 4.0, 30.0, 20.0], [40.0, 36.0, 60.0, 62.0]]), np.array([[8, 8, 24, 24]])],
        [np.array([0, 2]), np.array([1])],
    )
    return x, targets


def test_masks_weigh_each_box_and_the_background_as_one() -> None:
    # Image 0: a 4x4-cell box with a 2x2-cell box inside it, at stride 8 on 8x8 cells.
    # Image 1: no objects.
    targets = Targets.from_lists(
        [np.array([[8.0, 8.0, 40.0, 40.0], [16.0, 16.0, 32.0, 32.0]]), np.zeros((0, 4))],
        [np.array([0, 1]), np.zeros(0, np.int64)],
    )
    fg, bg = box_masks(targets, (8, 8), 8.0)
    big = torch.zeros(8, 8, dtype=torch.bool)
    big[1:5, 1:5] = True
    small = torch.zeros(8, 8, dtype=torch.bool)
    small[2:4, 2:4] = True
    # Foreground only inside the boxes; the shared cells take the smaller box's 1/4.
    assert fg[0][~big].abs().sum() == 0
    assert torch.allclose(fg[0][small], torch.full((4,), 1 / 4))
    assert torch.allclose(fg[0][big & ~small], torch.full((12,), 1 / 16))
    # Background only outside them, summing to 1 (1/48 each); an empty image is all
    # background.
    assert bg[0][big].abs().sum() == 0
    assert torch.allclose(bg[0][~big], torch.full((48,), 1 / 48))
    assert fg[1].sum() == 0 and torch.allclose(bg[1], torch.full((8, 8), 1 / 64))


def test_a_box_smaller_than_a_cell_still_covers_one() -> None:
    targets = Targets.from_lists([np.array([[70.0, 10.0, 74.0, 13.0]])], [np.array([0])])
    fg, bg = box_masks(targets, (4, 4), 32.0)
    assert fg[0, 0, 2] == 1.0 and fg.sum() == 1.0
    assert bg[0, 0, 2] == 0.0 and torch.isclose(bg.sum(), torch.tensor(1.0))


def test_the_loss_is_zero_for_the_teacher_itself_and_positive_for_another_model() -> None:
    teacher = tiny().train()
    x, targets = batch()
    same = DetectionDistiller(copy.deepcopy(teacher).eval(), teacher)
    step = same(x, targets)
    assert set(step.parts) == set(TERMS)
    assert step.loss.item() == 0.0 and all(v == 0.0 for v in step.parts.values())
    other = DetectionDistiller(tiny(seed=5).eval(), teacher)
    step = other(x, targets)
    assert step.loss.item() > 0 and all(v > 0 for v in step.parts.values())
    # The teacher's mode is its own again after each call.
    assert teacher.training


def test_gradients_reach_the_student_and_adapters_never_the_teacher() -> None:
    teacher, student = tiny(), tiny(width=0.03125, seed=3)
    assert neck_channels(student) == [8, 16, 32] and neck_channels(teacher) == [16, 32, 64]
    distiller = DetectionDistiller(student.train(), teacher)
    x, targets = batch()
    distiller(x, targets).loss.backward()
    adapters = [level.adapter for level in distiller.levels]
    assert all(isinstance(a, torch.nn.Conv2d) for a in adapters)
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in adapters)
    # The GcBlock's last convolution starts at zero and gets a gradient (it is trained).
    last = distiller.levels[0].context.transform[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    stem = student.backbone.stem.conv.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_without_feature_weights_only_the_head_is_distilled() -> None:
    cfg = DetectDistillConfig(alpha=0, beta=0, gamma=0, lam=0)
    step = DetectionDistiller(tiny(seed=5), tiny(), cfg)(*batch())
    assert set(step.parts) == set(RESPONSE_TERMS)
    assert step.loss.item() == pytest.approx(
        cfg.cls * step.parts["kd_cls"] + cfg.dfl * step.parts["kd_dfl"], rel=1e-5
    )


def synthetic_set(folder: Path, n: int, seed: int) -> DetectionSet:
    """``n`` 64x64 images, each with one or two bright rectangles (class = which colour)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        pixels = np.full((SIZE, SIZE, 3), 30, np.uint8)
        boxes, classes = [], []
        for _ in range(int(rng.integers(1, 3))):
            x1, y1 = rng.integers(0, 40, 2)
            w, h = rng.integers(10, 24, 2)
            c = int(rng.integers(0, 3))
            pixels[y1 : y1 + h, x1 : x1 + w, c] = 230
            boxes.append([x1, y1, min(x1 + w, SIZE), min(y1 + h, SIZE)])
            classes.append(c)
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), pixels)
        images.append(DetectionImage(i, path, SIZE, SIZE, np.array(boxes, float), classes))
    return DetectionSet(tuple(images), ("blue", "green", "red"))


def test_training_with_a_teacher_records_every_term(tmp_path: Path) -> None:
    train = synthetic_set(tmp_path / "train", 8, 0)
    val = synthetic_set(tmp_path / "val", 4, 1)
    teacher, student = tiny(), tiny(width=0.03125, seed=3)
    before = copy.deepcopy(teacher.state_dict())
    cfg = DetectorTrainConfig(
        epochs=4, size=SIZE, batch_size=4, ema=0.0, warmup_epochs=0, progress=False
    )
    result = train_detector(student, train, val, cfg, teacher=teacher)
    for row in result.history:
        assert all(row[k] > 0 for k in (*TERMS, "distill"))
        # The objective is the detection loss plus the weighted distillation terms.
        det = 7.5 * row["box"] + 0.5 * row["cls"] + 1.5 * row["dfl"]
        assert row["loss"] == pytest.approx(det + row["distill"], rel=1e-4)
    first, last = result.history[0], result.history[-1]
    assert last["distill"] < first["distill"]
    # The teacher was only read.
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Without a teacher the history has no distillation keys, as before.
    plain = train_detector(tiny(width=0.03125, seed=3), train, val, cfg)
    assert not set(plain.history[0]) & {*TERMS, "distill"}


def test_the_adapters_and_context_blocks_are_trained_with_the_student(tmp_path: Path) -> None:
    data = _prepare(synthetic_set(tmp_path, 4, 0), SIZE)
    student, teacher = tiny(width=0.03125, seed=3), tiny()
    distiller = DetectionDistiller(student, teacher)
    # The adapters, and the GcBlocks' last convolutions (zero at the start; the layers
    # before them get their first gradient only once it has moved).
    trained = [lv.adapter.weight for lv in distiller.levels]
    trained += [lv.context.transform[-1].weight for lv in distiller.levels]
    before = [p.detach().clone() for p in trained]
    cfg = DetectorTrainConfig(epochs=1, size=SIZE, batch_size=4, warmup_epochs=0, progress=False)
    _Steps(student, data, cfg, distiller).epoch("test")
    assert all(not torch.equal(a, b) for a, b in zip(before, trained, strict=True))


def test_a_distill_config_without_a_teacher_is_an_error(tmp_path: Path) -> None:
    data = synthetic_set(tmp_path, 2, 0)
    with pytest.raises(ValueError, match="without a teacher"):
        train_detector(
            tiny(),
            data,
            data,
            DetectorTrainConfig(epochs=1, size=SIZE),
            distill=DetectDistillConfig(),
        )
