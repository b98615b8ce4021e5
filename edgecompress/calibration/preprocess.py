"""The one preprocessing spec. It travels with the model into evaluation, calibration,
export and the device so that every toolchain sees the same numbers.

Torch-free on purpose (numpy + OpenCV): the on-device agent uses it too.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgecompress.errors import DataError

# ImageNet's mean/std as one grey value (OpenCV's luminance weights of R, G, B).
GREY = ((0.449,), (0.226,))
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class ResizeMode(StrEnum):
    stretch = "stretch"  # resize to the input size, aspect ratio not kept
    letterbox = "letterbox"  # fit inside, pad the rest (detectors)
    center_crop = "center_crop"  # shorter side to size / crop_ratio, then centre crop (ImageNet)


class ChannelOrder(StrEnum):
    rgb = "RGB"
    bgr = "BGR"


class Layout(StrEnum):
    nchw = "NCHW"
    nhwc = "NHWC"


class PreprocessSpec(BaseModel):
    """How an image file becomes a model input.

    ``mean``/``std`` are in [0, 1] units like torchvision's; ``mean_255``/``std_255`` give
    them in pixel units for toolchains (RKNN) that normalise on the device.

    >>> spec = PreprocessSpec(input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> spec.input_shape(batch=1)
    (1, 3, 32, 32)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: tuple[int, int] = Field((224, 224), description="(height, width) in pixels")
    resize: ResizeMode = ResizeMode.center_crop
    crop_ratio: float = Field(0.875, gt=0.0, le=1.0)
    # A greyscale model takes one channel: images are converted to grey (OpenCV's
    # luminance), and mean/std have one value (default: ImageNet's, as grey).
    channels: Literal[1, 3] = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: ChannelOrder = ChannelOrder.rgb
    layout: Layout = Layout.nchw
    pad_value: int = Field(114, ge=0, le=255)

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"input_size must be positive (height, width), got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _grey_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("channels") == 1:
            data = {"mean": GREY[0], "std": GREY[1], **data}
        return data

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> PreprocessSpec:
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} values for a {self.channels}-channel "
                    f"input: give one per channel ({'grey' if self.channels == 1 else 'R, G, B'})"
                )
        return self

    def with_channels(self, channels: int) -> PreprocessSpec:
        """The same spec for a ``channels``-channel model (mean/std given for another
        channel count are refused; defaults follow the channels)."""
        given = self.model_dump(exclude_unset=True)
        return PreprocessSpec(**{**given, "channels": channels})

    @property
    def mean_255(self) -> list[float]:
        return [m * 255.0 for m in self.mean]

    @property
    def std_255(self) -> list[float]:
        return [s * 255.0 for s in self.std]

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        h, w = self.input_size
        if self.layout is Layout.nchw:
            return (batch, self.channels, h, w)
        return (batch, h, w, self.channels)

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """Geometry and channel order only: uint8 HxWxC in the model's channel order (C = 1:
        grey).

        This is what an NPU toolchain receives as calibration input; it applies
        mean/std itself.
        """
        import cv2

        h, w = self.input_size
        src_h, src_w = image_bgr.shape[:2]
        if self.resize is ResizeMode.stretch:
            out = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        elif self.resize is ResizeMode.letterbox:
            scale = min(h / src_h, w / src_w)
            nh, nw = max(1, round(src_h * scale)), max(1, round(src_w * scale))
            resized = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
            out = np.full((h, w, 3), self.pad_value, dtype=np.uint8)
            top, left = (h - nh) // 2, (w - nw) // 2
            out[top : top + nh, left : left + nw] = resized
        else:
            scale = max(h, w) / self.crop_ratio / min(src_h, src_w)
            nh, nw = max(h, round(src_h * scale)), max(w, round(src_w * scale))
            resized = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
            top, left = (nh - h) // 2, (nw - w) // 2
            out = resized[top : top + h, left : left + w]
        if self.channels == 1:
            out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[:, :, None]
        elif self.channel_order is ChannelOrder.rgb:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out, dtype=np.uint8)

    def normalize(self, prepared: np.ndarray) -> np.ndarray:
        """uint8 HxWxC (from :meth:`prepare`) -> float32 in the model's layout."""
        scaled = prepared.astype(np.float32) / np.float32(255.0)
        x = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout is Layout.nchw:
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def load(self, path: Path) -> np.ndarray:
        """Read an image file and return the float32 model input for it."""
        return self.normalize(self.prepare(read_image(path)))


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR (grey images become 3 channels)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image (OpenCV could not decode it)")
    return image
