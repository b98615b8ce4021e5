"""Fashion-MNIST from Debian's idx files: the reader checks what it reads and says how to
reinstall a bad file; the writer gives a deterministic, stratified, disjoint train/val/test
image folder that the image-folder scanner takes as given."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecompress.calibration import fashion_mnist as fm
from edgecompress.calibration.dataset import scan_image_folder
from edgecompress.cli import main
from edgecompress.errors import DataError


def _idx(path: Path, arr: np.ndarray, magic: int) -> Path:
    """Write ``arr`` as an idx file (gzip when the name ends in .gz)."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _source(folder: Path, n_train: int = 200, n_test: int = 50, seed: int = 1) -> Path:
    """A small idx set with the package's file names and uneven class sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    p = np.linspace(1, 2, 10)  # class 9 about twice as common as class 0
    for which, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.choice(10, n, p=p / p.sum()).astype(np.uint8)
        _idx(folder / f"{fm.FILES[which][0]}.gz", images, fm.IMAGES_MAGIC)
        _idx(folder / f"{fm.FILES[which][1]}.gz", labels, fm.LABELS_MAGIC)
    return folder


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- the idx reader ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trips_images_and_labels(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    got_x = fm.read_idx(_idx(tmp_path / name, images, fm.IMAGES_MAGIC), fm.IMAGES_MAGIC)
    got_y = fm.read_idx(_idx(tmp_path / "l.gz", labels, fm.LABELS_MAGIC), fm.LABELS_MAGIC)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)


def test_wrong_magic_names_the_file_and_how_to_reinstall(tmp_path: Path) -> None:
    # A labels file where the images file should be: 1 dimension, not 3.
    path = _idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(5, np.uint8), fm.LABELS_MAGIC)
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803") as e:
        fm.read_idx(path, fm.IMAGES_MAGIC)
    assert str(path) in str(e.value)
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(e.value)


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = _idx(tmp_path / "x.gz", np.zeros((20, 28, 28), np.uint8), fm.IMAGES_MAGIC)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        fm.read_idx(path, fm.IMAGES_MAGIC)
    assert str(path) in str(e.value) and "--reinstall" in str(e.value)


def test_short_data_after_a_valid_header_is_a_clear_error(tmp_path: Path) -> None:
    header = fm.IMAGES_MAGIC.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (3, 28, 28)
    )
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(header + bytes(28 * 28 * 2)))  # 2 of 3 images
    with pytest.raises(DataError, match=r"3x28x28 = 2352 bytes of data, the file holds 1568"):
        fm.read_idx(path, fm.IMAGES_MAGIC)


def test_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        fm.read_idx(path, fm.LABELS_MAGIC)
    assert str(path) in str(e.value)


def test_counts_that_disagree_are_an_error(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    _idx(src / "t10k-labels-idx1-ubyte.gz", np.zeros(49, np.uint8), fm.LABELS_MAGIC)
    with pytest.raises(DataError, match=r"holds 50 images but .* 49 labels"):
        fm.read_split(src, "t10k")


def test_label_out_of_range_is_an_error(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    _idx(src / "t10k-labels-idx1-ubyte.gz", np.full(50, 10, np.uint8), fm.LABELS_MAGIC)
    with pytest.raises(DataError, match="label 10 found, expected 0-9"):
        fm.read_split(src, "t10k")


def test_missing_package_says_the_apt_get_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm, "DEFAULT_SOURCE", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as e:
        fm.ensure_fashion_mnist_folder(cache_dir=tmp_path / "cache")
    assert "dpkg-deb -x" in str(e.value) and "--source" in str(e.value)
    assert not (tmp_path / "cache" / "fashion-mnist").exists()


def test_missing_file_in_source_is_named(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    (src / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: missing"):
        fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "cache")


def test_source_may_be_an_extracted_package_root(tmp_path: Path) -> None:
    _source(tmp_path / "deb" / "usr" / "share" / "datasets" / "fashion-mnist")
    root = fm.ensure_fashion_mnist_folder(tmp_path / "deb", cache_dir=tmp_path / "cache")
    assert fm.marker_info(root) is not None


# -- the carving rule and the writer -----------------------------------------------------


def test_val_is_stratified_to_the_count() -> None:
    labels = np.random.default_rng(3).choice(10, 1234, p=np.linspace(1, 3, 10) / 20)
    val = fm.carve_val(labels)
    assert len(val) == round(1234 * fm.VAL_FRACTION) == len(set(val.tolist()))
    for c in range(10):
        quota = np.sum(labels == c) * len(val) / len(labels)
        assert np.floor(quota) <= np.sum(labels[val] == c) <= np.ceil(quota)
    np.testing.assert_array_equal(val, fm.carve_val(labels))  # seeded: same every time


def test_writer_gives_disjoint_stratified_splits_the_scanner_takes(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    train_x, train_y = fm.read_split(src, "train")
    test_x, test_y = fm.read_split(src, "t10k")
    root = fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "cache", workers=2)
    assert root == tmp_path / "cache" / "fashion-mnist"
    assert os.listdir(tmp_path / "cache") == ["fashion-mnist"]  # no temporary left
    n_val = round(200 * fm.VAL_FRACTION)
    info = json.loads((root / ".complete").read_text())
    assert info["splits"] == {"train": 200 - n_val, "val": n_val, "test": 50}
    assert info["layout"] == fm.LAYOUT_VERSION

    folder = scan_image_folder(root)
    assert folder.split == "folder" and not folder.skipped
    assert folder.classes == list(fm.CLASS_FOLDERS)
    assert [len(folder.train), len(folder.val), len(folder.test)] == [200 - n_val, n_val, 50]
    # Every train image lands in exactly one of train/val, under its own label; test is
    # the t10k file as given.
    seen: dict[str, int] = {}
    for split, samples, x, y in (
        ("train", folder.train, train_x, train_y),
        ("val", folder.val, train_x, train_y),
        ("test", folder.test, test_x, test_y),
    ):
        for s in samples:
            i = int(s.path.stem.split("_")[1])
            key = f"{s.path.stem.split('_')[0]}_{i}"
            assert key not in seen, f"{key} in {split} and another split"
            seen[key] = s.label
            assert s.label == y[i]
            np.testing.assert_array_equal(cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED), x[i])
    assert len(seen) == 250
    # Val has each class in proportion to train's counts.
    val_counts = np.bincount([s.label for s in folder.val], minlength=10)
    quota = np.bincount(train_y, minlength=10) * n_val / 200
    assert np.all(np.floor(quota) <= val_counts) and np.all(val_counts <= np.ceil(quota))


def test_writer_is_deterministic_and_reuses_a_complete_folder(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    a = fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "a")
    b = fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "b", workers=1)
    assert _files(a) == _files(b)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in _files(a))
    # Complete: returned as is, the source is not even read.
    before = (a / ".complete").stat().st_mtime_ns
    assert fm.ensure_fashion_mnist_folder(tmp_path / "gone", cache_dir=tmp_path / "a") == a
    assert (a / ".complete").stat().st_mtime_ns == before


def test_interrupted_write_leaves_nothing_that_looks_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path / "src")
    calls = {"n": 0}
    real = cv2.imwrite

    def failing(path: str, img: np.ndarray) -> bool:
        calls["n"] += 1
        return calls["n"] < 100 and real(path, img)

    monkeypatch.setattr(cv2, "imwrite", failing)
    with pytest.raises(OSError, match="could not write"):
        fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []
    monkeypatch.setattr(cv2, "imwrite", real)
    root = fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "cache")
    assert fm.marker_info(root) is not None


def test_an_older_layout_is_rewritten(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    root = tmp_path / "cache" / "fashion-mnist"
    (root / "stale").mkdir(parents=True)
    (root / ".complete").write_text(json.dumps({"layout": fm.LAYOUT_VERSION - 1}))
    assert fm.ensure_fashion_mnist_folder(src, cache_dir=tmp_path / "cache") == root
    assert not (root / "stale").exists() and fm.marker_info(root) is not None


def test_cli_writes_the_folder_and_prints_split_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _source(tmp_path / "src")
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    assert main(["example", "--dataset", "fashion-mnist", "--source", str(src)]) == 0
    out = json.loads(capsys.readouterr().out)
    n_val = round(200 * fm.VAL_FRACTION)
    assert out == {
        "data": str(tmp_path / "cache" / "fashion-mnist"),
        "splits": {"train": 200 - n_val, "val": n_val, "test": 50},
    }
    # Options of the other data set are refused, never silently ignored.
    assert main(["example", "--dataset", "fashion-mnist", "--epochs", "3"]) == 2
    assert "--epochs applies to the digits example only" in capsys.readouterr().err
    assert main(["example", "--source", str(src)]) == 2
    assert "--source applies to --dataset fashion-mnist only" in capsys.readouterr().err


# -- the real package --------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed() -> Path:
    if fm.DEFAULT_SOURCE.is_dir():
        return fm.DEFAULT_SOURCE
    if os.environ.get("EDGECOMPRESS_REQUIRE_FASHION_MNIST") == "1":
        pytest.fail(
            f"EDGECOMPRESS_REQUIRE_FASHION_MNIST=1 but {fm.DEFAULT_SOURCE} is missing: "
            "apt-get install dataset-fashion-mnist (.ci/run does)"
        )
    pytest.skip(
        f"{fm.DEFAULT_SOURCE} is missing (apt-get install dataset-fashion-mnist); CI installs it"
    )


def test_real_package_has_60000_train_10000_test_in_10_balanced_classes(
    installed: Path,
) -> None:
    train_x, train_y = fm.read_split(installed, "train")
    test_x, test_y = fm.read_split(installed, "t10k")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
    val = fm.carve_val(train_y)
    assert len(val) == 5000 and np.bincount(train_y[val]).tolist() == [500] * 10


@pytest.mark.slow
def test_real_package_full_write(installed: Path, tmp_path: Path) -> None:
    # ~10 s to write the 70,000 PNGs and ~4 s to scan them on two cores.
    folder = scan_image_folder(fm.ensure_fashion_mnist_folder(installed, cache_dir=tmp_path))
    assert folder.split == "folder" and not folder.skipped
    assert [len(folder.train), len(folder.val), len(folder.test)] == [55000, 5000, 10000]
    assert folder.classes == list(fm.CLASS_FOLDERS)
