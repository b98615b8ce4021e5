"""Image folders with junk, deterministic splits, and the one preprocessing spec."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecompress.calibration.dataset import load_samples, pick_calibration, scan_image_folder
from edgecompress.calibration.digits import ensure_digits_folder
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import DataError


def _folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            cv2.imwrite(str(root / f"class{c}" / f"{i}.png"), img)
    return root


def test_junk_is_counted_with_reasons_and_the_rest_loads(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    (root / "class0" / "notes.txt").write_text("hello")
    (root / "class0" / "empty.jpg").write_bytes(b"")
    (root / "class1" / ".DS_Store").write_bytes(b"\0\0")
    (root / "class1" / "cut.png").write_bytes((root / "class1" / "0.png").read_bytes()[:40])
    folder = scan_image_folder(root)
    reasons = {p.name: why for p, why in folder.skipped}
    assert reasons == {
        "notes.txt": "not an image suffix (.txt)",
        "empty.jpg": "empty file",
        ".DS_Store": "hidden file",
    }
    skipped: list[tuple[Path, str]] = []
    spec = PreprocessSpec(input_size=(16, 16), resize="stretch")
    x, y = load_samples([*folder.train, *folder.val], spec, skipped=skipped)
    assert [p.name for p, _ in skipped] == ["cut.png"]
    assert x.shape == (30, 3, 16, 16) and x.dtype == np.float32 and len(y) == 30


def test_only_junk_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=rf"{tmp_path}: no usable images .*readme\.md"):
        scan_image_folder(tmp_path)
    with pytest.raises(DataError, match="no such image folder"):
        scan_image_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no class subfolders; expected DIR/<class>/<image>"):
        scan_image_folder(empty)


def test_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", classes=4, per_class=10)
    a, b = scan_image_folder(root, 0.2, seed=0), scan_image_folder(root, 0.2, seed=0)
    assert a.val == b.val and a.train == b.train
    assert sorted({s.label for s in a.val}) == [0, 1, 2, 3]
    assert len(a.val) == 8 and len(a.train) == 32
    assert scan_image_folder(root, 0.2, seed=1).val != a.val


def test_train_val_layout_is_honoured(tmp_path: Path) -> None:
    _folder(tmp_path / "train", classes=2)
    _folder(tmp_path / "val", classes=2, per_class=3)
    folder = scan_image_folder(tmp_path)
    assert folder.split == "folder" and len(folder.train) == 20 and len(folder.val) == 6
    _folder(tmp_path / "val2", classes=3, per_class=1)
    (tmp_path / "val2" / "class2").rename(tmp_path / "val" / "class9")
    with pytest.raises(DataError, match="class9"):
        scan_image_folder(tmp_path)


def test_calibration_pick_is_class_balanced(tmp_path: Path) -> None:
    folder = scan_image_folder(_folder(tmp_path / "d", classes=3, per_class=10))
    picked = pick_calibration(folder.train, 9)
    assert sorted(s.label for s in picked) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_spec_layout_channel_order_and_normalisation() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # BGR: blue channel full
    rgb = PreprocessSpec(input_size=(4, 4), resize="stretch", mean=(0, 0, 0), std=(1, 1, 1))
    x = rgb.normalize(rgb.prepare(img))
    assert x.shape == (3, 4, 4) and x[2].min() == 1.0 and x[0].max() == 0.0  # blue is last in RGB
    bgr = rgb.model_copy(update={"channel_order": "BGR", "layout": "NHWC"})
    y = bgr.normalize(bgr.prepare(img))
    assert y.shape == (4, 4, 3) and y[..., 0].min() == 1.0
    spec = PreprocessSpec(input_size=(4, 4), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert np.allclose(spec.normalize(spec.prepare(img))[2], (1.0 - 0.5) / 0.25)
    assert spec.mean_255 == [127.5] * 3 and spec.std_255 == [63.75] * 3


def test_letterbox_and_center_crop_geometry() -> None:
    wide = np.full((10, 40, 3), 200, np.uint8)
    box = PreprocessSpec(input_size=(20, 20), resize="letterbox", pad_value=7).prepare(wide)
    assert box.shape == (20, 20, 3)
    assert (box[0] == 7).all() and (box[10] == 200).all()  # padded top, image in the middle
    crop = PreprocessSpec(input_size=(8, 8), resize="center_crop").prepare(wide)
    assert crop.shape == (8, 8, 3) and (crop == 200).all()


def test_digits_folder_is_written_once(tmp_path: Path) -> None:
    root = ensure_digits_folder(tmp_path)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 1797
    assert len(list((root / "val").rglob("*.png"))) == 359
    mtime = files[0].stat().st_mtime_ns
    assert ensure_digits_folder(tmp_path) == root
    assert files[0].stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left"
