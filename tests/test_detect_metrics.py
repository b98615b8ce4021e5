"""Detection mAP by pycocotools, checked on cases whose AP can be worked out by hand
(COCO: 101 recall points 0, 0.01, ..., 1; precision interpolated to the right).
pycocotools divides by ``tp + fp + eps``, so a perfect AP is 1 - 2e-16: compared with
``approx``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.detect.data import DetectionImage, DetectionSet, letterbox_geometry
from edgecompress.detect.metrics import detection_metrics
from edgecompress.errors import DataError
from edgecompress.runtime.detect_post import Detections, from_letterbox, to_letterbox

A, B = [10, 10, 50, 50], [60, 60, 90, 90]


def _gt(*objects: tuple[list[float], int], crowd: tuple[bool, ...] = ()) -> DetectionSet:
    boxes, classes = [o[0] for o in objects], [o[1] for o in objects]
    image = DetectionImage(1, Path("a.png"), 100, 100, boxes, classes, crowd)
    return DetectionSet((image,), ("cat", "dog"))


def _dets(*found: tuple[list[float], float, int]) -> dict[int, Detections]:
    return {
        1: Detections(
            np.array([f[0] for f in found], np.float64).reshape(-1, 4),
            np.array([f[1] for f in found], np.float64),
            np.array([f[2] for f in found], np.int64),
        )
    }


def test_perfect_detections_score_one() -> None:
    m = detection_metrics(_gt((A, 0), (B, 1)), _dets((A, 0.9, 0), (B, 0.8, 1)))
    assert m.map50 == m.map75 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)
    assert m.per_class_ap50_95 == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert (m.images, m.objects, m.detections) == (1, 2, 2)


def test_one_of_two_objects_missed() -> None:
    # Recall reaches 0.5 at precision 1: recall points 0.00..0.50 (51 of 101) score 1.
    m = detection_metrics(_gt((A, 0), (B, 0)), _dets((A, 0.9, 0)))
    assert m.map50 == pytest.approx(51 / 101) and m.map50_95 == pytest.approx(51 / 101)


def test_a_better_scored_false_positive_halves_ap() -> None:
    # Ranked: FP then TP -> precision 0.5 at recall 1, which interpolates to every point.
    m = detection_metrics(_gt((A, 0)), _dets((B, 0.9, 0), (A, 0.8, 0)))
    assert m.map50 == pytest.approx(0.5)
    # Ranked the other way the false positive costs nothing.
    assert detection_metrics(_gt((A, 0)), _dets((B, 0.7, 0), (A, 0.8, 0))).map50 == pytest.approx(
        1.0
    )


def test_iou_062_counts_at_050_not_at_075() -> None:
    # [0,0,62,100] against [0,0,100,100]: IoU 0.62, a match at 0.50, 0.55, 0.60 only.
    m = detection_metrics(_gt(([0, 0, 100, 100], 0)), _dets(([0, 0, 62, 100], 0.9, 0)))
    assert m.map50 == pytest.approx(1.0) and m.map75 == 0.0
    assert m.map50_95 == pytest.approx(3 / 10)


def test_classes_are_kept_apart_and_averaged() -> None:
    # The right box with the wrong class is a miss for cat and no gain for dog.
    m = detection_metrics(_gt((A, 0)), _dets((A, 0.9, 1)))
    assert m.map50 == 0.0
    assert m.per_class_ap50["cat"] == 0.0 and np.isnan(m.per_class_ap50["dog"])
    # cat found, dog missed: the mean of 1 and 0.
    m = detection_metrics(_gt((A, 0), (B, 1)), _dets((A, 0.9, 0)))
    assert m.map50 == pytest.approx(0.5)
    assert m.per_class_ap50 == pytest.approx({"cat": 1.0, "dog": 0.0})


def test_a_detection_on_a_crowd_region_is_neither_right_nor_wrong() -> None:
    gt = _gt((A, 0), (B, 0), crowd=(False, True))
    assert detection_metrics(gt, _dets((B, 0.95, 0), (A, 0.9, 0))).map50 == pytest.approx(1.0)
    assert detection_metrics(gt, _dets((A, 0.9, 0))).map50 == pytest.approx(
        1.0
    )  # the crowd is not missed


def test_only_max_dets_detections_per_image_count() -> None:
    boxes = [[0, 0, 20, 20], [30, 30, 50, 50], [60, 60, 80, 80]]
    gt = _gt(*((b, 0) for b in boxes))
    dets = _dets(*((b, 0.9 - 0.1 * k, 0) for k, b in enumerate(boxes)))
    assert detection_metrics(gt, dets).map50 == pytest.approx(1.0)
    # The best two: recall 2/3 at precision 1 -> recall points 0.00..0.66.
    assert detection_metrics(gt, dets, max_dets=2).map50 == pytest.approx(67 / 101)


def test_boxes_through_the_letterbox_and_back_keep_their_score() -> None:
    # What every runtime does: detect on the letterboxed input, map back, score.
    images = tuple(
        DetectionImage(
            i, Path(f"{i}.png"), w, h, [[5, 8, w / 2, h - 3], [w / 3, 2, w - 1, h / 2]], [0, 1]
        )
        for i, (w, h) in enumerate([(200, 120), (90, 160), (64, 64)])
    )
    gt = DetectionSet(images, ("cat", "dog"))
    dets = {}
    for im in images:
        lb = letterbox_geometry(im.width, im.height, 160)
        inside = to_letterbox(im.boxes, lb)
        dets[im.image_id] = Detections(from_letterbox(inside, lb), np.array([0.9, 0.8]), im.classes)
    assert detection_metrics(gt, dets).map50_95 == pytest.approx(1.0)


def test_detections_for_an_unknown_image_or_class_are_errors() -> None:
    gt = _gt((A, 0))
    with pytest.raises(DataError, match="image id 5, which the ground truth does not have"):
        detection_metrics(gt, {5: _dets((A, 0.9, 0))[1]})
    with pytest.raises(DataError, match=r"class 2 outside 0\.\.1"):
        detection_metrics(gt, _dets((A, 0.9, 2)))
    empty = DetectionSet((DetectionImage(1, Path("a.png"), 10, 10),), ("cat",))
    with pytest.raises(DataError, match="no objects"):
        detection_metrics(empty, {})
