"""Detection data in memory, and the letterbox every runtime sees.

One form for every source format (COCO JSON in :mod:`edgecompress.detect.coco`, YOLO txt
labels in :mod:`edgecompress.detect.yolo`): per image its file, size, boxes (xyxy, pixels
of the original image) and class indices; the class names once per set. Torch-free
(numpy + OpenCV).

>>> image = np.zeros((480, 640, 3), np.uint8)
>>> padded, lb = letterbox(image, 320)
>>> padded.shape, lb.scale, (lb.pad_x, lb.pad_y)
((320, 320, 3), 0.5, (0, 40))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompress.errors import DataError
from edgecompress.runtime.detect_post import (
    Letterbox,
    from_letterbox,
    letterbox_geometry,
    to_letterbox,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DetectionImage",
    "DetectionSet",
    "Letterbox",
    "check_box",
    "from_letterbox",
    "letterbox",
    "letterbox_geometry",
    "load_image",
    "to_letterbox",
]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Boxes may pass the image's edge by this many pixels (rounding in label tools) and are
# clipped to it; further out is an error.
EDGE_TOLERANCE = 0.5
# YOLOv8's grey, also PreprocessSpec's default pad value.
PAD_VALUE = 114


@dataclass(frozen=True)
class DetectionImage:
    """One image and its objects: ``boxes`` xyxy in pixels (N x 4, float64), ``classes``
    indices into the set's class names (N), ``crowd`` COCO's ``iscrowd`` regions (N; mAP
    ignores detections inside them and never counts them as missed)."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        classes = np.asarray(self.classes, np.int64).reshape(-1)
        crowd = np.asarray(self.crowd, bool).reshape(-1)
        if not len(crowd):
            crowd = np.zeros(len(classes), bool)
        if not len(boxes) == len(classes) == len(crowd):
            raise ValueError(
                f"{self.path}: {len(boxes)} boxes, {len(classes)} classes, {len(crowd)} crowd "
                "flags; expected one of each per object"
            )
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "crowd", crowd)


@dataclass(frozen=True)
class DetectionSet:
    """The images of one split and the class names their class indices refer to."""

    images: tuple[DetectionImage, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def by_id(self) -> dict[int, DetectionImage]:
        return {im.image_id: im for im in self.images}

    @property
    def objects(self) -> int:
        return sum(len(im.classes) for im in self.images)


def load_image(path: Path) -> np.ndarray:
    """An image file as uint8 H x W x 3 BGR (grey and alpha images become 3 channels)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found; restore it or remove its entry from the labels")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(
            f"{path}: not a readable image (OpenCV could not decode it: truncated or not an "
            "image); replace the file or remove it and its labels"
        )
    return image


def check_box(
    box: tuple[float, float, float, float], width: int, height: int, where: str
) -> tuple[float, float, float, float]:
    """``box`` (xyxy, pixels) clipped to the image when it passes the edge by at most
    :data:`EDGE_TOLERANCE` pixels; a :class:`DataError` naming ``where`` when it is empty,
    not finite, or further outside."""
    x1, y1, x2, y2 = box
    if not all(np.isfinite(box)):
        raise DataError(f"{where}: box {box} is not finite; fix or delete this label")
    if x2 <= x1 or y2 <= y1:
        raise DataError(
            f"{where}: empty box (x {x1:g}..{x2:g}, y {y1:g}..{y2:g}): width and height must "
            "be positive; fix or delete this label"
        )
    t = EDGE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise DataError(
            f"{where}: box (x {x1:g}..{x2:g}, y {y1:g}..{y2:g}) lies outside the {width}x{height} "
            "image; the label does not belong to this image, or its coordinates are in "
            "another unit; fix or delete it"
        )
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


def letterbox(
    image: np.ndarray, size: int | tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """``image`` resized to fit ``size`` (``(height, width)`` or one side), aspect kept,
    centred on a ``pad_value`` background; and its :class:`Letterbox` (scale and padding),
    which maps boxes both ways (:func:`to_letterbox`, :func:`from_letterbox`). The same
    pixels as ``PreprocessSpec(resize="letterbox").prepare``."""
    import cv2

    height, width = image.shape[:2]
    lb = letterbox_geometry(width, height, size)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    new_w, new_h = max(1, round(width * lb.scale)), max(1, round(height * lb.scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.full((out_h, out_w, *image.shape[2:]), pad_value, dtype=image.dtype)
    out[lb.pad_y : lb.pad_y + new_h, lb.pad_x : lb.pad_x + new_w] = resized.reshape(
        new_h, new_w, *image.shape[2:]
    )
    return out, lb
