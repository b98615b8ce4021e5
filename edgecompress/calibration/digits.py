"""The built-in example data: scikit-learn's ``digits`` (1,797 8x8 images, 10 classes)
written once as an image folder with train/, val/ and test/ (60/20/20), so the example
takes the same path as a user's data.

>>> root = ensure_digits_folder()  # doctest: +SKIP
>>> scan_image_folder(root).split  # doctest: +SKIP
'folder'
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgecompress.calibration.preprocess import PreprocessSpec

# Mean/std of the 32x32 upsampled images in [0, 1] units, computed once over all 1,797
# images exactly as written below (pixel mean 0.3052, std 0.3236), rounded; grey, so the
# same for each channel.
DIGITS_SPEC = PreprocessSpec(
    input_size=(32, 32), resize="stretch", mean=(0.305, 0.305, 0.305), std=(0.324, 0.324, 0.324)
)
DIGITS_COUNT = 1797
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
# Bump when what is written changes: a cache whose marker names another layout is rewritten.
# 1: train/val 80/20; 2: train/val/test 60/20/20.
LAYOUT_VERSION = 2
_MARKER = ".complete"


def default_cache() -> Path:
    """``$EDGECOMPRESS_CACHE``, else ``~/.cache/edgecompress``."""
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def _marker_text(count: int = DIGITS_COUNT) -> str:
    return f"{count} images, layout {LAYOUT_VERSION}\n"


def _complete(root: Path) -> bool:
    try:
        return (root / _MARKER).read_text() == _marker_text()
    except OSError:
        return False


def ensure_digits_folder(cache_dir: Path | None = None) -> Path:
    """Write ``<cache>/digits/{train,val,test}/<digit>/<index>.png`` once and return the
    folder.

    A stratified 60/20/20 split with seed 0 (per digit: test takes ``round(n * 0.2)`` of a
    seeded shuffle, val the next ``round(n * 0.2)``, train the rest: 1,079 / 359 / 359
    images); each image upsampled to 32x32 (bilinear, so strokes stay smooth) and scaled
    from 0..16 to 0..255. Written to a temporary folder
    beside it and renamed when complete, so an interrupted run never leaves a half folder
    that later looks done; a complete folder (marker file with the count and
    ``LAYOUT_VERSION``) is reused as is, one from an older layout is rewritten.
    """
    root = Path(cache_dir or default_cache()) / "digits"
    if _complete(root):
        return root
    tmp = root.with_name(f".digits.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _complete(root):  # another process finished first: keep its folder, it is identical
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # an older incomplete folder: replaced, never merged
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(root):  # not the benign race where another process just won
            raise
    return root


def _write(folder: Path) -> None:
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = round(len(idx) * TEST_FRACTION)
        n_val = round(len(idx) * VAL_FRACTION)
        for rank, i in enumerate(idx):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out = folder / split / str(label)
            out.mkdir(parents=True, exist_ok=True)
            img = digits.images[i].astype(np.float32) / 16.0 * 255.0
            img = cv2.resize(img, (32, 32), interpolation=cv2.INTER_LINEAR)
            png = np.clip(np.round(img), 0, 255).astype(np.uint8)
            if not cv2.imwrite(str(out / f"{i:04d}.png"), png):
                raise OSError(f"{out / f'{i:04d}.png'}: OpenCV could not write the image")
    (folder / _MARKER).write_text(_marker_text(len(digits.target)))
