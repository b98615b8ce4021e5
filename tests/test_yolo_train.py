"""Training and evaluating the detector: a short run learns the images it sees (mAP from 0
to near 1), the kept weights are the best validated epoch's, flips move the boxes with the
pixels, and PyTorch and ONNX Runtime give the same mAP through the same decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.calibration import fashion_mnist as fm
from edgecompress.detect.coco import read_coco_splits
from edgecompress.detect.data import DetectionSet, letterbox, load_image
from edgecompress.detect.example import ensure_fashion_detect
from edgecompress.detect.model import YoloDetector, fashion_detector
from edgecompress.detect.train import (
    DetectorTrainConfig,
    DetectorTrainResult,
    _batch,
    _prepare,
    detector_input,
    evaluate_detector,
    export_detector_onnx,
    train_detector,
)
from edgecompress.errors import ParityError

SIZES = {"train": 8, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DetectionSet]:
    if not fm.DEFAULT_SOURCE.is_dir():
        if os.environ.get("EDGECOMPRESS_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(f"EDGECOMPRESS_REQUIRE_FASHION_MNIST=1 but {fm.DEFAULT_SOURCE} is missing")
        pytest.skip(f"{fm.DEFAULT_SOURCE} is missing (apt-get install dataset-fashion-mnist)")
    root = ensure_fashion_detect(tmp_path_factory.mktemp("cache"), fm.DEFAULT_SOURCE, sizes=SIZES)
    return read_coco_splits(root)


@dataclass(frozen=True)
class Overfit:
    model: YoloDetector
    result: DetectorTrainResult
    seen: DetectionSet  # the images it was trained (and validated) on


@pytest.fixture(scope="module")
def overfit(sets: dict[str, DetectionSet]) -> Overfit:
    """fashion_detector trained for 60 steps on 4 example images at 160x160 (~6 s)."""
    torch.set_num_threads(1)
    train = sets["train"]
    seen = DetectionSet(train.images[:4], train.class_names)
    torch.manual_seed(0)
    model = fashion_detector()
    cfg = DetectorTrainConfig(
        epochs=60,
        batch_size=4,
        lr=0.01,
        warmup_epochs=5,
        flip=0.0,
        ema=0.0,
        eval_every=10,
        progress=False,
    )
    return Overfit(model, train_detector(model, seen, seen, cfg), seen)


def test_a_short_run_learns_the_images_it_sees(overfit: Overfit) -> None:
    untrained = fashion_detector()
    first, last = overfit.result.history[0], overfit.result.history[-1]
    # Measured: loss 15.6 -> 1.8; mAP@0.5 on those images 0.0 -> 0.98 (0.5:0.95 -> 0.94).
    assert last["loss"] < 0.3 * first["loss"]
    assert last["box"] < first["box"] and last["dfl"] < first["dfl"]
    assert overfit.result.best_val is not None
    assert overfit.result.best_val.map50 > 0.6
    assert overfit.result.best_val.map50_95 > 0.4
    assert evaluate_detector(untrained, overfit.seen, 160).map50 < 0.05


def test_the_kept_weights_are_the_best_validated_epochs(overfit: Overfit) -> None:
    res = overfit.result
    validated = [r for r in res.history if "val_map50_95" in r]
    assert [int(r["epoch"]) for r in validated] == [10, 20, 30, 40, 50, 60]
    best = max(validated, key=lambda r: r["val_map50_95"])
    assert res.best_epoch == int(best["epoch"])
    assert res.best_val is not None and res.best_val.map50_95 == best["val_map50_95"]
    again = evaluate_detector(overfit.model, overfit.seen, 160)
    assert again.map50_95 == pytest.approx(res.best_val.map50_95, abs=1e-9)


def test_onnx_runtime_gives_the_same_map_as_pytorch(
    overfit: Overfit, sets: dict[str, DetectionSet], tmp_path: Path
) -> None:
    path = tmp_path / "det.onnx"
    export = export_detector_onnx(overfit.model, 160, path, check_on=overfit.seen)
    assert export.parity is not None and export.parity["max_abs_diff"] < 1e-3
    pt = evaluate_detector(overfit.model, overfit.seen, 160)
    ort = evaluate_detector(path, overfit.seen, 160)
    assert pt.map50 > 0.6  # a model that finds things, so agreement means something
    assert abs(pt.map50_95 - ort.map50_95) < 1e-3 and abs(pt.map50 - ort.map50) < 1e-3
    assert abs(pt.detections - ort.detections) <= 0.01 * pt.detections
    # Images it never saw (a low mAP, from 4 training images): the same there too.
    pt, ort = (evaluate_detector(m, sets["test"], 160) for m in (overfit.model, path))
    assert abs(pt.map50_95 - ort.map50_95) < 1e-3 and abs(pt.map50 - ort.map50) < 1e-3


def test_export_refuses_an_untrained_head(sets: dict[str, DetectionSet], tmp_path: Path) -> None:
    # At initialisation the eval-mode activations vanish: every image gets the same
    # outputs, and agreeing on them would prove nothing.
    torch.manual_seed(0)
    with pytest.raises(ParityError, match="identical for every input"):
        export_detector_onnx(
            fashion_detector(),
            160,
            tmp_path / "x.onnx",
            check_on=sets["val"],
            exporter="torchscript",
        )


def test_flip_mirrors_the_boxes_with_the_pixels(sets: dict[str, DetectionSet]) -> None:
    data = _prepare(sets["train"], 160)
    idx = np.arange(4)
    x_plain, t_plain = _batch(data, idx, np.zeros(4, bool))
    x_flip, t_flip = _batch(data, idx, np.array([True, False, True, False]))
    assert torch.equal(x_flip[0], x_plain[0].flip(-1)) and torch.equal(x_flip[1], x_plain[1])
    for i in (0, 2):
        n = int(t_plain.valid[i].sum())
        for (x1, y1, x2, y2), (f1, g1, f2, g2) in zip(
            t_plain.boxes[i, :n].tolist(), t_flip.boxes[i, :n].tolist(), strict=True
        ):
            assert (f1, g1, f2, g2) == (160 - x2, y1, 160 - x1, y2)
            crop = x_plain[i, :, int(y1) : int(y2), int(x1) : int(x2)]
            flipped = x_flip[i, :, int(g1) : int(g2), int(f1) : int(f2)]
            assert torch.equal(flipped, crop.flip(-1))
    assert torch.equal(t_flip.classes, t_plain.classes)


def test_the_input_is_the_letterbox_in_rgb_over_255(sets: dict[str, DetectionSet]) -> None:
    image = load_image(sets["test"].images[0].path)[:100]  # 160 wide, 100 high
    x, lb = detector_input(image, 160)
    padded, want = letterbox(image, 160)
    assert lb == want and x.shape == (3, 160, 160) and x.dtype == np.float32
    np.testing.assert_array_equal(x, padded[:, :, ::-1].transpose(2, 0, 1) / np.float32(255))
    assert x[:, 0, 0] == pytest.approx([114 / 255] * 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        detector_input(image, 150)
