"""Image files as a detector's NPU input, on the board: decode, letterbox, uint8 NHWC.

The pixels are those of ``PreprocessSpec(resize="letterbox").prepare`` (OpenCV's
bilinear resize, grey padding, centred, RGB), which the detector was trained, exported
and calibrated with; :func:`letterbox_geometry` is the same geometry, so boxes map back
with :func:`~edgecompress.runtime.detect_post.from_letterbox`.

Torch-free, and runs on the Pythons boards ship (3.8): OpenCV when the board has it;
otherwise Pillow decodes and a NumPy bilinear resize with OpenCV's sampling points
replaces ``cv2.resize`` (within one grey level of it, not bit-identical).

>>> x, lb = letterboxed_input(Path("street.jpg"), (640, 640))  # doctest: +SKIP
>>> x.shape, x.dtype  # doctest: +SKIP
((1, 640, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import DataError, MissingToolchainError
from edgecompress.runtime.detect_post import Letterbox, letterbox_geometry

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
PAD_VALUE = 114  # YOLOv8's grey, PreprocessSpec's default


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) directly in this folder"
        )
    return found


def read_bgr(path: Path) -> np.ndarray:
    """An image file as uint8 H x W x 3 BGR (grey and alpha images become 3 channels)."""
    cv2 = _cv2()
    if cv2 is not None:
        data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
        if image is None:
            raise DataError(f"{path}: not a readable image (OpenCV could not decode it)")
        return image
    try:
        from PIL import Image
    except ImportError:
        raise MissingToolchainError(
            "reading images on this device needs OpenCV or Pillow (pip install "
            "opencv-python-headless, or apt-get install python3-opencv / python3-pil)"
        ) from None
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image (Pillow: {exc})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a uint8 H x W x C image: ``cv2.resize(INTER_LINEAR)`` where
    OpenCV is installed, else the same sampling points in NumPy."""
    cv2 = _cv2()
    if cv2 is not None:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return _resize_linear_numpy(image, width, height)


def _axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: pixel centres aligned, edges clamped;
    the weight of the second tap in 1/2048 steps as OpenCV's fixed point has it."""
    f = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    lo = np.floor(f).astype(np.int64)
    w = f - lo
    w[lo < 0] = 0.0
    lo[lo < 0] = 0
    w[lo >= src - 1] = 0.0
    lo[lo >= src - 1] = src - 1
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, np.round(w * 2048.0) / 2048.0


def _resize_linear_numpy(image: np.ndarray, width: int, height: int) -> np.ndarray:
    y0, y1, wy = _axis(image.shape[0], height)
    x0, x1, wx = _axis(image.shape[1], width)
    img = image.astype(np.float64)
    wx_ = wx[None, :, None] if img.ndim == 3 else wx[None, :]
    rows = img[:, x0] * (1.0 - wx_) + img[:, x1] * wx_
    wy_ = wy[:, None, None] if img.ndim == 3 else wy[:, None]
    out = rows[y0] * (1.0 - wy_) + rows[y1] * wy_
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def letterbox_rgb(
    image_bgr: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """``image_bgr`` fitted into ``size`` (height, width), aspect kept, centred on grey:
    uint8 H x W x 3 RGB, and its :class:`Letterbox`."""
    src_h, src_w = image_bgr.shape[:2]
    out_h, out_w = size
    lb = letterbox_geometry(src_w, src_h, (out_h, out_w))
    new_w, new_h = max(1, round(src_w * lb.scale)), max(1, round(src_h * lb.scale))
    out = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    out[lb.pad_y : lb.pad_y + new_h, lb.pad_x : lb.pad_x + new_w] = resize_linear(
        image_bgr, new_w, new_h
    )
    return np.ascontiguousarray(out[:, :, ::-1]), lb


def letterboxed_input(
    path: Path, size: tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """An image file as the NPU's input, uint8 1 x H x W x 3 RGB, and its letterbox."""
    rgb, lb = letterbox_rgb(read_bgr(path), size, pad_value)
    return rgb[None], lb
