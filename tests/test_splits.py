"""Three splits, always: train chooses nothing, val chooses, test is only reported. Folders
are used as given, missing splits are carved stratified and deterministic, test never
reaches training, and accuracies carry a 95% interval."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.dataset import SPLITS, Sample, scan_image_folder
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import ConfigError, DataError
from edgecompress.evaluate import accuracy_interval, classification_metrics

# Identity spec: a constant-grey image reads back as its grey value, so pixels name images.
PLAIN = PreprocessSpec(input_size=(4, 4), resize="stretch", mean=(0, 0, 0), std=(1, 1, 1))


def _images(folder: Path, classes: int, per_class: int, start: int = 0) -> int:
    """Write constant-grey images whose grey value is a unique id; return the next id."""
    ident = start
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(
                str(folder / f"class{c}" / f"{i:03d}.png"), np.full((6, 6), ident, np.uint8)
            )
            ident += 1
    return ident


def _paths(samples: list[Sample]) -> set[Path]:
    return {s.path for s in samples}


def _ids(images: np.ndarray) -> set[int]:
    """Image ids from uint8 N x H x W x 3 or float N x 3 x H x W (identity-normalised)."""
    pixels = images[:, 0, 0, 0] if images.dtype == np.uint8 else images[:, 0, 0, 0] * 255
    return {round(float(v)) for v in pixels}


def _per_class(samples: list[Sample]) -> list[int]:
    return np.bincount([s.label for s in samples]).tolist()


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 7), ("val", 3), ("test", 2)):
        _images(tmp_path / split, classes=2, per_class=n)
    folder = scan_image_folder(tmp_path, val_fraction=0.5, test_fraction=0.4)  # not used
    assert folder.split == "folder"
    assert (len(folder.train), len(folder.val), len(folder.test)) == (14, 6, 4)
    for split in SPLITS:
        got = getattr(folder, split)
        assert {s.path.relative_to(tmp_path).parts[0] for s in got} == {split}
        assert folder.sources[split] == f"folder ({split}/)"
    summary = folder.summary()
    assert (summary["train"], summary["val"], summary["test"]) == (14, 6, 4)
    assert summary["per_class"]["class1"] == {"train": 7, "val": 3, "test": 2}
    _images(tmp_path / "test" / "extra", classes=1, per_class=1)
    (tmp_path / "test" / "extra" / "class0").rename(tmp_path / "test" / "class7")
    (tmp_path / "test" / "extra").rmdir()
    with pytest.raises(
        DataError, match=r"test: class folder\(s\) \['class7'\] have no counterpart"
    ):
        scan_image_folder(tmp_path)


def test_flat_folder_is_carved_stratified_deterministic_and_disjoint(tmp_path: Path) -> None:
    _images(tmp_path, classes=3, per_class=20)
    a = scan_image_folder(tmp_path)
    assert a.split == "seeded"
    assert _per_class(a.test) == _per_class(a.val) == [4, 4, 4]  # 20% of each class
    assert _per_class(a.train) == [12, 12, 12]
    train, val, test = _paths(a.train), _paths(a.val), _paths(a.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(tmp_path.rglob("*.png"))
    b = scan_image_folder(tmp_path)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    # Test is carved first: changing only val_fraction leaves it where it was.
    assert scan_image_folder(tmp_path, val_fraction=0.3).test == a.test
    assert scan_image_folder(tmp_path, seed=1).test != a.test
    assert a.sources["test"] == "carved from all images (20% per class, seed 0)"
    assert a.sources["train"] == "all images less the carved val, test"


def test_train_and_val_given_test_is_carved_from_train_only(tmp_path: Path) -> None:
    _images(tmp_path / "train", classes=2, per_class=10)
    _images(tmp_path / "val", classes=2, per_class=3, start=100)
    (tmp_path / "notes").mkdir()  # a stray folder beside the splits is reported, not read
    folder = scan_image_folder(tmp_path)
    assert folder.split == "mixed"
    val_files = set((tmp_path / "val").rglob("*.png"))
    assert _paths(folder.val) == val_files  # val/ exactly as given
    assert _per_class(folder.test) == [2, 2] and _per_class(folder.train) == [8, 8]
    assert all(p.is_relative_to(tmp_path / "train") for p in _paths(folder.test))
    assert not _paths(folder.test) & (_paths(folder.train) | val_files)
    assert _paths(folder.train) | _paths(folder.test) == set((tmp_path / "train").rglob("*.png"))
    assert folder.sources == {
        "train": "train/ less the carved test",
        "val": "folder (val/)",
        "test": "carved from train/ (20% per class, seed 0)",
    }
    assert [(p.name, why) for p, why in folder.skipped] == [
        ("notes", "beside the train/ val/ test/ folders, not in any split")
    ]


def test_train_only_or_train_and_test_carve_what_is_missing(tmp_path: Path) -> None:
    _images(tmp_path / "train", classes=2, per_class=10)
    only = scan_image_folder(tmp_path)
    assert _per_class(only.val) == _per_class(only.test) == [2, 2]
    assert _per_class(only.train) == [6, 6]
    assert (
        only.sources["val"] == only.sources["test"] == "carved from train/ (20% per class, seed 0)"
    )
    _images(tmp_path / "test", classes=2, per_class=4, start=100)
    with_test = scan_image_folder(tmp_path)
    assert _paths(with_test.test) == set((tmp_path / "test").rglob("*.png"))
    assert _per_class(with_test.val) == [2, 2] and _per_class(with_test.train) == [8, 8]
    assert with_test.sources["train"] == "train/ less the carved val"


def test_missing_train_and_impossible_fractions_are_errors(tmp_path: Path) -> None:
    _images(tmp_path / "val", classes=1, per_class=2)
    _images(tmp_path / "test", classes=1, per_class=2)
    with pytest.raises(DataError, match=r"has val/ and test/ but no train/; add .*train"):
        scan_image_folder(tmp_path)
    flat = tmp_path / "flat"
    _images(flat, classes=1, per_class=5)
    with pytest.raises(ConfigError, match=r"val_fraction \+ test_fraction must be below 1"):
        scan_image_folder(flat, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="test_fraction must be between 0 and 1"):
        scan_image_folder(flat, test_fraction=0.0)
    with pytest.raises(ValidationError, match="val_fraction \\+ test_fraction"):
        DataConfig(val_fraction=0.6, test_fraction=0.4)
    assert DataConfig(val_fraction=0.1, seed=3).test_fraction == 0.2  # old fields still work


def test_bundle_keeps_test_images_out_of_everything_but_test_accessors(tmp_path: Path) -> None:
    _images(tmp_path / "train", classes=3, per_class=20)
    _images(tmp_path / "val", classes=3, per_class=4, start=60)
    cfg = DataConfig(calibration_images=1000)  # asks for more than there is: all of train
    data = DataBundle(tmp_path, PLAIN, cfg)
    test = _ids(data.test_prepared)
    assert len(test) == len(data.test_labels) == 12  # 20% of each train/ class
    assert test == _ids(data.test_inputs)
    assert data.test_inputs.dtype == np.float32 and data.test_prepared.dtype == np.uint8
    np.testing.assert_allclose(data.test_inputs, [PLAIN.normalize(i) for i in data.test_prepared])
    train_x, _ = data.train_arrays()
    seen = _ids(train_x) | _ids(data.val_prepared) | _ids(data.val_inputs)
    seen |= _ids(np.stack(data.calibration_prepared))
    assert not test & seen, "test images reached train, val or calibration"
    assert test | seen == set(range(72))  # and nothing else was lost
    # Labels travel with their images: id // 20 is the class for train/ images.
    assert [i // 20 for i in sorted(test)] == sorted(data.test_labels.tolist())
    summary = data.summary()
    assert (summary["train"], summary["val"], summary["test"]) == (48, 12, 12)
    assert summary["split"] == "mixed" and summary["sources"]["test"].startswith("carved")
    capped = DataBundle(tmp_path, PLAIN, DataConfig(eval_images=6))
    assert len(capped.test_labels) == len(capped.val_labels) == 6  # one cap for both
    assert sorted(np.bincount(capped.test_labels).tolist()) == [2, 2, 2]
    assert _ids(capped.test_prepared) <= test
    assert capped.summary()["test_images"] == 6 and capped.summary()["test"] == 12


def test_example_training_never_sees_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's best-epoch choice (inside ``fit``) gets train and val arrays only;
    test is evaluated after and recorded."""
    from edgecompress.calibration.digits import DIGITS_SPEC
    from edgecompress.distill import loop
    from edgecompress.distill.trainer import FitResult
    from edgecompress.example import example_info, prepare_digits_example

    given: list[np.ndarray] = []

    def spy_fit(student, teacher, train, val, cfg, **kw):  # type: ignore[no-untyped-def]
        given.extend([train[0], val[0]])
        return FitResult(best_top1=50.0, best_epoch=1)

    monkeypatch.setattr(loop, "fit", spy_fit)
    _, data = prepare_digits_example(tmp_path, epochs=1, progress=False)
    test = DataBundle(data, DIGITS_SPEC, DataConfig()).test_inputs
    assert [len(x) for x in given] == [1079, 359]
    rows = {x.tobytes() for arr in given for x in arr}
    assert len(rows) == 1079 + 359  # every digits image is distinct, so this check is sharp
    leaked = sum(x.tobytes() in rows for x in test)
    assert leaked == 0, f"{leaked} of {len(test)} test images reached fit"
    info = example_info(tmp_path)
    assert info["splits"] == {"train": 1079, "val": 359, "test": 359}
    low, high = info["test_top1_ci"]  # type: ignore[misc]
    assert low <= info["test_top1"] <= high and info["val_top1"] == 50.0  # type: ignore[operator]


def test_wilson_interval_known_values() -> None:
    low, high = accuracy_interval(50, 100)
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
    assert accuracy_interval(0, 10) == pytest.approx((0.0, 27.75), abs=0.01)
    assert accuracy_interval(10, 10) == pytest.approx((72.25, 100.0), abs=0.01)
    # One digits test split, all right: still not "100% for sure".
    assert accuracy_interval(359, 359)[0] == pytest.approx(98.94, abs=0.01)
    assert accuracy_interval(95, 100, z=2.576)[0] < accuracy_interval(95, 100)[0]  # 99% wider
    with pytest.raises(ValueError, match="n must be positive"):
        accuracy_interval(0, 0)
    with pytest.raises(ValueError, match=r"correct must be in 0\.\.10"):
        accuracy_interval(11, 10)


def test_metrics_carry_the_interval_and_the_report_still_renders() -> None:
    from edgecompress.report.markdown import render_markdown
    from edgecompress.report.schema import Report

    labels = np.arange(100) % 10
    logits = np.eye(10)[np.where(np.arange(100) < 50, labels, (labels + 1) % 10)]
    m = classification_metrics(logits, labels, reference=logits)
    assert m["top1"] == 50.0 and m["samples"] == 100
    assert (m["top1_ci_low"], m["top1_ci_high"]) == pytest.approx((40.38, 59.62), abs=0.01)
    report = Report()
    report.add_accuracy("pytorch", m, "PyTorch on CPU, 100 test images")
    report.set("data", {"root": "d", "classes": 10, "train": 1, "val": 1, "test": 1})
    text = render_markdown(report.data)
    assert "| pytorch | 50.00" in text
