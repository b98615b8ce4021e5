"""The benchmark data: Fashion-MNIST (60,000 train + 10,000 test images, 28x28 grey,
10 classes, MIT licence) written once as an image folder with train/, val/ and test/.

The images come from Debian's ``dataset-fashion-mnist`` package, never from the network:
``apt-get install dataset-fashion-mnist`` puts the four idx files under
:data:`DEFAULT_SOURCE`; without root, ``apt-get download dataset-fashion-mnist &&
dpkg-deb -x dataset-fashion-mnist_*.deb DIR`` leaves them under
``DIR/usr/share/datasets/fashion-mnist`` (pass either folder as ``source``).

Splits: test is the 10,000 ``t10k`` images as given; val is 5,000 of the 60,000 train
images, carved stratified with seed 0 (500 per class); train is the other 55,000.
Torch-free (numpy + OpenCV).

>>> root = ensure_fashion_mnist_folder()  # doctest: +SKIP
>>> scan_image_folder(root).split  # doctest: +SKIP
'folder'
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import DataError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
# Label order; the numeric prefix keeps sorted folder order = label order.
CLASS_NAMES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
CLASS_FOLDERS = tuple(f"{i}_{name}" for i, name in enumerate(CLASS_NAMES))
IMAGE_SIZE = (28, 28)
# Pixel mean 0.2860 and std 0.3530 of the 60,000 train images in [0, 1] units; grey, so the
# same for each channel. Models see the 28x28 images as they are.
FASHION_SPEC = PreprocessSpec(
    input_size=IMAGE_SIZE, resize="stretch", mean=(0.286,) * 3, std=(0.353,) * 3
)
# idx files in the source folder, per source split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx magic numbers: two zero bytes, 0x08 (unsigned byte data), the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# 5,000 of the original 60,000 train images (same fraction for smaller sources).
VAL_FRACTION = 5000 / 60000
SEED = 0
# Bump when what is written changes: a cache whose marker names another layout is rewritten.
LAYOUT_VERSION = 1
_MARKER = ".complete"
INSTALL_HINT = (
    "install Debian's package as root: `apt-get update && apt-get install -y "
    "dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist); without "
    "root: `apt-get download dataset-fashion-mnist && dpkg-deb -x "
    "dataset-fashion-mnist_*.deb DIR` and pass --source DIR"
)
REINSTALL_HINT = (
    "reinstall it: `apt-get install --reinstall dataset-fashion-mnist` as root, or extract "
    "the package again with `dpkg-deb -x dataset-fashion-mnist_*.deb DIR`"
)


def default_cache() -> Path:
    """``$EDGECOMPRESS_CACHE``, else ``~/.cache/edgecompress``."""
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


# -- reading idx files -------------------------------------------------------------------


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one idx file (gzip-compressed when its name ends in ``.gz``) as a uint8 array.

    The header (big-endian): magic number (``0x0803`` images, ``0x0801`` labels: unsigned
    bytes, 3 or 1 dimensions), then one uint32 per dimension; then exactly
    ``prod(dims)`` bytes. Anything else is a :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {REINSTALL_HINT}") from None
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: truncated or corrupt ({exc}); {REINSTALL_HINT}") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found is not None and found != magic:
        raise DataError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} (an idx file of "
            f"unsigned bytes with {ndim} dimension(s)); {REINSTALL_HINT}"
        )
    if len(raw) < header:
        raise DataError(
            f"{path}: {len(raw)} bytes, shorter than an idx header ({header}); {REINSTALL_HINT}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != want:
        raise DataError(
            f"{path}: header says {'x'.join(map(str, dims))} = {want} bytes of data, the file "
            f"holds {len(raw) - header} (truncated or corrupt); {REINSTALL_HINT}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def resolve_source(source: Path | None = None) -> Path:
    """The folder holding the idx files: ``source`` itself, or ``source`` as the root of an
    extracted package (``source/usr/share/datasets/fashion-mnist``), else
    :data:`DEFAULT_SOURCE`."""
    if source is None:
        if not DEFAULT_SOURCE.is_dir():
            raise DataError(f"{DEFAULT_SOURCE}: Fashion-MNIST is not installed; {INSTALL_HINT}")
        return DEFAULT_SOURCE
    source = Path(source)
    nested = source / "usr" / "share" / "datasets" / "fashion-mnist"
    if nested.is_dir():
        return nested
    if not source.is_dir():
        raise DataError(f"{source}: no such folder for the Fashion-MNIST idx files; {INSTALL_HINT}")
    return source


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder / (stem + '.gz')}: missing (neither it nor an uncompressed {stem} is in "
        f"{folder}); {INSTALL_HINT}"
    )


def read_split(folder: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images N x 28 x 28, labels N)`` of the ``train`` or ``t10k`` idx files in
    ``folder``, checked: 28x28 images, as many labels as images, labels 0-9."""
    images_path = _find(folder, FILES[which][0])
    labels_path = _find(folder, FILES[which][1])
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's "
            f"are 28x28; {REINSTALL_HINT}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} "
            f"labels; {REINSTALL_HINT}"
        )
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} found, expected 0-9; {REINSTALL_HINT}"
        )
    return images, labels


def carve_val(labels: np.ndarray, fraction: float = VAL_FRACTION, seed: int = SEED) -> np.ndarray:
    """Indices of the val images, stratified: ``round(len(labels) * fraction)`` in all,
    shared among classes in proportion to their counts (largest remainder), each class's
    pick the first of a ``(seed, label)``-seeded shuffle; sorted."""
    total = round(len(labels) * fraction)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * total / max(len(labels), 1)
    take = np.floor(quota).astype(np.int64)
    # The leftover goes to the largest remainders, ties to the lower label.
    for k in np.argsort(-(quota - take), kind="stable")[: total - int(take.sum())]:
        take[k] += 1
    picked = []
    for label, n in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(len(idx))
        picked.append(idx[order[:n]])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


# -- writing the image folder ------------------------------------------------------------


def marker_info(root: Path) -> dict[str, Any] | None:
    """What the marker of a complete folder says (layout, split sizes), else ``None``."""
    try:
        info = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("layout") != LAYOUT_VERSION:
        return None
    return info


def ensure_fashion_mnist_folder(
    source: Path | None = None, cache_dir: Path | None = None, workers: int | None = None
) -> Path:
    """Write ``<cache>/fashion-mnist/{train,val,test}/<class>/<file>_<index>.png`` once
    and return the folder.

    Class folders are ``0_tshirt_top`` ... ``9_ankle_boot``; each PNG is the original
    28x28 grey image, named after its idx file and index (``train_00042.png``,
    ``t10k_00042.png``). Written to a temporary folder beside it and renamed when
    complete, so an interrupted run never leaves a half folder that later looks done; a
    complete folder (marker with ``LAYOUT_VERSION`` and the split sizes) is reused as is
    without reading ``source``; delete it to write it again.
    """
    root = Path(cache_dir or default_cache()) / "fashion-mnist"
    if marker_info(root) is not None:
        return root
    folder = resolve_source(source)
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "t10k")
    tmp = root.with_name(f".fashion-mnist.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, folder, (train_x, train_y), (test_x, test_y), workers)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if marker_info(root) is not None:  # another process finished first: same content
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # an older or incomplete folder: replaced, never merged
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if marker_info(root) is None:  # not the benign race where another process won
            raise
    return root


def _write(
    out: Path,
    source: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    workers: int | None,
) -> None:
    import cv2

    val_idx = carve_val(train[1])
    is_val = np.zeros(len(train[1]), bool)
    is_val[val_idx] = True
    # (split, images, labels, source file name prefix, indices into that file)
    jobs = [
        ("train", *train, "train", np.flatnonzero(~is_val)),
        ("val", *train, "train", val_idx),
        ("test", *test, "t10k", np.arange(len(test[1]))),
    ]
    for split, *_ in jobs:
        for name in CLASS_FOLDERS:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    tasks = [(split, x, y, prefix, int(i)) for split, x, y, prefix, idx in jobs for i in idx]

    def one(task: tuple[str, np.ndarray, np.ndarray, str, int]) -> None:
        split, x, y, prefix, i = task
        path = out / split / CLASS_FOLDERS[y[i]] / f"{prefix}_{i:05d}.png"
        if not cv2.imwrite(str(path), x[i]):
            raise OSError(f"{path}: OpenCV could not write the image")

    # PNG encoding and file writes release the GIL. Measured on two shared cores: the
    # 70,000 files take ~11 s on one thread, ~9 s with the pool.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, tasks):
            pass
    sizes = {split: len(idx) for split, *_, idx in jobs}
    info = {"layout": LAYOUT_VERSION, "source": str(source), "splits": sizes, "seed": SEED}
    (out / _MARKER).write_text(json.dumps(info, indent=2) + "\n")
