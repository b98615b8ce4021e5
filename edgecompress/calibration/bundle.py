"""The data one build uses, loaded once and shared by every stage: the train split, the
validation split (normalised, and as uint8 for NPU toolchains that normalise on the
device), the calibration images, and the test split. Torch-free.

Val is for choosing (best epoch, early stop, sensitivity, budget back-off); test is only for
the accuracy that gets reported. Test images are reachable only through the ``test_*``
members, so code that trains or chooses cannot pick them up by accident: ``train_arrays``,
``val_*`` and ``calibration_prepared`` never include them.

``eval_images`` caps val and test alike (each to at most that many images, a class-balanced
seeded pick): one knob for "evaluate on fewer images", at the cost of a wider confidence
interval on the reported number.

>>> data = DataBundle(Path("data"), spec, DataConfig())  # doctest: +SKIP
>>> fit(model, None, data.train_arrays(), (data.val_inputs, data.val_labels), cfg)  # doctest: +SKIP
>>> classification_metrics(run(model, data.test_inputs), data.test_labels)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgecompress.calibration.dataset import (
    ImageFolder,
    Sample,
    duplicate_names,
    load_samples,
    pick_calibration,
    scan_image_folder,
)
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import ConfigError


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of each class carved for val when there is no val/"
    )
    test_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="share of each class carved for test when there is no test/",
    )
    seed: int = Field(0, description="seeds the carving, the calibration pick and the caps")
    calibration_images: int = Field(100, ge=1, description="images handed to quantizers")
    eval_images: int | None = Field(
        None, ge=1, description="cap on validation and on test images, each (all if unset)"
    )
    classes: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="the class each model output is, in output order; labels are each class "
        "folder's index here (unset: the sorted class-folder names, one per output)",
    )

    @field_validator("classes")
    @classmethod
    def _names_once(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        empty = [i for i, n in enumerate(names) if not n.strip()]
        if empty:
            raise ValueError(f"entries {empty} are empty; give a class name for every output")
        dupes = duplicate_names(names)
        if dupes:
            raise ValueError(f"{dupes} appear more than once; name each output once")
        return names

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (train keeps the rest), got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


def read_classes(value: str) -> list[str]:
    """The class names ``--classes`` gives: a text file with one name per line (as the
    ``imagenet_classes.txt`` files that ship with models), or a comma-separated list.

    >>> read_classes("cat,dog,bird")
    ['cat', 'dog', 'bird']
    """
    path = Path(value)
    if path.is_file():
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        blank = [i + 1 for i, line in enumerate(lines) if not line]
        if blank:
            # A skipped line would shift every later output by one: refuse, do not guess.
            raise ConfigError(
                f"{path}: line(s) {blank} are blank; give one class name per line, one line "
                "per model output, in output order"
            )
        return lines
    if "," in value:
        return [name.strip() for name in value.split(",")]
    raise ConfigError(
        f"--classes {value}: no such file; give a text file with one class name per line "
        "(in model output order) or a comma-separated list such as cat,dog,bird"
    )


@dataclass
class DataBundle:
    root: Path
    spec: PreprocessSpec
    cfg: DataConfig
    folder: ImageFolder = field(init=False)
    decode_skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = scan_image_folder(
            self.root,
            self.cfg.val_fraction,
            self.cfg.seed,
            self.cfg.test_fraction,
            self.cfg.classes,
        )

    def _capped(self, samples: list[Sample]) -> list[Sample]:
        cap = self.cfg.eval_images
        if cap is not None and len(samples) > cap:
            return pick_calibration(samples, cap, self.cfg.seed)
        return samples

    # -- validation: for choosing ------------------------------------------------------

    @cached_property
    def eval_samples(self) -> list[Sample]:
        """The validation samples used (all of val, or ``eval_images`` of them)."""
        return self._capped(self.folder.val)

    @cached_property
    def _val(self) -> tuple[np.ndarray, np.ndarray]:
        # Decode once as uint8; normalising is cheap and keeps the two views identical.
        return load_samples(
            self.eval_samples, self.spec, prepared=True, skipped=self.decode_skipped
        )

    @property
    def val_prepared(self) -> np.ndarray:
        """uint8 N x H x W x C in the model's channel order (what an NPU receives)."""
        return self._val[0]

    @property
    def val_labels(self) -> np.ndarray:
        return self._val[1]

    @cached_property
    def val_inputs(self) -> np.ndarray:
        """float32 model inputs (normalised, in the model's layout)."""
        return np.stack([self.spec.normalize(img) for img in self.val_prepared])

    # -- test: only for the reported accuracy ------------------------------------------

    @cached_property
    def test_samples(self) -> list[Sample]:
        """The test samples used (all of test, or ``eval_images`` of them)."""
        return self._capped(self.folder.test)

    @cached_property
    def _test(self) -> tuple[np.ndarray, np.ndarray]:
        return load_samples(
            self.test_samples, self.spec, prepared=True, skipped=self.decode_skipped
        )

    @property
    def test_prepared(self) -> np.ndarray:
        """uint8 N x H x W x C in the model's channel order, like ``val_prepared``."""
        return self._test[0]

    @property
    def test_labels(self) -> np.ndarray:
        return self._test[1]

    @cached_property
    def test_inputs(self) -> np.ndarray:
        """float32 model inputs (normalised, in the model's layout), like ``val_inputs``."""
        return np.stack([self.spec.normalize(img) for img in self.test_prepared])

    # -- train and calibration ---------------------------------------------------------

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
        """Split sizes and where each came from (``sources``: a folder, or carved), how
        class folders map to model outputs (``class_outputs``; ``labels``: by the sorted
        folder names or by ``data.classes``), the images each evaluation uses, and skipped
        files."""
        info = self.folder.summary()
        skipped = list(self.folder.skipped) + self.decode_skipped
        return {
            "root": str(self.root),
            "classes": len(self.folder.classes),
            "outputs": info["outputs"],
            "labels": "sorted folder names" if self.cfg.classes is None else "data.classes",
            "class_outputs": info["class_outputs"],
            "train": len(self.folder.train),
            "val": len(self.folder.val),
            "test": len(self.folder.test),
            "split": info["split"],
            "sources": info["sources"],
            "eval_images": len(self.eval_samples),
            "test_images": len(self.test_samples),
            "skipped": len(skipped),
            "skipped_examples": [f"{p}: {why}" for p, why in skipped[:5]],
            "skipped_files": [f"{p}: {why}" for p, why in skipped],
        }
