"""Image folders with junk, deterministic splits, and the one preprocessing spec (the
three-split layouts and the carving rule: tests/test_splits.py)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecompress.calibration.dataset import (
    Sample,
    load_samples,
    pick_calibration,
    scan_image_folder,
)
from edgecompress.calibration.digits import DIGITS_SPEC, ensure_digits_folder
from edgecompress.calibration.preprocess import PreprocessSpec, read_image
from edgecompress.errors import ConfigError, DataError


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
    (root / "class1" / "garbled.bmp").write_bytes(b"BM" + b"\x00" * 40)  # decodes to nothing
    (root / "class2" / "nested" / "deeper").mkdir(parents=True)
    (root / "class2" / "0.png").rename(root / "class2" / "nested" / "deeper" / "0.png")
    folder = scan_image_folder(root)
    everything = [*folder.train, *folder.val, *folder.test]
    assert any(s.path.name == "0.png" and s.label == 2 for s in everything)
    reasons = {p.name: why for p, why in folder.skipped}
    # A truncated PNG is found at scan, without decoding (its end marker is missing).
    assert reasons == {
        "notes.txt": "not an image suffix (.txt)",
        "empty.jpg": "empty file",
        ".DS_Store": "hidden file",
        "cut.png": "truncated: the file ends before its image data does (an interrupted copy?)",
    }
    skipped: list[tuple[Path, str]] = []
    spec = PreprocessSpec(input_size=(16, 16), resize="stretch")
    x, y = load_samples(everything, spec, skipped=skipped)
    assert [p.name for p, _ in skipped] == ["garbled.bmp"]  # only decoding finds this one
    assert x.shape == (30, 3, 16, 16) and x.dtype == np.float32 and len(y) == 30
    assert sorted(np.bincount(y)) == [10, 10, 10]  # the label stays with its image
    info = folder.summary()
    assert info["skipped"] == 4 and info["classes"] == 3
    assert info["train"] + info["val"] + info["test"] == 31
    # 11 files, garbled.bmp included: 20% each to test and val, the rest to train
    assert info["per_class"]["class1"] == {"train": 7, "val": 2, "test": 2}
    assert any("notes.txt" in e for e in info["skipped_examples"])


def test_only_junk_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.md").write_text("x")
    with pytest.raises(
        DataError, match=rf"{re.escape(str(tmp_path))}: no usable images .*readme\.md"
    ):
        scan_image_folder(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'missing'}: no such image folder")):
        scan_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match=r"readme\.md: not a directory"):
        scan_image_folder(tmp_path / "a" / "readme.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no class subfolders; expected DIR/<class>/<image>"):
        scan_image_folder(empty)


def test_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", classes=4, per_class=10)
    a, b = scan_image_folder(root, 0.2, seed=0), scan_image_folder(root, 0.2, seed=0)
    assert a.val == b.val and a.train == b.train and a.test == b.test
    assert sorted({s.label for s in a.val}) == [0, 1, 2, 3]
    assert sorted({s.label for s in a.test}) == [0, 1, 2, 3]
    assert len(a.val) == 8 and len(a.test) == 8 and len(a.train) == 24
    assert scan_image_folder(root, 0.2, seed=1).val != a.val


def test_split_depends_only_on_the_files_not_the_machine(tmp_path: Path) -> None:
    # Same relative files written in a different order under a different root: same split.
    a = _folder(tmp_path / "one", classes=3, per_class=12)
    b = tmp_path / "elsewhere" / "two"
    for src in sorted(a.rglob("*.png"), reverse=True):
        (b / src.parent.name).mkdir(parents=True, exist_ok=True)
        (b / src.parent.name / src.name).write_bytes(src.read_bytes())

    def rel(samples: list[Sample], root: Path) -> list[tuple[str, int]]:
        return [(s.path.relative_to(root).as_posix(), s.label) for s in samples]

    fa, fb = scan_image_folder(a), scan_image_folder(b)
    assert rel(fa.val, a) == rel(fb.val, b) and rel(fa.train, a) == rel(fb.train, b)
    assert rel(fa.test, a) == rel(fb.test, b)


def test_small_classes_and_a_single_class(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", classes=2, per_class=2)
    folder = scan_image_folder(root, val_fraction=0.9, test_fraction=0.05)
    assert sorted(s.label for s in folder.val) == [0, 1]  # 1 val and 1 train per class
    assert sorted(s.label for s in folder.train) == [0, 1]
    assert folder.test == [] and any("no test image" in n for n in folder.notes)
    one = scan_image_folder(_folder(tmp_path / "one", classes=1, per_class=5))
    assert one.classes == ["class0"] and len(one.val) == 1 and len(one.test) == 1
    assert any("single class" in n for n in one.summary()["notes"])
    with pytest.raises(ConfigError, match="val_fraction"):
        scan_image_folder(root, val_fraction=1.0)


def test_train_val_layout_is_honoured(tmp_path: Path) -> None:
    _folder(tmp_path / "train", classes=2)
    _folder(tmp_path / "val", classes=2, per_class=3)
    folder = scan_image_folder(tmp_path)
    assert folder.split == "mixed" and len(folder.val) == 6  # val/ as given
    assert len(folder.train) == 16 and len(folder.test) == 4  # test carved from train/
    _folder(tmp_path / "val2", classes=3, per_class=1)
    (tmp_path / "val2" / "class2").rename(tmp_path / "val" / "class9")
    with pytest.raises(DataError, match="class9"):
        scan_image_folder(tmp_path)
    only_val = _folder(tmp_path / "v" / "val", classes=2).parent
    with pytest.raises(DataError, match=r"has val/ but no train/"):
        scan_image_folder(only_val)  # never silently a single class called "val"


def test_calibration_pick_is_class_balanced(tmp_path: Path) -> None:
    folder = scan_image_folder(_folder(tmp_path / "d", classes=3, per_class=10))
    picked = pick_calibration(folder.train, 9)
    assert sorted(s.label for s in picked) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pick_calibration(folder.train, 9) == picked  # seeded
    assert len(set(pick_calibration(folder.train, 1000))) == len(folder.train)  # capped


def test_load_samples_layouts_and_known_pixel(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    cv2.imwrite(str(tmp_path / "c" / "a.png"), np.full((6, 9, 3), (10, 20, 30), np.uint8))
    folder = scan_image_folder(tmp_path)
    samples = [*folder.train, *folder.val, *folder.test]
    base = PreprocessSpec(input_size=(4, 5), resize="stretch", mean=(0.1,) * 3, std=(0.5,) * 3)
    x, y = load_samples(samples, base)  # RGB, NCHW: red (30) first
    assert x.shape == (1, 3, 4, 5) and x.dtype == np.float32 and y.tolist() == [0]
    assert x[0, 0, 2, 3] == pytest.approx((30 / 255 - 0.1) / 0.5)
    bgr = base.model_copy(update={"channel_order": "BGR", "layout": "NHWC"})
    x, _ = load_samples(samples, bgr)
    assert x.shape == (1, 4, 5, 3) and x[0, 2, 3, 0] == pytest.approx((10 / 255 - 0.1) / 0.5)
    raw, _ = load_samples(samples, base, prepared=True)
    assert (
        raw.shape == (1, 4, 5, 3)
        and raw.dtype == np.uint8
        and raw[0, 0, 0].tolist()
        == [
            30,
            20,
            10,
        ]
    )


def test_load_samples_with_nothing_decodable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.bmp").write_bytes(b"BM" + b"\x00" * 40)
    folder = scan_image_folder(tmp_path)
    skipped: list[tuple[Path, str]] = []
    with pytest.raises(DataError, match=r"none of 1 images could be decoded"):
        load_samples(folder.train + folder.val + folder.test, PreprocessSpec(), skipped=skipped)
    assert [p.name for p, _ in skipped] == ["bad.bmp"]


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
    for split, n in (("train", 1079), ("val", 359), ("test", 359)):  # 60/20/20
        assert len(list((root / split).rglob("*.png"))) == n, split
    mtime = files[0].stat().st_mtime_ns
    assert ensure_digits_folder(tmp_path) == root
    assert files[0].stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left"
    image = read_image(files[0])
    assert image.shape == (32, 32, 3) and image.max() > 200  # upsampled, scaled to 0..255
    # DIGITS_SPEC's hard-coded mean/std are those of the images as written.
    pixels = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]) / 255.0
    assert pixels.mean() == pytest.approx(DIGITS_SPEC.mean[0], abs=1e-3)
    assert pixels.std() == pytest.approx(DIGITS_SPEC.std[0], abs=1e-3)


def test_interrupted_digits_write_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = cv2.imwrite

    def flaky(path: str, img: np.ndarray) -> bool:
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return real(path, img)

    monkeypatch.setattr(cv2, "imwrite", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_digits_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither digits/ nor the temporary folder
    monkeypatch.setattr(cv2, "imwrite", real)
    assert len(list(ensure_digits_folder(tmp_path).rglob("*.png"))) == 1797
