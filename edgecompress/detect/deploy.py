"""The head-cut detector in INT8: ONNX Runtime QDQ and the RKNN simulator, scored like
the float model.

Both see what evaluation sees: images letterboxed by
:func:`~edgecompress.detect.train.detector_preprocess` (RGB, grey padding). ONNX Runtime is
calibrated on those images / 255; RKNN gets them as uint8 NHWC and divides by 255 on the
NPU (the spec's mean 0 and std 1 are 0 and 255 in pixel units). The head's raw outputs of
either runtime are decoded by the same :func:`~edgecompress.runtime.detect_post.decode_yolov8`
and scored by the same :func:`~edgecompress.detect.metrics.detection_metrics`.

>>> q = quantize_detector_onnx("det.onnx", "det_int8.onnx", sets["train"])  # doctest: +SKIP
>>> evaluate_detector(q, sets["test"], 160).map50_95  # doctest: +SKIP
0.59
>>> rknn_detector("det.onnx", "det.rknn", sets["train"], sets["test"]).metrics.map50_95
... # doctest: +SKIP
0.59
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.detect.data import DetectionSet, letterbox_geometry, load_image
from edgecompress.detect.metrics import DetectionMetrics, detection_metrics
from edgecompress.detect.train import MAP_POST, decode_head_outputs, detector_preprocess
from edgecompress.errors import ConfigError
from edgecompress.exporters.rknn import RknnError, RknnResult, convert_rknn
from edgecompress.quantize.onnx_qdq import quantize_qdq
from edgecompress.runtime.detect_post import Detections, Letterbox, PostConfig


def detector_onnx_shapes(path: Path | str) -> tuple[int, list[tuple[int, ...]]]:
    """The square input side of a head-cut detector's ONNX file (static batch 1, NCHW) and
    the shape of each of its outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(inputs) != 1 or len(dims) != 4 or dims[:2] != [1, 3] or not dims[2] == dims[3] > 0:
        raise ConfigError(
            f"{path}: expected one static 1 x 3 x S x S image input (export_detector_onnx "
            f"writes one), got {[i.name for i in inputs]} with shape {dims}"
        )
    outs = [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in model.graph.output]
    return dims[2], outs


def letterboxed_images(
    dataset: DetectionSet, size: int, limit: int | None = None
) -> tuple[np.ndarray, list[Letterbox]]:
    """The first ``limit`` images of ``dataset`` as the detector's geometry gives them:
    uint8 RGB N x size x size x 3 (before / 255), and each one's letterbox."""
    spec = detector_preprocess(size)
    chosen = dataset.images[:limit] if limit is not None else dataset.images
    if not chosen:
        raise ConfigError("letterboxed_images: the dataset has no images")
    images = np.stack([spec.prepare(load_image(im.path)) for im in chosen])
    return images, [letterbox_geometry(im.width, im.height, size) for im in chosen]


def calibration_inputs(data: DetectionSet, size: int, limit: int = 64) -> np.ndarray:
    """The first ``limit`` images of ``data`` letterboxed to ``size`` as the model sees
    them: float32 (N, 3, S, S) in [0, 1]."""
    spec = detector_preprocess(size)
    images, _ = letterboxed_images(data, size, limit)
    return np.stack([spec.normalize(im) for im in images]).astype(np.float32)


def quantize_detector_onnx(
    fp_onnx: Path | str,
    out: Path | str,
    calibration: DetectionSet,
    *,
    limit: int = 64,
    method: str = "minmax",
) -> Path:
    """ONNX Runtime static INT8 (QDQ: per-channel int8 weights, uint8 activations) of a
    head-cut detector, calibrated on the first ``limit`` images of ``calibration`` (train
    images, never the test split) letterboxed and scaled exactly as evaluation does."""
    size, _ = detector_onnx_shapes(fp_onnx)
    inputs = calibration_inputs(calibration, size, limit)
    return quantize_qdq(Path(fp_onnx), Path(out), inputs, method=method)


@dataclass(frozen=True)
class RknnDetection:
    """The RKNN simulator's mAP, its detections (image id -> boxes in original pixels),
    the conversion record (raw head outputs in ``rknn.outputs``) and the NumPy decoding
    time per image."""

    metrics: DetectionMetrics
    detections: dict[int, Detections]
    rknn: RknnResult
    decode_ms_per_image: float


def rknn_detector(
    onnx_path: Path | str,
    out: Path | str,
    calibration: DetectionSet,
    eval_set: DetectionSet,
    *,
    quantize: bool = True,
    calibration_limit: int = 64,
    post: PostConfig = MAP_POST,
    platform: str = "rk3588",
    progress: bool = True,
) -> RknnDetection:
    """Convert a head-cut detector to RKNN (INT8 with the toolkit's own calibration on the
    first ``calibration_limit`` letterboxed ``calibration`` images, or with ``quantize``
    false: FP16 for a float model, the ranges of a QDQ one), run every ``eval_set`` image
    in the simulator and score the decoded outputs."""
    size, shapes = detector_onnx_shapes(onnx_path)
    spec = detector_preprocess(size)  # mean 0, std 1: the NPU gets 0 and 255 in pixels
    calib = list(letterboxed_images(calibration, size, calibration_limit)[0]) if quantize else []
    evals, boxes = letterboxed_images(eval_set, size)
    res = convert_rknn(
        Path(onnx_path), Path(out), spec, platform, calib, evals, quantize=quantize,
        progress=progress,
    )  # fmt: skip
    outputs = _as_onnx_layout(res.outputs, shapes, len(evals), Path(onnx_path))
    t0 = time.perf_counter()
    dets = decode_head_outputs(outputs, boxes, size, post)
    decode_ms = (time.perf_counter() - t0) * 1e3 / len(evals)
    by_id = {im.image_id: d for im, d in zip(eval_set.images, dets, strict=True)}
    return RknnDetection(detection_metrics(eval_set, by_id), by_id, res, decode_ms)


def _as_onnx_layout(
    outputs: list[np.ndarray], shapes: list[tuple[int, ...]], n: int, onnx_path: Path
) -> list[np.ndarray]:
    """The simulator's outputs stacked over ``n`` images, checked to be the ONNX outputs'
    NCHW shapes (the decoding reads channels first; a silent NHWC would decode garbage)."""
    if len(outputs) != len(shapes):
        raise RknnError(
            f"{onnx_path}: the RKNN simulator gave {len(outputs)} outputs, the ONNX model "
            f"has {len(shapes)}"
        )
    checked = []
    for i, (o, shape) in enumerate(zip(outputs, shapes, strict=True)):
        want = (n, *shape[1:])
        if o.shape != want:
            raise RknnError(
                f"{onnx_path}: RKNN simulator output {i} has shape {o.shape}, expected the "
                f"ONNX layout {want} (N, C, H, W)"
            )
        checked.append(o)
    return checked
