"""Compressing a detector: pruning through the C2f concatenations and the PAN neck never
touches the head's outputs (the decoder's layout); QAT down to 4 bits keeps each head
branch's last convolution at 8; the QAT model exported as INT8 QDQ scores in ONNX Runtime
what it scores in PyTorch; the whole chain (``build_detector``) writes its report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cli import main
from edgecompress.detect.coco import annotations_path as coco_annotations
from edgecompress.detect.compress import (
    HEAD_LAST,
    export_detector_qdq,
    prune_detector,
    quantize_detector,
)
from edgecompress.detect.data import DetectionSet
from edgecompress.detect.deploy import calibration_inputs
from edgecompress.detect.model import YoloDetector, fashion_detector
from edgecompress.detect.pipeline import (
    DetectBuildConfig,
    build_detector,
    load_detector,
    read_detection_data,
)
from edgecompress.detect.train import DetectorTrainConfig, evaluate_detector
from edgecompress.detect.yolo import write_yolo
from edgecompress.errors import ConfigError
from edgecompress.measure import count_macs
from edgecompress.prune.engine import widths
from edgecompress.quantize.config import Rung
from edgecompress.quantize.mixed import weight_layers
from edgecompress.quantize.onnx_qdq import integer_ops, runs_in_integer

SIZES = {"train": 8, "val": 4, "test": 4}
X = torch.zeros(1, 3, 160, 160)


@dataclass(frozen=True)
class Trained:
    model: YoloDetector
    seen: DetectionSet  # the 4 images it was trained on
    sets: dict[str, DetectionSet]


@pytest.fixture(scope="module")
def trained(
    detect_sets: dict[str, DetectionSet], overfit_detector: tuple[YoloDetector, DetectionSet]
) -> Trained:
    """The shared overfit detector (conftest) and the example's splits."""
    model, seen = overfit_detector
    return Trained(model, seen, detect_sets)


@pytest.mark.parametrize("allocation", ["global", "latency"])
@pytest.mark.slow
def test_pruning_goes_through_the_neck_and_never_touches_the_head_outputs(
    trained: Trained, allocation: str
) -> None:
    """Either allocation (``latency`` times every layer pruned alone) meets the budget.
    Where ``latency`` cuts depends on this machine's timings (a busy host can make the
    backbone's savings look like noise), so only ``global`` is held to cutting both the
    backbone and the neck."""
    before = [o.shape for o in trained.model(X)]
    original_widths = widths(trained.model)
    pruned, plan = prune_detector(
        trained.model, 160, keep=0.6, align=8, allocation=allocation, progress=False
    )
    assert plan.allocation == allocation
    after = [o.shape for o in pruned(X)]
    assert after == before  # 64 DFL bins and 10 classes per level: the decoder's layout
    macs0, macs1 = count_macs(trained.model, X)[0], count_macs(pruned, X)[0]
    assert macs1 <= 0.6 * macs0
    cut = {n for n in plan.widths_before if plan.widths_after[n] < plan.widths_before[n]}
    assert cut
    if allocation == "global":
        assert any(n.startswith("neck.") for n in cut)
        assert any(n.startswith("backbone.") for n in cut)
    assert all(plan.widths_after[n] % 8 == 0 for n in cut)  # aligned for the NPU
    heads = [n for n in plan.widths_before if n.startswith("head.") and n.endswith(".2")]
    assert len(heads) == 6 and not cut & set(heads)
    assert (pruned.num_classes, pruned.reg_max, pruned.strides) == (10, 16, (8, 16, 32))
    assert widths(trained.model) == original_widths  # the original is left as it was


def test_the_heads_last_convs_stay_at_8_bits_down_a_4_bit_ladder(trained: Trained) -> None:
    quant = quantize_detector(
        trained.model, trained.seen, trained.seen,
        rungs=(Rung(w_bits=8, a_bits=8, epochs=0), Rung(w_bits=4, a_bits=8, epochs=0)),
        calibration_images=4,
    )  # fmt: skip
    bits = {n: w.w_quant.bits for n, w in weight_layers(quant.model).items()}
    kept = {n for n, b in bits.items() if b == 8}
    assert kept == set(quant.kept) and len(kept) == 6
    assert all(n.startswith(("head.box.", "head.cls.")) and n.endswith(".2") for n in kept)
    assert all(b == 4 for n, b in bits.items() if n not in kept)
    assert [r["w_bits"] for r in quant.rungs] == [8, 4]
    assert HEAD_LAST == ("head.box.*.2", "head.cls.*.2")


def test_int8_qat_detector_scores_the_same_in_onnxruntime(trained: Trained, tmp_path: Path) -> None:
    cfg = DetectorTrainConfig(
        epochs=2, batch_size=4, lr=1e-4, warmup_epochs=0, flip=0.0, ema=0.0, progress=False
    )
    rungs = (Rung(w_bits=8, a_bits=8, epochs=2),)
    quant = quantize_detector(
        trained.model, trained.seen, trained.seen, train=cfg, rungs=rungs, calibration_images=8,
        teacher=trained.model,  # the head's outputs distilled into the traced QAT model
    )  # fmt: skip
    assert quant.rungs[-1]["kd_cls"] >= 0 and "fgd_fg" not in quant.rungs[-1]
    fp = evaluate_detector(trained.model, trained.seen, 160)
    qat = evaluate_detector(quant.model, trained.seen, 160)
    path = export_detector_qdq(quant.model, trained.sets["train"], 160, tmp_path / "q.onnx")
    ort = evaluate_detector(path, trained.seen, 160)
    assert fp.map50_95 > 0.5  # it learned the images, so the comparison means something
    assert abs(qat.map50_95 - fp.map50_95) < 0.1
    assert abs(ort.map50_95 - qat.map50_95) < 0.05
    assert runs_in_integer(integer_ops(path))


def test_calibration_inputs_are_what_the_model_sees(trained: Trained) -> None:
    x = calibration_inputs(trained.seen, 160, limit=3)
    assert x.shape == (3, 3, 160, 160) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_build_detector_reports_every_stage_on_the_test_split(
    trained: Trained, tmp_path: Path
) -> None:
    cfg = DetectBuildConfig(
        keep=0.6,
        recover=DetectorTrainConfig(epochs=1, batch_size=4, ema=0.0, progress=False),
        qat_epochs=1,
        distill=False,
        rknn=False,
        calibration=8,
        latency_rounds=1,
        progress=False,
    )
    report = build_detector(trained.model, trained.sets, tmp_path, cfg)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    assert [s["stage"].split()[0] for s in report["stages"]] == ["original", "pruned", "+"]
    assert report["summary"]["macs_ratio"] <= 0.6
    assert report["splits"] == SIZES
    files = ("original_fp32.onnx", "recovered_fp32.pt", "model_int8.onnx", "prune_plan.json")
    for name in (*files, "report.md"):
        assert (tmp_path / name).is_file()
    assert report["latency"]["speedup"] > 0
    assert "ONNX Runtime" in (tmp_path / "report.md").read_text()
    recovered = load_detector(tmp_path / "recovered_fp32.pt")  # a MODEL for the command
    assert count_macs(recovered, X)[0] == report["stages"][1]["macs"]


def test_yolo_data_without_val_gets_val_carved_from_train(trained: Trained, tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    write_yolo(trained.sets["train"], root, "train")
    write_yolo(trained.sets["test"], root, "test")
    sets = read_detection_data(root)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [7, 1, 4]  # every 10th
    train_files = {im.path.name for im in sets["train"].images}
    assert not train_files & {im.path.name for im in sets["val"].images}
    assert sets["val"].class_names == trained.sets["train"].class_names


def test_data_without_a_test_split_is_refused(trained: Trained, tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    write_yolo(trained.sets["train"], root, "train")
    with pytest.raises(ConfigError, match="needs a train and a test split"):
        read_detection_data(root)


def test_the_command_refuses_a_model_for_other_classes(trained: Trained, tmp_path: Path) -> None:
    path = tmp_path / "det80.pt"
    torch.save(fashion_detector(num_classes=80), path)
    root = trained.sets["train"].images[0].path.parent.parent  # the example: COCO
    assert coco_annotations(root, "train").is_file()
    code = main(["detect", str(path), "--data", str(root), "-o", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
