"""Image folders: one subfolder per class, and always three splits — train, val, test.

Val chooses (best epoch, early stop, sensitivity, budget back-off); test is only for the
accuracy that gets reported, so no training or choosing code should read it.

Layouts, and where each split comes from:

- ``DIR/train/`` + ``DIR/val/`` + ``DIR/test/``: all three used as given.
- ``DIR/train/`` + ``DIR/val/``: test is carved from train/.
- ``DIR/train/`` + ``DIR/test/``: val is carved from train/.
- ``DIR/train/`` alone: val and test are both carved from train/.
- ``DIR/<class>/`` (flat): val and test are carved from all the images, the rest is train
  (60/20/20 with the default fractions).

Labels: the index of each class folder's name in the sorted folder names, or, given
``classes`` (the class each model output is, in output order), the index of the folder's
name in that list. A list may name outputs that have no folder (a 1000-class model scored
on a few of its classes); a folder the list does not name is an error.

The carving rule: stratified, seeded, and dependent only on the relative file names, so the
same files give the same splits on every machine. Within each class, its files (in sorted
relative-path order) are shuffled with ``(seed, label)``; test takes the first
``round(n * test_fraction)``, val the next ``round(n * val_fraction)``, train the rest.
Test is carved first, so it does not move when only ``val_fraction`` changes. Train keeps
at least one image of every class; a class of two gives its other image to val, a class
of three or more gives at least one to each carved split. Carved splits are disjoint from
each other and from the given ones by construction (each file lands in exactly one).

val/ or test/ without train/ is an error. Junk files are counted with a reason, never
fatal unless nothing usable is left. Torch-free (numpy + OpenCV).

>>> folder = scan_image_folder(Path("data"))  # doctest: +SKIP
>>> x, y = load_samples(folder.val, spec)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import IMAGE_SUFFIXES, PreprocessSpec, read_image
from edgecompress.errors import ConfigError, DataError

LAYOUT = (
    "DIR/<class>/<image>, or DIR/train/<class>/<image> with optional DIR/val/<class>/<image> "
    "and DIR/test/<class>/<image>"
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    """What :func:`scan_image_folder` found. ``classes`` are the class folders (sorted);
    ``outputs`` names what each label is, in label (model output) order: the sorted
    folders, or the ``classes`` list given to the scan. ``split`` is ``"folder"`` when
    train/, val/ and test/ were all given, ``"seeded"`` when all three were carved from a
    flat folder, ``"mixed"`` otherwise; ``sources`` says, per split, where its images came
    from. ``notes`` records things that are allowed but worth knowing (a single class, a
    class with no usable image)."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    split: str = "seeded"
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outputs:
            self.outputs = list(self.classes)

    @property
    def class_outputs(self) -> dict[str, int]:
        """Class folder -> the label (model output index) its images get."""
        index = {name: i for i, name in enumerate(self.outputs)}
        return {c: index[c] for c in self.classes}

    def summary(self) -> dict[str, Any]:
        """Counts for the report: per split, per class (and split), skipped files."""
        per_class = {c: {"train": 0, "val": 0, "test": 0} for c in self.classes}
        for split, samples in (("train", self.train), ("val", self.val), ("test", self.test)):
            for s in samples:
                per_class[self.outputs[s.label]][split] += 1
        return {
            "split": self.split,
            "sources": dict(self.sources),
            "classes": len(self.classes),
            "outputs": len(self.outputs),
            "class_outputs": self.class_outputs,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
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
        elif (why := damaged(path)) is not None:
            skipped.append((path, why))
        else:
            files.append(path)
    return files


# (signature at the start, what a complete file ends with) for the formats whose end is
# marked: a copy cut short decodes in OpenCV with only a warning and a grey bottom.
_ENDINGS = {
    ".png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    ".jpg": (b"\xff\xd8", b"\xff\xd9"),
    ".jpeg": (b"\xff\xd8", b"\xff\xd9"),
}


def damaged(path: Path) -> str | None:
    """Why an image file is unusable without decoding it (read: its first and last bytes),
    or None. Catches wrong contents behind an image suffix and truncated PNG/JPEG files."""
    marks = _ENDINGS.get(path.suffix.lower())
    if marks is None:
        return None
    head_mark, tail_mark = marks
    with open(path, "rb") as f:
        head = f.read(len(head_mark))
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read()
    if head != head_mark:
        return f"not a {path.suffix.lstrip('.').upper()} file (its first bytes are {head!r})"
    if tail_mark not in tail:
        return "truncated: the file ends before its image data does (an interrupted copy?)"
    return None


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


def _check_fractions(val_fraction: float, test_fraction: float, given: set[str]) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {f}")
    if "val" not in given and "test" not in given and val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 (train keeps the rest), got "
            f"{val_fraction} + {test_fraction}"
        )


def _check_root(root: Path) -> set[str]:
    """The split folders ``root`` holds (empty for a flat class folder)."""
    if not root.exists():
        raise DataError(f"{root}: no such image folder; expected {LAYOUT}")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an image folder {LAYOUT}")
    given = {s for s in SPLITS if (root / s).is_dir()}
    if given and "train" not in given:
        there = sorted(given, key=SPLITS.index)
        raise DataError(
            f"{root}: has {' and '.join(f'{s}/' for s in there)} but no train/; add "
            f"{root / 'train'}/<class>/<image>, or point at {root / there[0]} to carve all "
            "three splits from it"
        )
    return given


def scan_image_folder(
    root: Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    test_fraction: float = 0.2,
    classes: Sequence[str] | None = None,
) -> ImageFolder:
    """List the images under ``root`` and give them three splits (see module docstring).

    Labels are the sorted class-folder names' indices (of train/ when split folders are
    given), or with ``classes`` — the class each model output is, in output order — each
    folder's index in that list. The fractions only apply to splits that are carved.

    >>> folder = scan_image_folder(Path("subset"), classes=imagenet_names)  # doctest: +SKIP
    >>> folder.class_outputs  # doctest: +SKIP
    {'goldfish': 1, 'tench': 0}
    """
    root = Path(root)
    names = None if classes is None else list(classes)
    given = _check_root(root)
    _check_fractions(val_fraction, test_fraction, given)
    skipped: list[tuple[Path, str]] = []
    fractions = {"test": test_fraction, "val": val_fraction}  # carving order: test first
    if given:
        found = {s: _scan_classes(root / s, skipped) for s in SPLITS if s in given}
        _skip_beside_splits(root, skipped)
        classes = sorted(found["train"])
        labels = _labels(root, classes, names)
        for s in given - {"train"}:
            extra = sorted(set(found[s]) - set(classes))
            if extra:
                raise DataError(
                    f"{root / s}: class folder(s) {extra} have no counterpart in "
                    f"{root / 'train'}; add them there or remove them from {s}/"
                )
        carve = {s: f for s, f in fractions.items() if s not in given}
        splits = _split(labels, found["train"], carve, seed)
        for s in given - {"train"}:
            splits[s] = sorted(
                (Sample(p, i) for c, i in labels.items() for p in found[s].get(c, [])),
                key=_sample_key,
            )
        pool = "train/"
    else:
        files = _scan_classes(root, skipped)
        classes = sorted(files)
        labels = _labels(root, classes, names)
        carve = fractions
        splits = _split(labels, files, carve, seed)
        pool = "all images"
    split = "folder" if not carve else "seeded" if not given else "mixed"
    sources = _sources(given, carve, pool, seed)
    folder = ImageFolder(
        root,
        classes,
        splits["train"],
        splits["val"],
        splits["test"],
        skipped,
        split,
        sources,
        outputs=classes if names is None else names,
    )
    if not classes:
        loose = sum(why == "outside any class folder" for _, why in skipped)
        found_loose = f" (found {loose} file(s) directly in it)" if loose else ""
        raise DataError(f"{root}: no class subfolders{found_loose}; expected {LAYOUT}")
    if not (folder.train or folder.val or folder.test):
        reasons = (
            f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})"
            if skipped
            else ""
        )
        raise DataError(f"{root}: no usable images in {len(classes)} class folder(s){reasons}")
    folder.notes.extend(_notes(folder))
    return folder


def _labels(root: Path, folders: list[str], outputs: list[str] | None) -> dict[str, int]:
    """Class folder -> label: its index in the sorted ``folders``, or its name's index in
    ``outputs`` when given (every folder must be there)."""
    if outputs is None:
        return {c: i for i, c in enumerate(folders)}
    dupes = duplicate_names(outputs)
    if dupes:
        raise ConfigError(
            f"classes: {dupes} appear more than once; name each model output once, in order"
        )
    index = {name: i for i, name in enumerate(outputs)}
    missing = [c for c in folders if c not in index]
    if missing:
        shown = ", ".join(repr(n) for n in outputs[:3])
        raise DataError(
            f"{root}: class folder(s) {_some(missing)} are not in the classes list (data.classes "
            f"in a recipe, --classes on the command line; {len(outputs)} names, starting "
            f"{shown}), which says which model output each folder is; add them to the list "
            "or remove the folders"
        )
    return {c: index[c] for c in folders}


def duplicate_names(names: Sequence[str]) -> list[str]:
    """The names that appear more than once, in first-seen order."""
    counts = Counter(names)
    return [n for n in dict.fromkeys(names) if counts[n] > 1]


def _some(names: list[str], n: int = 10) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return f"{names[:n]}{more}"


def _skip_beside_splits(root: Path, skipped: list[tuple[Path, str]]) -> None:
    # Visible entries next to train/ val/ test/ are not read; say so (hidden ones, such
    # as a cache's completion marker, are not worth a line).
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name not in SPLITS and not entry.name.startswith("."):
            skipped.append((entry, "beside the train/ val/ test/ folders, not in any split"))


def _sources(given: set[str], carve: dict[str, float], pool: str, seed: int) -> dict[str, str]:
    """Per split, where its images came from, in words for the report."""
    sources = {}
    for s in SPLITS:
        if s in carve:
            sources[s] = f"carved from {pool} ({carve[s]:.0%} per class, seed {seed})"
        elif s == "train" and carve:
            less = ", ".join(c for c in ("val", "test") if c in carve)
            sources[s] = f"{'train/' if given else 'all images'} less the carved {less}"
        else:
            sources[s] = f"folder ({s}/)"
    return sources


def _notes(folder: ImageFolder) -> list[str]:
    notes = []
    if len(folder.classes) == 1:
        notes.append(
            f"single class {folder.classes[0]!r}: fine for calibration, accuracy is meaningless"
        )
    summary = folder.summary()["per_class"]
    empty = [c for c, n in summary.items() if sum(n.values()) == 0]
    if empty:
        notes.append(f"class folder(s) with no usable image: {empty}")
    for split, word in (("val", "validation"), ("test", "test")):
        missing = [c for c, n in summary.items() if n[split] == 0 and sum(n.values()) > 0]
        if missing:
            notes.append(f"class(es) with no {word} image: {missing}")
    few = {c: sum(n.values()) for c, n in summary.items() if 0 < sum(n.values()) < FEW_IMAGES}
    if few:
        notes.append(
            f"class(es) with fewer than {FEW_IMAGES} images, whose accuracy is noise and "
            f"whose training barely counts: {few}"
        )
    return notes


FEW_IMAGES = 10


def _carve_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of a class's ``n`` images each carved split takes, in carving order.

    Train keeps one; while images are left to spare, each carved split gets at least one,
    val before test (a class of two still has a validation image)."""
    spare = max(n - 1, 0)
    by_priority = sorted(fractions, key=lambda s: s != "val")
    guaranteed = set(by_priority[:spare])
    names = list(fractions)
    counts = {}
    for i, name in enumerate(names):
        later = sum(m in guaranteed for m in names[i + 1 :])
        want = round(n * fractions[name])
        if name in guaranteed:
            want = max(1, want)
        counts[name] = max(0, min(want, spare - later))
        spare -= counts[name]
    return counts


def _split(
    labels: dict[str, int], files: dict[str, list[Path]], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Carve the splits in ``fractions`` (in its order) from ``files``; the rest is train.
    Stratified and deterministic: same files -> same splits on every machine. The seed is
    per label, so a folder renamed and mapped to the same output keeps its split."""
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for name, label in labels.items():
        paths = files.get(name, [])  # already in machine-independent order
        order = np.random.default_rng([seed, label]).permutation(len(paths))
        bounds, start = [], 0
        for split, k in _carve_counts(len(paths), fractions).items():
            bounds.append((split, start + k))
            start += k
        for rank, idx in enumerate(order):
            split = next((s for s, end in bounds if rank < end), "train")
            out[split].append(Sample(paths[idx], label))
    return {s: sorted(samples, key=_sample_key) for s, samples in out.items()}


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

    Inputs are float32 in the model's layout, or (``prepared``) uint8 N x H x W x C in
    the model's channel order, what NPU toolchains take. Files that fail to decode are
    appended to ``skipped`` and dropped. Decoding runs in a thread pool (OpenCV releases
    the GIL) and writes straight into one preallocated array, so thousands of images
    load fast without holding two copies.
    """
    if not samples:
        raise DataError("no images to load (the sample list is empty)")
    h, w = spec.input_size
    shape = (h, w, spec.channels) if prepared else spec.input_shape(1)[1:]
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
