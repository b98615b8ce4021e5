"""The data one build uses, loaded once and shared by every stage: validation inputs
(normalised, and as uint8 for NPU toolchains that normalise on the device), labels, and
the calibration images. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.calibration.dataset import (
    ImageFolder,
    Sample,
    load_samples,
    pick_calibration,
    scan_image_folder,
)
from edgecompress.calibration.preprocess import PreprocessSpec


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="used when there is no val/ folder"
    )
    seed: int = 0
    calibration_images: int = Field(100, ge=1, description="images handed to quantizers")
    eval_images: int | None = Field(
        None, ge=1, description="cap on validation images (all if unset)"
    )


@dataclass
class DataBundle:
    root: Path
    spec: PreprocessSpec
    cfg: DataConfig
    folder: ImageFolder = field(init=False)
    decode_skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = scan_image_folder(self.root, self.cfg.val_fraction, self.cfg.seed)

    @cached_property
    def eval_samples(self) -> list[Sample]:
        val = self.folder.val
        if self.cfg.eval_images is not None and len(val) > self.cfg.eval_images:
            val = pick_calibration(val, self.cfg.eval_images, self.cfg.seed)
        return val

    @cached_property
    def _val(self) -> tuple[np.ndarray, np.ndarray]:
        # Decode once as uint8; normalising is cheap and keeps the two views identical.
        return load_samples(
            self.eval_samples, self.spec, prepared=True, skipped=self.decode_skipped
        )

    @property
    def val_prepared(self) -> np.ndarray:
        """uint8 N x H x W x 3 in the model's channel order (what an NPU receives)."""
        return self._val[0]

    @property
    def val_labels(self) -> np.ndarray:
        return self._val[1]

    @cached_property
    def val_inputs(self) -> np.ndarray:
        """float32 model inputs (normalised, in the model's layout)."""
        return np.stack([self.spec.normalize(img) for img in self.val_prepared])

    @cached_property
    def calibration_prepared(self) -> list[np.ndarray]:
        picked = pick_calibration(
            self.folder.train or self.folder.val, self.cfg.calibration_images, self.cfg.seed
        )
        images, _ = load_samples(picked, self.spec, prepared=True, skipped=self.decode_skipped)
        return list(images)

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return load_samples(self.folder.train, self.spec, skipped=self.decode_skipped)

    def summary(self) -> dict[str, Any]:
        info = self.folder.summary()
        skipped = list(self.folder.skipped) + self.decode_skipped
        return {
            "root": str(self.root),
            "classes": len(self.folder.classes),
            "train": len(self.folder.train),
            "val": len(self.folder.val),
            "eval_images": len(self.eval_samples),
            "skipped": len(skipped),
            "skipped_examples": [f"{p}: {why}" for p, why in skipped[:5]],
            "split": info.get("split", "folder" if (self.root / "val").is_dir() else "seeded"),
        }
