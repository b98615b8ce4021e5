"""The detector in INT8: ONNX Runtime QDQ keeps the float model's mAP and runs in integer
kernels; the RKNN simulator's raw head outputs, decoded by the same NumPy code, give the
detections ONNX Runtime FP32 gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgecompress.detect.data import DetectionSet, load_image
from edgecompress.detect.deploy import (
    detector_onnx_shapes,
    letterboxed_images,
    quantize_detector_onnx,
    rknn_detector,
)
from edgecompress.detect.model import YoloDetector
from edgecompress.detect.train import (
    detector_input,
    evaluate_detector,
    export_detector_onnx,
    onnx_runner,
    predict_detections,
)
from edgecompress.quantize.onnx_qdq import integer_ops, runs_in_integer
from edgecompress.runtime.detect_post import Detections


@dataclass(frozen=True)
class Trained:
    onnx: Path  # FP32, cut before decoding
    seen: DetectionSet  # the 4 images it was trained on
    train: DetectionSet  # all 8 train images: the calibration set


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
    detect_sets: dict[str, DetectionSet],
    overfit_detector: tuple[YoloDetector, DetectionSet],
) -> Trained:
    """The shared overfit detector (conftest), exported."""
    model, seen = overfit_detector
    path = tmp_path_factory.mktemp("deploy") / "det.onnx"
    export_detector_onnx(model, 160, path, check_on=seen)
    return Trained(path, seen, detect_sets["train"])


def test_onnxruntime_int8_keeps_the_float_map(trained: Trained, tmp_path: Path) -> None:
    q = quantize_detector_onnx(trained.onnx, tmp_path / "int8.onnx", trained.train)
    assert runs_in_integer(integer_ops(q))  # really INT8, not float with extra nodes
    fp = evaluate_detector(trained.onnx, trained.seen, 160)
    int8 = evaluate_detector(q, trained.seen, 160)
    assert fp.map50 > 0.6  # a model that finds things, so agreement means something
    # Measured: mAP@0.5 0.978 both, mAP@0.5:0.95 0.944 FP32 -> 0.941 INT8.
    assert abs(int8.map50 - fp.map50) < 0.02
    assert abs(int8.map50_95 - fp.map50_95) < 0.02


def test_calibration_images_are_the_evaluation_letterbox(trained: Trained) -> None:
    size, shapes = detector_onnx_shapes(trained.onnx)
    assert size == 160 and shapes[0] == (1, 64, 20, 20) and shapes[-1] == (1, 10, 5, 5)
    images, boxes = letterboxed_images(trained.seen, size, limit=2)
    assert images.shape == (2, 160, 160, 3) and images.dtype == np.uint8 and len(boxes) == 2
    # Fed as NCHW / 255, they are exactly the evaluation inputs.
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    want = np.stack([detector_input(load_image(im.path), 160)[0] for im in trained.seen.images[:2]])
    np.testing.assert_array_equal(x, want)


def _matched(ref: Detections, got: Detections, min_score: float, min_iou: float) -> float:
    """The share of ``ref``'s detections above ``min_score`` that ``got`` has too: the same
    class, IoU at least ``min_iou``."""
    strong = np.flatnonzero(ref.scores >= min_score)
    hits = 0
    for i in strong:
        same = got.classes == ref.classes[i]
        b, g = ref.boxes[i], got.boxes[same]
        w = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), 0, None)
        h = np.clip(np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), 0, None)
        inter = w * h
        union = (b[2] - b[0]) * (b[3] - b[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
        hits += bool(len(g)) and float((inter / union).max()) >= min_iou
    return hits / max(len(strong), 1)


@pytest.mark.rknn
@pytest.mark.parametrize(
    ("quantize", "min_iou", "max_map_diff"), [(False, 0.95, 0.005), (True, 0.9, 0.02)]
)
def test_rknn_simulator_detects_what_onnxruntime_detects(
    trained: Trained, tmp_path: Path, quantize: bool, min_iou: float, max_map_diff: float
) -> None:
    res = rknn_detector(
        trained.onnx, tmp_path / "det.rknn", trained.train, trained.seen, quantize=quantize,
        progress=False,
    )  # fmt: skip
    assert [o.shape[1:] for o in res.rknn.outputs] == [
        s[1:] for s in detector_onnx_shapes(trained.onnx)[1]
    ]
    ref = predict_detections(onnx_runner(trained.onnx), trained.seen, 160)
    fp = evaluate_detector(trained.onnx, trained.seen, 160)
    assert fp.map50 > 0.6
    # Measured: FP16 gives FP32's mAP exactly; INT8 mAP@0.5:0.95 0.941 against 0.944, and
    # every strong detection of either matches ONNX Runtime's at IoU 0.98.
    assert abs(res.metrics.map50_95 - fp.map50_95) < max_map_diff
    assert abs(res.metrics.map50 - fp.map50) < max_map_diff
    # ONNX Runtime's strongest detections of each image (within half the best score; the
    # overfit model's best scores are 0.25 to 0.9) are found by the simulator too.
    for image_id, dets in ref.items():
        assert len(dets.scores)
        top = 0.5 * float(dets.scores.max())
        assert _matched(dets, res.detections[image_id], top, min_iou) == 1.0
    assert res.decode_ms_per_image > 0


def test_outputs_in_another_layout_are_refused_not_decoded(tmp_path: Path) -> None:
    # A channels-last output of the right size would decode into nonsense boxes silently.
    from edgecompress.detect.deploy import _as_onnx_layout
    from edgecompress.exporters.rknn import RknnError

    shapes = [(1, 64, 20, 20), (1, 10, 20, 20)]
    nchw = [np.zeros((2, *s[1:]), np.float32) for s in shapes]
    assert _as_onnx_layout(nchw, shapes, 2, tmp_path / "m.onnx") == nchw
    nhwc = [a.transpose(0, 2, 3, 1) for a in nchw]
    with pytest.raises(RknnError, match=r"output 0 has shape \(2, 20, 20, 64\).*\(N, C, H, W\)"):
        _as_onnx_layout(nhwc, shapes, 2, tmp_path / "m.onnx")
    with pytest.raises(RknnError, match="gave 1 outputs, the ONNX model has 2"):
        _as_onnx_layout(nchw[:1], shapes, 2, tmp_path / "m.onnx")
