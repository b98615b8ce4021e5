"""Detection metrics by pycocotools' ``COCOeval`` (the reference implementation), computed
the same way for every runtime: PyTorch, ONNX Runtime, the RKNN simulator all hand in
:class:`~edgecompress.runtime.detect_post.Detections` per image.

COCO's conventions hold: AP is the 101-point interpolated precision-recall area; mAP@0.5:0.95
averages it over IoU 0.50, 0.55, ..., 0.95; a class without ground-truth objects is left
out of the means (its detections are not penalised, its AP is NaN); at most ``max_dets``
detections per image, best score first, are scored.

>>> m = detection_metrics(val_set, {im.image_id: run(im) for im in val_set.images})
... # doctest: +SKIP
>>> m.map50, m.map50_95  # doctest: +SKIP
(0.91, 0.68)
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecompress.detect.data import DetectionSet
from edgecompress.errors import DataError, MissingToolchainError
from edgecompress.runtime.detect_post import Detections


@dataclass(frozen=True)
class DetectionMetrics:
    """mAP at IoU 0.5, 0.75 and averaged over 0.5:0.95 (0..1), and per class (NaN for a
    class without ground truth); what was counted."""

    map50: float
    map75: float
    map50_95: float
    per_class_ap50: dict[str, float]
    per_class_ap50_95: dict[str, float]
    images: int
    objects: int
    detections: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coco_api() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise MissingToolchainError(
            f"pycocotools is needed for detection mAP ({exc}); `pip install pycocotools` "
            "(a dependency of edgecompress: reinstall the package)"
        ) from exc
    return COCO, COCOeval


def detection_metrics(
    ground_truth: DetectionSet, detections: Mapping[int, Detections], max_dets: int = 100
) -> DetectionMetrics:
    """Score ``detections`` (image id -> that image's detections, boxes in its original
    pixels) against ``ground_truth``. An image without an entry has no detections."""
    if max_dets < 1:
        raise ValueError(f"detection_metrics: max_dets must be at least 1, got {max_dets}")
    COCO, COCOeval = _coco_api()
    names = ground_truth.class_names
    known = ground_truth.by_id()
    for image_id, dets in detections.items():
        if image_id not in known:
            raise DataError(
                f"detections for image id {image_id}, which the ground truth does not have "
                f"(its ids: {min(known, default=None)}..{max(known, default=None)}); pass the "
                "ids of DetectionImage.image_id"
            )
        bad = dets.classes[(dets.classes < 0) | (dets.classes >= len(names))]
        if bad.size:
            raise DataError(
                f"detections for image id {image_id}: class {int(bad[0])} outside "
                f"0..{len(names) - 1} ({len(names)} ground-truth classes); the model's "
                "classes must be the data set's"
            )
    if not ground_truth.objects:
        raise DataError("the ground truth has no objects: mAP is undefined")
    images = [
        {"id": im.image_id, "width": im.width, "height": im.height} for im in ground_truth.images
    ]
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    gt_anns: list[dict[str, Any]] = []
    for im in ground_truth.images:
        for box, cls, crowd in zip(im.boxes, im.classes.tolist(), im.crowd.tolist(), strict=True):
            gt_anns.append(_ann(len(gt_anns) + 1, im.image_id, box, cls, iscrowd=int(crowd)))
    dt_anns: list[dict[str, Any]] = []
    for image_id, dets in detections.items():
        for box, score, cls in zip(
            dets.boxes, dets.scores.tolist(), dets.classes.tolist(), strict=True
        ):
            dt_anns.append(_ann(len(dt_anns) + 1, image_id, box, cls, score=score))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
        dt.dataset = {"images": images, "categories": cats, "annotations": dt_anns}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [max_dets]  # evaluate() keeps a sorted list: only ours
        ev.evaluate()
        ev.accumulate()
    # precision: [IoU threshold, recall threshold, class, area range, max dets]; -1 where a
    # class has no ground truth. Area range 0 is "all"; one max-dets entry, ours.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    ap = np.full((precision.shape[0], len(names)), math.nan)
    valid = (precision > -1).all(axis=1)
    ap[valid] = precision.transpose(0, 2, 1)[valid].mean(axis=1)
    iou = ev.params.iouThrs
    t50, t75 = int(np.argmin(np.abs(iou - 0.5))), int(np.argmin(np.abs(iou - 0.75)))
    return DetectionMetrics(
        map50=float(np.nanmean(ap[t50])),
        map75=float(np.nanmean(ap[t75])),
        map50_95=float(np.nanmean(ap.mean(axis=0))),
        per_class_ap50={n: float(ap[t50, k]) for k, n in enumerate(names)},
        per_class_ap50_95={n: float(ap[:, k].mean()) for k, n in enumerate(names)},
        images=len(ground_truth),
        objects=ground_truth.objects,
        detections=len(dt_anns),
    )


def _ann(
    ann_id: int,
    image_id: int,
    box: np.ndarray,
    cls: int,
    iscrowd: int = 0,
    score: float | None = None,
) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    out = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": iscrowd,
    }
    if score is not None:
        out["score"] = score
    return out
