"""YOLO txt detection data: one ``.txt`` per image, one ``cls cx cy w h`` line per object
(class index, box centre and size as fractions of the image's width and height). Either
layout of the splits is read::

    root/images/<split>/a.jpg  root/labels/<split>/a.txt      (ultralytics)
    root/<split>/images/a.jpg  root/<split>/labels/a.txt

Class names come from ``root/data.yaml`` (``names``: a list or ``{index: name}``), else
``root/classes.txt`` (one per line), else the ``class_names`` argument. An image without a
label file has no objects; a label file without an image is an error. Torch-free.

>>> train = read_yolo("data/boxes", "train")  # doctest: +SKIP
>>> train.images[0].boxes  # xyxy, pixels  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecompress.detect.data import (
    IMAGE_SUFFIXES,
    DetectionImage,
    DetectionSet,
    check_box,
    load_image,
)
from edgecompress.errors import DataError


def split_folders(root: Path, split: str | None) -> tuple[Path, Path]:
    """(images folder, labels folder) of ``split`` in either layout; ``split=None``:
    ``root/images`` and ``root/labels``."""
    root = Path(root)
    if split is None:
        candidates = [(root / "images", root / "labels")]
    else:
        candidates = [
            (root / "images" / split, root / "labels" / split),
            (root / split / "images", root / split / "labels"),
        ]
    for images, labels in candidates:
        if images.is_dir():
            return images, labels
    raise DataError(
        f"{root}: no images folder for split {split!r} (looked for "
        f"{', '.join(str(i) for i, _ in candidates)}); expected images/<split>/ beside "
        "labels/<split>/, or <split>/images/ beside <split>/labels/"
    )


def read_class_names(root: Path) -> tuple[str, ...] | None:
    """The class names in ``root/data.yaml`` or ``root/classes.txt``; ``None`` if neither."""
    root = Path(root)
    yaml_path = root / "data.yaml"
    if yaml_path.is_file():
        import yaml

        try:
            doc = yaml.safe_load(yaml_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"{yaml_path}: not readable YAML ({exc})") from exc
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            return tuple(str(names[i]) for i in range(len(names)))
        if isinstance(names, list) and names:
            return tuple(str(n) for n in names)
        raise DataError(
            f"{yaml_path}: `names` must be a list of class names or a mapping 0..N-1 -> name"
        )
    txt = root / "classes.txt"
    if txt.is_file():
        return tuple(line.strip() for line in txt.read_text().splitlines() if line.strip())
    return None


def read_yolo(
    root: Path,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
) -> DetectionSet:
    """The images of ``split`` and their labels, boxes converted to xyxy pixels. Each
    image is decoded once (for its size), so a corrupt image fails here."""
    root = Path(root)
    names = tuple(class_names) if class_names is not None else read_class_names(root)
    if not names:
        raise DataError(
            f"{root}: no class names; add data.yaml with `names: [...]` or classes.txt (one "
            "name per line), or pass class_names"
        )
    images_dir, labels_dir = split_folders(root, split)
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = {p.relative_to(images_dir).with_suffix("") for p in files}
    if labels_dir.is_dir():
        for label in sorted(labels_dir.rglob("*.txt")):
            if label.relative_to(labels_dir).with_suffix("") not in stems:
                raise DataError(
                    f"{label}: no image for these labels in {images_dir} (looked for "
                    f"{label.stem}{{{','.join(IMAGE_SUFFIXES)}}}); add the image or delete "
                    "the label file"
                )
    out = []
    for image_id, path in enumerate(files):
        height, width = load_image(path).shape[:2]
        label = labels_dir / path.relative_to(images_dir).with_suffix(".txt")
        boxes, classes = _read_labels(label, width, height, len(names))
        out.append(DetectionImage(image_id, path, width, height, boxes, classes))
    return DetectionSet(tuple(out), names)


def _read_labels(
    path: Path, width: int, height: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    boxes, classes = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise DataError(
                f"{where}: {len(fields)} fields, expected 5 (`class cx cy w h`"
                + ("; polygon (segmentation) labels are not read here" if len(fields) > 5 else "")
                + "); fix or delete this line"
            )
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(
                f"{where}: {line.strip()!r} is not `class cx cy w h` (an integer, then four "
                "numbers); fix or delete this line"
            ) from None
        if not 0 <= cls < n_classes:
            raise DataError(
                f"{where}: class {cls}, but there are {n_classes} class names (0-"
                f"{n_classes - 1}); fix the line or add the class to the names"
            )
        box = (
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        )
        boxes.append(check_box(box, width, height, where))
        classes.append(cls)
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def write_yolo(data: DetectionSet, root: Path, split: str | None = None) -> Path:
    """Write ``data`` in the ultralytics layout under ``root`` (images copied to
    ``images/<split>/``, one label file each in ``labels/<split>/``, ``classes.txt``);
    the labels folder is written beside and renamed when complete. Crowd regions have no
    YOLO form and are left out."""
    root = Path(root)
    images_dir = root / "images" / split if split else root / "images"
    labels_dir = root / "labels" / split if split else root / "labels"
    tmp = labels_dir.with_name(f".{labels_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True)
    for im in data.images:
        shutil.copyfile(im.path, images_dir / im.path.name)
        lines = []
        for (x1, y1, x2, y2), cls, crowd in zip(
            im.boxes.tolist(), im.classes.tolist(), im.crowd.tolist(), strict=True
        ):
            if crowd:
                continue
            cx, cy = (x1 + x2) / 2 / im.width, (y1 + y2) / 2 / im.height
            w, h = (x2 - x1) / im.width, (y2 - y1) / im.height
            lines.append(f"{cls} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}\n")
        (tmp / f"{im.path.stem}.txt").write_text("".join(lines))
    shutil.rmtree(labels_dir, ignore_errors=True)
    os.replace(tmp, labels_dir)
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in data.class_names))
    return root
