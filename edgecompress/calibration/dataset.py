"""Image folders: class per subfolder, ``train/`` and ``val/`` if present, else a
deterministic stratified split. Junk files are counted with a reason, never fatal unless
nothing usable is left. Torch-free (numpy + OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import IMAGE_SUFFIXES, PreprocessSpec, read_image
from edgecompress.errors import DataError

LAYOUT = "DIR/<class>/<image> or DIR/train/<class>/<image> + DIR/val/<class>/<image>"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    split: str = "seeded"  # "folder" when train/ and val/ were given

    def summary(self) -> dict[str, Any]:
        per_class = {c: 0 for c in self.classes}
        for s in [*self.train, *self.val]:
            per_class[self.classes[s.label]] += 1
        return {
            "split": self.split,
            "train": len(self.train),
            "val": len(self.val),
            "per_class": per_class,
            "skipped": len(self.skipped),
            "skipped_examples": [f"{p}: {why}" for p, why in self.skipped[:5]],
        }


def _class_files(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            skipped.append((path, "hidden file"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"not an image suffix ({path.suffix or 'none'})"))
        elif path.stat().st_size == 0:
            skipped.append((path, "empty file"))
        else:
            files.append(path)
    return files


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_classes(root: Path, skipped: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    for loose in sorted(p for p in root.iterdir() if p.is_file()):
        skipped.append((loose, "outside any class folder"))
    return {d.name: _class_files(d, skipped) for d in _class_dirs(root)}


def scan_image_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> ImageFolder:
    """List the images under ``root`` and split them (see module docstring)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such image folder; expected {LAYOUT}")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an image folder {LAYOUT}")
    skipped: list[tuple[Path, str]] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_files = _scan_classes(root / "train", skipped)
        val_files = _scan_classes(root / "val", skipped)
        extra = sorted(set(val_files) - set(train_files))
        if extra:
            raise DataError(
                f"{root / 'val'}: class folder(s) {extra} have no counterpart in {root / 'train'}"
            )
        classes = sorted(train_files)
        train = [Sample(p, i) for i, c in enumerate(classes) for p in train_files[c]]
        val = [Sample(p, i) for i, c in enumerate(classes) for p in val_files.get(c, [])]
        folder = ImageFolder(root, classes, train, val, skipped, "folder")
    else:
        files = _scan_classes(root, skipped)
        classes = sorted(files)
        train, val = _split(classes, files, val_fraction, seed)
        folder = ImageFolder(root, classes, train, val, skipped, "seeded")
    if not classes:
        raise DataError(f"{root}: no class subfolders; expected {LAYOUT}")
    if not folder.train and not folder.val:
        reasons = (
            f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})"
            if skipped
            else ""
        )
        raise DataError(f"{root}: no usable images in {len(classes)} class folder(s){reasons}")
    return folder


def _split(
    classes: list[str], files: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Stratified and deterministic: same files -> same split on every machine."""
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(classes):
        paths = files[name]
        order = np.random.default_rng([seed, label]).permutation(len(paths))
        n_val = max(1, round(len(paths) * val_fraction)) if len(paths) >= 2 else 0
        for rank, idx in enumerate(order):
            (val if rank < n_val else train).append(Sample(paths[idx], label))
    return sorted(train, key=lambda s: str(s.path)), sorted(val, key=lambda s: str(s.path))


def load_samples(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    prepared: bool = False,
    skipped: list[tuple[Path, str]] | None = None,
    workers: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess ``samples``: float32 model inputs, or (``prepared``) uint8
    N x H x W x 3 in the model's channel order. Undecodable files go to ``skipped``."""

    def one(s: Sample) -> np.ndarray | str:
        try:
            image = spec.prepare(read_image(s.path))
        except DataError:
            return "could not be decoded as an image"
        return image if prepared else spec.normalize(image)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV releases the GIL
        results = list(pool.map(one, samples))
    arrays, labels = [], []
    for s, r in zip(samples, results, strict=True):
        if isinstance(r, str):
            if skipped is not None:
                skipped.append((s.path, r))
        else:
            arrays.append(r)
            labels.append(s.label)
    if not arrays:
        where = samples[0].path.parent if samples else "the image folder"
        raise DataError(f"{where}: none of {len(samples)} images could be read")
    return np.stack(arrays), np.asarray(labels, dtype=np.int64)


def pick_calibration(samples: Sequence[Sample], n: int, seed: int = 0) -> list[Sample]:
    """A class-balanced pick: round-robin over classes in a seeded shuffle."""
    by_class: dict[int, list[Sample]] = {}
    for idx in np.random.default_rng(seed).permutation(len(samples)):
        s = samples[int(idx)]
        by_class.setdefault(s.label, []).append(s)
    queues = [by_class[k] for k in sorted(by_class)]
    picked: list[Sample] = []
    while len(picked) < min(n, len(samples)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return picked
