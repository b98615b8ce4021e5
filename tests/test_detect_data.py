"""Detection data: the Fashion-MNIST detection example has exact boxes and disjoint
splits; COCO and YOLO readers give the same in-memory form and name the file (and line)
of bad input; the letterbox is PreprocessSpec's and maps boxes both ways."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecompress.calibration import fashion_mnist as fm
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.detect.coco import annotations_path, read_coco, read_coco_splits
from edgecompress.detect.data import (
    DetectionSet,
    from_letterbox,
    letterbox,
    to_letterbox,
)
from edgecompress.detect.example import ensure_fashion_detect, render_item
from edgecompress.detect.yolo import read_yolo, write_yolo
from edgecompress.errors import DataError

SIZES = {"train": 6, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def installed() -> Path:
    if fm.DEFAULT_SOURCE.is_dir():
        return fm.DEFAULT_SOURCE
    if os.environ.get("EDGECOMPRESS_REQUIRE_FASHION_MNIST") == "1":
        pytest.fail(f"EDGECOMPRESS_REQUIRE_FASHION_MNIST=1 but {fm.DEFAULT_SOURCE} is missing")
    pytest.skip(f"{fm.DEFAULT_SOURCE} is missing (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def example(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_fashion_detect(tmp_path_factory.mktemp("cache"), installed, sizes=SIZES)


def _docs(root: Path) -> dict[str, dict]:
    return {s: json.loads(annotations_path(root, s).read_text()) for s in SIZES}


# -- the example -------------------------------------------------------------------------


def test_example_is_a_coco_set_of_the_asked_sizes(example: Path) -> None:
    sets = read_coco_splits(example)
    assert {s: len(v) for s, v in sets.items()} == SIZES
    for data in sets.values():
        assert data.class_names == fm.CLASS_NAMES
        for im in data.images:
            assert (im.width, im.height) == (160, 160)
            assert 1 <= len(im.classes) <= 4
            sides = np.concatenate(
                [im.boxes[:, 2] - im.boxes[:, 0], im.boxes[:, 3] - im.boxes[:, 1]]
            )
            assert sides.max() <= 100 and sides.min() >= 1


def test_example_boxes_are_the_items_nonzero_pixel_extent(installed: Path, example: Path) -> None:
    sources = {f: fm.read_split(installed, f)[0] for f in ("train", "t10k")}
    labels = {f: fm.read_split(installed, f)[1] for f in ("train", "t10k")}
    for split, doc in _docs(example).items():
        by_image: dict[int, list[dict]] = {}
        for ann in doc["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for entry in doc["images"]:
            picture = cv2.imread(str(example / split / entry["file_name"]))
            anns = by_image[entry["id"]]
            for k, ann in enumerate(anns):
                src, r = ann["source"], ann["render"]
                item = sources[src["file"]][src["index"]]
                assert ann["category_id"] - 1 == labels[src["file"]][src["index"]]
                # The box is where the scaled item's pixels are non-zero, computed here
                # independently of the generator.
                flipped = item[:, ::-1] if r["flip"] else item
                w, h = r["size"]
                interp = cv2.INTER_AREA if w < 28 or h < 28 else cv2.INTER_LINEAR
                grey = cv2.resize(flipped, (w, h), interpolation=interp)
                rows, cols = np.flatnonzero(grey.any(1)), np.flatnonzero(grey.any(0))
                x, y, bw, bh = ann["bbox"]
                assert (bw, bh) == (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
                # ... and those pixels are in the image inside the box, except where a later
                # item covers them.
                patch, mask = render_item(item, (w, h), r["flip"], tuple(r["tint"]))
                visible = mask.copy()
                for later in anns[k + 1 :]:
                    lx, ly, lw, lh = (int(v) for v in later["bbox"])
                    top, left = max(ly - int(y), 0), max(lx - int(x), 0)
                    bottom, right = max(ly + lh - int(y), 0), max(lx + lw - int(x), 0)
                    visible[top:bottom, left:right] = False
                region = picture[int(y) : int(y + bh), int(x) : int(x + bw)]
                assert visible.sum() > 0.5 * mask.sum()
                np.testing.assert_array_equal(region[visible], patch[visible])


def test_example_splits_do_not_share_source_items(installed: Path, example: Path) -> None:
    used: dict[str, set[tuple[str, int]]] = {}
    for split, doc in _docs(example).items():
        used[split] = {(a["source"]["file"], a["source"]["index"]) for a in doc["annotations"]}
        used[split] |= {
            (c["file"], c["index"]) for im in doc["images"] for c in im["clutter_sources"]
        }
    assert {f for f, _ in used["test"]} == {"t10k"}
    assert {f for f, _ in used["train"] | used["val"]} == {"train"}
    assert not used["train"] & used["val"]
    held_out = set(fm.carve_val(fm.read_split(installed, "train")[1]).tolist())
    assert {i for _, i in used["val"]} <= held_out
    assert not {i for _, i in used["train"]} & held_out


def test_example_is_deterministic_and_written_once(installed: Path, tmp_path: Path) -> None:
    sizes = {"train": 2, "val": 1, "test": 1}
    a = ensure_fashion_detect(tmp_path / "a", installed, sizes=sizes, seed=3)
    b = ensure_fashion_detect(tmp_path / "b", installed, sizes=sizes, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        if f.suffix == ".png":
            np.testing.assert_array_equal(cv2.imread(str(a / f)), cv2.imread(str(b / f)))
        else:
            assert (a / f).read_text() == (b / f).read_text()
    mtime = (a / "train" / "000001.png").stat().st_mtime_ns
    assert ensure_fashion_detect(tmp_path / "a", installed, sizes=sizes, seed=3) == a
    assert (a / "train" / "000001.png").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]
    other = ensure_fashion_detect(tmp_path / "a", installed, sizes=sizes, seed=4)
    assert (other / "train" / "000001.png").read_bytes() != (
        b / "train" / "000001.png"
    ).read_bytes()


def test_example_without_the_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm, "DEFAULT_SOURCE", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        ensure_fashion_detect(tmp_path / "cache", sizes={"train": 1})
    assert not (tmp_path / "cache" / "fashion-detect").exists()


# -- COCO and YOLO -----------------------------------------------------------------------


def _same_boxes(a: DetectionSet, b: DetectionSet) -> None:
    assert a.class_names == b.class_names
    by_name = {im.path.name: im for im in b.images}
    assert sorted(by_name) == sorted(im.path.name for im in a.images)
    for im in a.images:
        other = by_name[im.path.name]
        assert (im.width, im.height) == (other.width, other.height)
        np.testing.assert_array_equal(im.classes, other.classes)
        np.testing.assert_allclose(im.boxes, other.boxes, atol=1e-4)


@pytest.mark.parametrize("layout", ["images/<split>", "<split>/images"])
def test_yolo_and_coco_of_the_same_data_give_the_same_boxes(
    example: Path, tmp_path: Path, layout: str
) -> None:
    coco = read_coco_splits(example)["val"]
    root = write_yolo(coco, tmp_path / "yolo", "val")
    if layout == "<split>/images":
        (root / "val").mkdir()
        shutil.move(root / "images" / "val", root / "val" / "images")
        shutil.move(root / "labels" / "val", root / "val" / "labels")
    _same_boxes(coco, read_yolo(root, "val"))


def _yolo(tmp_path: Path) -> Path:
    """A tiny YOLO folder: two 40x30 images, one label file, classes.txt."""
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(root / "images" / "train" / f"{name}.png"), np.zeros((30, 40, 3), np.uint8))
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.5 0.5\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_yolo_labels_become_pixel_boxes(tmp_path: Path) -> None:
    data = read_yolo(_yolo(tmp_path), "train")
    assert data.class_names == ("cat", "dog")
    a, b = data.images
    np.testing.assert_allclose(a.boxes, [[10, 7.5, 30, 22.5], [0, 0, 20, 15]])
    assert a.classes.tolist() == [0, 1] and len(b.classes) == 0  # no label file: background


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.5", r"a\.txt:2: 4 fields, expected 5"),
        ("0 0.5 0.5 0.5 0.5 0.1 0.2", r"a\.txt:2: 7 fields, expected 5 .*polygon"),
        ("0 1.2 0.5 0.5 0.5", r"a\.txt:2: box .* outside the 40x30 image"),
        ("5 0.5 0.5 0.5 0.5", r"a\.txt:2: class 5, but there are 2 class names"),
        ("0 0.5 0.5 0 0.5", r"a\.txt:2: empty box"),
        ("x 0.5 0.5 0.5 0.5", r"a\.txt:2: 'x 0.5 0.5 0.5 0.5' is not `class cx cy w h`"),
    ],
)
def test_bad_yolo_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    root = _yolo(tmp_path)
    (root / "labels" / "train" / "a.txt").write_text(f"0 0.5 0.5 0.5 0.5\n{line}\n")
    with pytest.raises(DataError, match=message) as e:
        read_yolo(root, "train")
    assert str(root / "labels" / "train" / "a.txt") in str(e.value)


def test_yolo_label_without_its_image_is_named(tmp_path: Path) -> None:
    root = _yolo(tmp_path)
    (root / "images" / "train" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.txt: no image for these labels"):
        read_yolo(root, "train")


def test_corrupt_yolo_image_is_named(tmp_path: Path) -> None:
    root = _yolo(tmp_path)
    (root / "images" / "train" / "b.png").write_bytes(b"\x89PNG\r\n not really")
    with pytest.raises(DataError, match=r"b\.png: not a readable image"):
        read_yolo(root, "train")


def test_yolo_without_class_names_says_where_to_put_them(tmp_path: Path) -> None:
    root = _yolo(tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"data\.yaml with `names"):
        read_yolo(root, "train")
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    assert read_yolo(root, "train").class_names == ("cat", "dog")


def _coco(tmp_path: Path) -> tuple[Path, Path, dict]:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((30, 40, 3), np.uint8))
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0}
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
    }
    return tmp_path / "instances.json", images, doc


def test_coco_categories_become_class_indices_in_id_order(tmp_path: Path) -> None:
    path, images, doc = _coco(tmp_path)
    path.write_text(json.dumps(doc))
    data = read_coco(path, images)
    assert data.class_names == ("dog", "cat")
    (im,) = data.images
    assert im.image_id == 7 and im.classes.tolist() == [1]
    np.testing.assert_array_equal(im.boxes, [[10, 5, 30, 15]])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["images"][0].update(file_name="gone.png"), r"gone\.png: image not found"),
        (
            lambda d: d["annotations"][0].update(category_id=9),
            r"instances\.json: annotations\[0\] \(id 1\): unknown category_id 9",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[30, 5, 20, 10]),
            r"instances\.json: annotations\[0\] \(id 1\) on a\.png: box .* outside the 40x30",
        ),
        (lambda d: d["images"][0].update(width=41), r"a\.png: the image is 40x30, .* says 41x30"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), r"annotations\[0\] .*bbox must be"),
    ],
)
def test_bad_coco_input_names_the_file(tmp_path: Path, edit: object, message: str) -> None:
    path, images, doc = _coco(tmp_path)
    edit(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        read_coco(path, images)


def test_corrupt_coco_image_is_named(tmp_path: Path) -> None:
    path, images, doc = _coco(tmp_path)
    path.write_text(json.dumps(doc))
    (images / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"a\.png: not a readable image"):
        read_coco(path, images)


# -- the letterbox -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (80, 48)])
def test_letterbox_is_preprocess_specs_letterbox(size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    spec = PreprocessSpec(input_size=size, resize="letterbox", channel_order="BGR")
    padded, _ = letterbox(image, size)
    np.testing.assert_array_equal(padded, spec.prepare(image))


def test_letterbox_maps_boxes_onto_the_same_pixels_and_back() -> None:
    image = np.zeros((120, 200, 3), np.uint8)
    box = np.array([[40.0, 30.0, 100.0, 90.0]])
    image[30:90, 40:100] = 255
    padded, lb = letterbox(image, 160)
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.8, 0, 32)
    x1, y1, x2, y2 = to_letterbox(box, lb)[0].round().astype(int)
    white = np.argwhere(padded[..., 0] > 127)
    assert (white.min(0).tolist(), (white.max(0) + 1).tolist()) == ([y1, x1], [y2, x2])
    np.testing.assert_allclose(from_letterbox(to_letterbox(box, lb), lb), box)
    # A box reaching into the padding ends at the image's edge.
    np.testing.assert_allclose(
        from_letterbox(np.array([[-5, 0, 170, 200]]), lb), [[0, 0, 200, 120]]
    )
