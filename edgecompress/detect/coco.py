"""COCO detection data: one instances JSON file per split, its ``file_name``s relative to
an images folder. The layout this package writes (and :func:`read_coco_splits` reads)::

    root/annotations/instances_train.json   root/train/<file_name>
    root/annotations/instances_val.json     root/val/<file_name>
    root/annotations/instances_test.json    root/test/<file_name>

Category ids may be any integers; class indices are their rank (sorted by id). Only
``bbox`` is read (no segmentation). Torch-free (numpy + OpenCV + json).

>>> sets = read_coco_splits("data/fashion-detect")  # doctest: +SKIP
>>> sets["val"].class_names[:2], len(sets["val"])  # doctest: +SKIP
(('tshirt_top', 'trouser'), 300)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.detect.data import DetectionImage, DetectionSet, check_box, load_image
from edgecompress.errors import DataError
from edgecompress.io import atomic_write_text

SPLITS = ("train", "val", "test")
_HINT = "fix the file (COCO format: images, annotations, categories)"


def annotations_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def read_coco_splits(root: Path, check_images: bool = True) -> dict[str, DetectionSet]:
    """Every split of ``root`` (see the layout above) that has an annotations file."""
    root = Path(root)
    found = {s: annotations_path(root, s) for s in SPLITS if annotations_path(root, s).is_file()}
    if not found:
        raise DataError(
            f"{root}: no annotations/instances_{{train,val,test}}.json; expected the layout "
            "root/annotations/instances_<split>.json with images in root/<split>/"
        )
    return {s: read_coco(path, root / s, check_images) for s, path in found.items()}


def read_coco(annotations: Path, images: Path, check_images: bool = True) -> DetectionSet:
    """One split: the instances JSON ``annotations``, image files under ``images``.

    Every image must exist; with ``check_images`` each is decoded and its size compared
    with the JSON's (a corrupt file fails here, not in the middle of training).
    """
    annotations, images = Path(annotations), Path(images)
    try:
        doc = json.loads(annotations.read_text())
    except FileNotFoundError:
        raise DataError(f"{annotations}: annotations file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{annotations}: not readable JSON ({exc}); {_HINT}") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{annotations}: expected an object with lists images, annotations, categories; {_HINT}"
        )
    cat_index, names = _categories(annotations, doc["categories"])
    entries = _images(annotations, doc["images"], images, check_images)
    objects: dict[int, list[tuple[tuple[float, ...], int, bool]]] = {i: [] for i in entries}
    for k, ann in enumerate(doc["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, dict) else "?"
        where = f"{annotations}: annotations[{k}] (id {ann_id})"
        image_id, box, cls, crowd = _annotation(where, ann, entries, cat_index)
        objects[image_id].append((box, cls, crowd))
    out = []
    for image_id, (path, width, height) in entries.items():
        objs = objects[image_id]
        out.append(
            DetectionImage(
                image_id,
                path,
                width,
                height,
                np.array([o[0] for o in objs], np.float64).reshape(-1, 4),
                np.array([o[1] for o in objs], np.int64),
                np.array([o[2] for o in objs], bool),
            )
        )
    return DetectionSet(tuple(out), names)


def _categories(path: Path, cats: list[Any]) -> tuple[dict[int, int], tuple[str, ...]]:
    by_id: dict[int, str] = {}
    for k, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise DataError(f"{path}: categories[{k}] needs an integer id and a name; {_HINT}")
        if cat["id"] in by_id:
            raise DataError(
                f"{path}: categories[{k}]: category id {cat['id']} appears twice; {_HINT}"
            )
        by_id[cat["id"]] = str(cat["name"])
    if not by_id:
        raise DataError(f"{path}: no categories; {_HINT}")
    ids = sorted(by_id)
    return {cid: i for i, cid in enumerate(ids)}, tuple(by_id[cid] for cid in ids)


def _images(
    path: Path, entries: list[Any], folder: Path, check: bool
) -> dict[int, tuple[Path, int, int]]:
    out: dict[int, tuple[Path, int, int]] = {}
    for k, im in enumerate(entries):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not im.get("file_name"):
            raise DataError(f"{where}: needs an integer id and a file_name; {_HINT}")
        width, height = im.get("width"), im.get("height")
        if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
            raise DataError(
                f"{where} ({im['file_name']}): needs positive integer width and height; {_HINT}"
            )
        if im["id"] in out:
            raise DataError(f"{where}: image id {im['id']} appears twice; {_HINT}")
        file = folder / str(im["file_name"])
        if not file.is_file():
            raise DataError(
                f"{file}: image not found (named by {where}); put the image there or pass the "
                "folder its file_name is relative to"
            )
        if check:
            h, w = load_image(file).shape[:2]
            if (w, h) != (width, height):
                raise DataError(
                    f"{file}: the image is {w}x{h}, {where} says {width}x{height}; fix the "
                    "JSON's width and height (the boxes must be in this image's pixels)"
                )
        out[im["id"]] = (file, width, height)
    return out


def _annotation(
    where: str,
    ann: Any,
    entries: dict[int, tuple[Path, int, int]],
    cat_index: dict[int, int],
) -> tuple[int, tuple[float, ...], int, bool]:
    if not isinstance(ann, dict):
        raise DataError(f"{where}: not an object; {_HINT}")
    if ann.get("image_id") not in entries:
        raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in images; {_HINT}")
    if ann.get("category_id") not in cat_index:
        raise DataError(
            f"{where}: unknown category_id {ann.get('category_id')!r} (categories: "
            f"{sorted(cat_index)}); add the category or fix the annotation"
        )
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise DataError(f"{where}: bbox must be [x, y, width, height] (4 numbers), got {bbox!r}")
    path, width, height = entries[ann["image_id"]]
    x, y, w, h = (float(v) for v in bbox)
    box = check_box((x, y, x + w, y + h), width, height, f"{where} on {path.name}")
    return ann["image_id"], box, cat_index[ann["category_id"]], bool(ann.get("iscrowd", 0))


def coco_document(data: DetectionSet, images: Path) -> dict[str, Any]:
    """``data`` as a COCO instances document: category ids are class index + 1, file
    names relative to ``images``, ``area`` the box area (no masks)."""
    images = Path(images)
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(data.class_names)],
    }
    for im in data.images:
        entry = {
            "id": im.image_id,
            "file_name": im.path.relative_to(images).as_posix(),
            "width": im.width,
            "height": im.height,
        }
        doc["images"].append(entry)
        for box, cls, crowd in zip(
            im.boxes.tolist(), im.classes.tolist(), im.crowd.tolist(), strict=True
        ):
            w, h = box[2] - box[0], box[3] - box[1]
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": im.image_id,
                    "category_id": cls + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    return doc


def write_coco(data: DetectionSet, annotations: Path, images: Path) -> Path:
    """Write ``data`` as a COCO instances file (images stay where they are, under
    ``images``); written to a temporary name and renamed when complete."""
    annotations = Path(annotations)
    annotations.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(annotations, json.dumps(coco_document(data, images)))
    return annotations
