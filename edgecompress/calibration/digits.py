"""The built-in example data: scikit-learn's ``digits`` (1,797 8x8 images, 10 classes)
written once as an image folder, so the example takes the same path as a user's data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgecompress.calibration.preprocess import PreprocessSpec

# Mean/std of the 32x32 upsampled images in [0, 1] units, computed once over all 1,797
# images as written below (0.3052, 0.3236), rounded; grey, so the same for each channel.
DIGITS_SPEC = PreprocessSpec(
    input_size=(32, 32), resize="stretch", mean=(0.305, 0.305, 0.305), std=(0.324, 0.324, 0.324)
)
_MARKER = ".complete"


def default_cache() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def ensure_digits_folder(cache_dir: Path | None = None) -> Path:
    """Write ``<cache>/digits/{train,val}/<digit>/<index>.png`` once and return the folder.

    A stratified 80/20 split with seed 0. Written to a temporary folder and renamed when
    complete, so an interrupted run never leaves a half folder that later looks done.
    """
    import cv2
    from sklearn.datasets import load_digits

    root = Path(cache_dir or default_cache()) / "digits"
    if (root / _MARKER).exists():
        return root
    digits = load_digits()
    tmp = root.with_name(f".digits.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = idx[rng.permutation(len(idx))]
        n_val = round(len(idx) * 0.2)
        for rank, i in enumerate(idx):
            folder = tmp / ("val" if rank < n_val else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            img = digits.images[i].astype(np.float32) / 16.0 * 255.0
            img = cv2.resize(img, (32, 32), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(
                str(folder / f"{i:04d}.png"), np.clip(np.round(img), 0, 255).astype(np.uint8)
            )
    (tmp / _MARKER).write_text(f"{len(digits.target)} images\n")
    if root.exists():  # an older incomplete folder: replaced, never merged
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root
