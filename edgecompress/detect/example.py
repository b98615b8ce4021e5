"""The built-in detection example: Fashion-MNIST items on cluttered canvases, with exact
boxes, written once as a COCO data set (train/val/test).

Each image is a ``canvas`` x ``canvas`` colour texture with unlabelled clutter (random
strokes, cropped pieces of other items), then 1-4 items, each its 28x28 frame scaled to
20-100 pixels a side (aspect jittered by up to 25%, maybe mirrored), shaded in a random
colour and pasted where its pixels are non-zero. An item's box is the extent of those
non-zero pixels after scaling (OpenCV ``INTER_AREA`` when a side shrinks, ``INTER_LINEAR``
otherwise): exact, not drawn by hand. Two items' boxes share at most a quarter of the
smaller one; clutter lies under the items, never over them.

Nothing leaks between splits: train items and clutter come from Fashion-MNIST's train
images outside the 5,000 that :func:`~edgecompress.calibration.fashion_mnist.carve_val`
holds out, val from those 5,000, test only from the 10,000 ``t10k`` images. Each
annotation records its source (``source: {file, index}``) and how it was drawn
(``render``); each image the sources of its clutter. Deterministic for a seed: image ``i``
of a split depends only on ``(seed, split, i)``.

The files come from Debian's ``dataset-fashion-mnist`` package, as for
:mod:`edgecompress.calibration.fashion_mnist`; nothing is downloaded.

>>> root = ensure_fashion_detect()  # doctest: +SKIP
>>> read_coco_splits(root)["test"].class_names[:2]  # doctest: +SKIP
('tshirt_top', 'trouser')
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration import fashion_mnist as fm
from edgecompress.detect.coco import annotations_path, coco_document
from edgecompress.detect.data import DetectionImage, DetectionSet
from edgecompress.io import atomic_write_json

# Bump when what is written changes: a cache whose marker names another layout is rewritten.
LAYOUT_VERSION = 1
SIZES = {"train": 2000, "val": 300, "test": 300}
CANVAS = 160
SCALE = (20, 100)  # side of the item's 28x28 frame on the canvas, pixels
OBJECTS = (1, 4)
MAX_OVERLAP = 0.25  # intersection over the smaller box, between two items
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_MARKER = ".complete"


@dataclass(frozen=True)
class _Pool:
    """The Fashion-MNIST images one split draws from."""

    file: str  # "train" or "t10k"
    images: np.ndarray  # all images of that file
    labels: np.ndarray
    index: np.ndarray  # the indices this split may use


def ensure_fashion_detect(
    cache_dir: Path | None = None,
    source: Path | None = None,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    canvas: int = CANVAS,
) -> Path:
    """Write ``<cache>/fashion-detect`` once (see the module's docstring) and return it:
    ``annotations/instances_<split>.json`` and ``<split>/<id>.png``, read by
    :func:`~edgecompress.detect.coco.read_coco_splits`.

    Written to a temporary folder beside it and renamed when complete; a complete folder
    whose marker names the same layout, sizes, seed and canvas is reused without reading
    ``source``; with other settings it is replaced.
    """
    sizes = dict(SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(_SPLIT_CODE)
    if unknown or any(n < 0 for n in sizes.values()):
        raise ValueError(f"sizes: splits are train/val/test with counts >= 0, got {sizes}")
    if canvas < SCALE[1]:
        raise ValueError(
            f"canvas must be at least {SCALE[1]} pixels (the largest item), got {canvas}"
        )
    root = Path(cache_dir or fm.default_cache()) / "fashion-detect"
    want = {"layout": LAYOUT_VERSION, "sizes": sizes, "seed": seed, "canvas": canvas}
    if _marker(root) == want:
        return root
    pools = _pools(fm.resolve_source(source))
    tmp = root.with_name(f".fashion-detect.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, n in sizes.items():
            _write_split(tmp, split, n, pools[split], seed, canvas)
        atomic_write_json(tmp / _MARKER, want)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():  # other settings or incomplete: replaced, never merged
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def _marker(root: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pools(folder: Path) -> dict[str, _Pool]:
    train_x, train_y = fm.read_split(folder, "train")
    test_x, test_y = fm.read_split(folder, "t10k")
    val_idx = fm.carve_val(train_y)
    is_val = np.zeros(len(train_y), bool)
    is_val[val_idx] = True
    return {
        "train": _Pool("train", train_x, train_y, np.flatnonzero(~is_val)),
        "val": _Pool("train", train_x, train_y, val_idx),
        "test": _Pool("t10k", test_x, test_y, np.arange(len(test_y))),
    }


def _write_split(out: Path, split: str, n: int, pool: _Pool, seed: int, canvas: int) -> None:
    import cv2

    folder = out / split
    folder.mkdir(parents=True)
    images, extras, clutter = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        picture, objects, pieces = compose(rng, pool, canvas)
        path = folder / f"{i + 1:06d}.png"
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"{path}: OpenCV could not write the image")
        boxes = np.array([o["box"] for o in objects], np.float64).reshape(-1, 4)
        classes = np.array([o["class"] for o in objects], np.int64)
        images.append(DetectionImage(i + 1, path, canvas, canvas, boxes, classes))
        extras += [{"source": o["source"], "render": o["render"]} for o in objects]
        clutter.append(pieces)
    doc = coco_document(DetectionSet(tuple(images), fm.CLASS_NAMES), folder)
    for ann, extra in zip(doc["annotations"], extras, strict=True):
        ann.update(extra)
    for entry, pieces in zip(doc["images"], clutter, strict=True):
        entry["clutter_sources"] = pieces
    path = annotations_path(out, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def render_item(
    item: np.ndarray, size: tuple[int, int], flip: bool, tint: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One 28x28 item scaled to ``size`` (width, height), mirrored if ``flip``, cropped to
    its non-zero pixels: (BGR patch, mask of the item's pixels). A pixel of grey value
    ``v`` becomes ``tint * (0.25 + 0.75 * v / 255)``, so even the faintest is visible."""
    import cv2

    src = item[:, ::-1] if flip else item
    shrink = size[0] < src.shape[1] or size[1] < src.shape[0]
    grey = cv2.resize(src, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    rows, cols = np.flatnonzero(grey.any(axis=1)), np.flatnonzero(grey.any(axis=0))
    grey = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if rows.size else grey[:0, :0]
    shade = 0.25 + 0.75 * grey.astype(np.float64)[..., None] / 255.0
    patch = np.round(shade * np.asarray(tint, np.float64)).astype(np.uint8)
    return patch, grey > 0


def compose(
    rng: np.random.Generator, pool: _Pool, canvas: int
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """One image: (BGR picture, its items with box, class, source and render settings,
    the sources of its clutter pieces)."""
    picture = _background(rng, canvas)
    _strokes(rng, picture)
    pieces = [_piece(rng, pool, picture) for _ in range(int(rng.integers(1, 4)))]
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        k = int(pool.index[rng.integers(len(pool.index))])
        side = int(rng.integers(SCALE[0], SCALE[1] + 1))
        aspect = float(rng.uniform(0.8, 1.25))
        size = (max(1, round(side * min(aspect, 1.0))), max(1, round(side / max(aspect, 1.0))))
        flip, tint = bool(rng.integers(2)), tuple(int(v) for v in rng.integers(96, 256, 3))
        patch, mask = render_item(pool.images[k], size, flip, (tint[0], tint[1], tint[2]))
        h, w = mask.shape
        if not mask.any() or w > canvas or h > canvas:
            continue
        for _try in range(20):
            x, y = int(rng.integers(canvas - w + 1)), int(rng.integers(canvas - h + 1))
            box = (x, y, x + w, y + h)
            if all(_overlap(box, o["box"]) <= MAX_OVERLAP for o in objects):
                break
        else:
            continue  # no free place: one item fewer
        region = picture[y : y + h, x : x + w]
        region[mask] = patch[mask]
        objects.append(
            {
                "box": box,
                "class": int(pool.labels[k]),
                "source": {"file": pool.file, "index": k},
                "render": {"size": list(size), "flip": flip, "tint": list(tint)},
            }
        )
    return picture, objects, pieces


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(w, 0) * max(h, 0) / smaller


def _background(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """Smooth colour blotches (a few random values upsampled) plus pixel noise."""
    import cv2

    cells = int(rng.integers(3, 10))
    low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    tex = cv2.resize(low, (canvas, canvas), interpolation=cv2.INTER_CUBIC)
    tex = tex * rng.uniform(0.2, 0.7) + rng.uniform(0, 110)
    tex += rng.normal(0, rng.uniform(3, 14), tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _strokes(rng: np.random.Generator, picture: np.ndarray) -> None:
    """Random polylines and arcs, in random colours."""
    import cv2

    canvas = picture.shape[0]
    for _ in range(int(rng.integers(2, 8))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        thickness = int(rng.integers(1, 4))
        if rng.random() < 0.7:
            points = rng.integers(0, canvas, (int(rng.integers(2, 5)), 1, 2)).astype(np.int32)
            cv2.polylines(picture, [points], False, colour, thickness, cv2.LINE_AA)
        else:
            centre = tuple(int(v) for v in rng.integers(0, canvas, 2))
            axes = tuple(int(v) for v in rng.integers(4, canvas // 3, 2))
            start = int(rng.integers(0, 360))
            cv2.ellipse(
                picture,
                centre,
                axes,
                0,
                start,
                start + int(rng.integers(60, 300)),
                colour,
                thickness,
                cv2.LINE_AA,
            )


def _piece(rng: np.random.Generator, pool: _Pool, picture: np.ndarray) -> dict[str, Any]:
    """Paste an unlabelled crop (at most about a third of each side) of a random item of
    the split's pool, scaled to 8-36 pixels: a distractor that is not a whole item."""
    import cv2

    k = int(pool.index[rng.integers(len(pool.index))])
    ch, cw = (int(v) for v in rng.integers(6, 11, 2))
    r0, c0 = (int(v) for v in rng.integers(0, 28 - 10, 2))
    crop = pool.images[k][r0 : r0 + ch, c0 : c0 + cw]
    side = int(rng.integers(8, 37))
    grey = cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)
    tint = rng.integers(64, 256, 3).astype(np.float64)
    mask = grey > 0
    canvas = picture.shape[0]
    x, y = (int(v) for v in rng.integers(0, canvas - side + 1, 2))
    region = picture[y : y + side, x : x + side]
    shade = 0.25 + 0.75 * grey.astype(np.float64)[..., None] / 255.0
    region[mask] = np.round(shade * tint).astype(np.uint8)[mask]
    return {"file": pool.file, "index": k}
