"""Image folders: class per subfolder, ``train/`` and ``val/`` if present, else a
deterministic stratified split. Junk files are counted with a reason, never fatal unless
nothing usable is left. Torch-free (numpy + OpenCV).

>>> folder = scan_image_folder(Path("data"))  # doctest: +SKIP
>>> x, y = load_samples(folder.val, spec)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import IMAGE_SUFFIXES, PreprocessSpec, read_image
from edgecompress.errors import ConfigError, DataError

LAYOUT = "DIR/<class>/<image> or DIR/train/<class>/<image> + DIR/val/<class>/<image>"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    """What :func:`scan_image_folder` found. ``notes`` records things that are allowed
    but worth knowing (a single class, a class with no usable image)."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    split: str = "seeded"  # "folder" when train/ and val/ were given
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts for the report: per split, per class (and split), skipped files."""
        per_class = {c: {"train": 0, "val": 0} for c in self.classes}
        for split, samples in (("train", self.train), ("val", self.val)):
            for s in samples:
                per_class[self.classes[s.label]][split] += 1
        return {
            "split": self.split,
            "classes": len(self.classes),
            "train": len(self.train),
            "val": len(self.val),
            "per_class": per_class,
            "skipped": len(self.skipped),
            "skipped_examples": [f"{p}: {why}" for p, why in self.skipped[:5]],
            "notes": list(self.notes),
        }


def _key(path: Path, base: Path) -> str:
    # Sort on the POSIX relative path: the same on every OS, filesystem and root location.
    return path.relative_to(base).as_posix()


def _class_files(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Every usable image under one class folder, nested folders included, in a
    machine-independent order; the rest goes to ``skipped`` with the reason."""
    files = []
    for path in sorted(
        (p for p in folder.rglob("*") if p.is_file()), key=lambda p: _key(p, folder)
    ):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            skipped.append((path, "hidden file"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"not an image suffix ({path.suffix or 'none'})"))
        elif path.stat().st_size == 0:
            skipped.append((path, "empty file"))
        else:
            files.append(path)
    return files


def _scan_classes(root: Path, skipped: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    """Class name -> its image files, for each visible subfolder of ``root``."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append((entry, "hidden folder" if entry.is_dir() else "hidden file"))
        elif entry.is_dir():
            classes[entry.name] = _class_files(entry, skipped)
        else:
            skipped.append((entry, "outside any class folder"))
    return classes


def _check_root(root: Path, val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not root.exists():
        raise DataError(f"{root}: no such image folder; expected {LAYOUT}")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an image folder {LAYOUT}")
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val:
        there, missing = ("train", "val") if has_train else ("val", "train")
        raise DataError(
            f"{root}: has {there}/ but no {missing}/; add {root / missing}/<class>/<image>, "
            f"or point at {root / there} to split it automatically"
        )


def scan_image_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> ImageFolder:
    """List the images under ``root`` and split them (see module docstring).

    Labels are the sorted class-folder names' indices. The seeded split is stratified and
    depends only on the relative file names, so it is the same on every machine.
    """
    root = Path(root)
    _check_root(root, val_fraction)
    skipped: list[tuple[Path, str]] = []
    if (root / "train").is_dir():
        train_files = _scan_classes(root / "train", skipped)
        val_files = _scan_classes(root / "val", skipped)
        extra = sorted(set(val_files) - set(train_files))
        if extra:
            raise DataError(
                f"{root / 'val'}: class folder(s) {extra} have no counterpart in "
                f"{root / 'train'}; add them there or remove them from val/"
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
        loose = sum(why == "outside any class folder" for _, why in skipped)
        found = f" (found {loose} file(s) directly in it)" if loose else ""
        raise DataError(f"{root}: no class subfolders{found}; expected {LAYOUT}")
    if not folder.train and not folder.val:
        reasons = (
            f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})"
            if skipped
            else ""
        )
        raise DataError(f"{root}: no usable images in {len(classes)} class folder(s){reasons}")
    folder.notes.extend(_notes(folder))
    return folder


def _notes(folder: ImageFolder) -> list[str]:
    notes = []
    if len(folder.classes) == 1:
        notes.append(
            f"single class {folder.classes[0]!r}: fine for calibration, accuracy is meaningless"
        )
    summary = folder.summary()["per_class"]
    empty = [c for c, n in summary.items() if n["train"] + n["val"] == 0]
    if empty:
        notes.append(f"class folder(s) with no usable image: {empty}")
    no_val = [c for c, n in summary.items() if n["val"] == 0 and n["train"] > 0]
    if no_val:
        notes.append(f"class(es) with no validation image: {no_val}")
    return notes


def _split(
    classes: list[str], files: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Stratified and deterministic: same files -> same split on every machine. Every
    class with two or more images gets at least one validation and one training image."""
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(classes):
        paths = files[name]  # already in machine-independent order
        order = np.random.default_rng([seed, label]).permutation(len(paths))
        n = len(paths)
        n_val = min(n - 1, max(1, round(n * val_fraction))) if n >= 2 else 0
        for rank, idx in enumerate(order):
            (val if rank < n_val else train).append(Sample(paths[idx], label))
    return sorted(train, key=_sample_key), sorted(val, key=_sample_key)


def _sample_key(s: Sample) -> tuple[int, str]:
    return s.label, s.path.as_posix()


def load_samples(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    prepared: bool = False,
    skipped: list[tuple[Path, str]] | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess ``samples`` -> (inputs, int64 labels).

    Inputs are float32 in the model's layout, or (``prepared``) uint8 N x H x W x 3 in
    the model's channel order, what NPU toolchains take. Files that fail to decode are
    appended to ``skipped`` and dropped. Decoding runs in a thread pool (OpenCV releases
    the GIL) and writes straight into one preallocated array, so thousands of images
    load fast without holding two copies.
    """
    if not samples:
        raise DataError("no images to load (the sample list is empty)")
    h, w = spec.input_size
    shape = (h, w, 3) if prepared else spec.input_shape(1)[1:]
    out = np.empty((len(samples), *shape), np.uint8 if prepared else np.float32)

    def one(i: int) -> str | None:
        try:
            image = spec.prepare(read_image(samples[i].path))
        except DataError:
            return "could not be decoded as an image"
        out[i] = image if prepared else spec.normalize(image)
        return None

    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        failures = list(pool.map(one, range(len(samples))))
    ok = np.array([f is None for f in failures])
    for s, why in zip(samples, failures, strict=True):
        if why is not None and skipped is not None:
            skipped.append((s.path, why))
    if not ok.any():
        where = samples[0].path.parent
        raise DataError(f"{where}: none of {len(samples)} images could be decoded")
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    if ok.all():
        return out, labels
    return out[ok], labels[ok]


def pick_calibration(samples: Sequence[Sample], n: int, seed: int = 0) -> list[Sample]:
    """A representative pick of ``min(n, len(samples))``: round-robin over classes, each
    class in a seeded shuffle, so every class is covered as evenly as ``n`` allows."""
    by_class: dict[int, list[Sample]] = {}
    for idx in np.random.default_rng(seed).permutation(len(samples)):
        s = samples[int(idx)]
        by_class.setdefault(s.label, []).append(s)
    queues = [by_class[k] for k in sorted(by_class)]
    want = min(n, len(samples))
    picked: list[Sample] = []
    while len(picked) < want:
        for q in queues:
            if q and len(picked) < want:
                picked.append(q.pop())
    return picked
