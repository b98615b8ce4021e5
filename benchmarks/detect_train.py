"""Issue 17, parts 2-3: the example detector (``fashion_detector``, YOLOv8n at half width)
trained on the Fashion-MNIST detection example, and its test mAP in PyTorch and in ONNX
Runtime FP32 through the same letterbox, the same NumPy decoding and the same scoring.

Training takes about 15 minutes on two shared cores, so the weights and the training record
are cached (``<cache>/fashion_detect_model.{pt,json}``) and reused while the settings
match; the evaluation runs every time. The ONNX file is written beside them for the
quantization and RKNN steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from benchmarks.common import machine, write_section
from edgecompress.calibration.fashion_mnist import default_cache
from edgecompress.detect.coco import read_coco_splits
from edgecompress.detect.data import DetectionSet
from edgecompress.detect.example import SIZES, ensure_fashion_detect
from edgecompress.detect.model import YoloDetector
from edgecompress.detect.pipeline import EXAMPLE_NAME, EXAMPLE_TRAIN, example_detector
from edgecompress.detect.train import (
    MAP_POST,
    evaluate_detector,
    export_detector_onnx,
)
from edgecompress.measure import count_macs
from edgecompress.report.markdown import table

NAME = EXAMPLE_NAME
CONFIG = EXAMPLE_TRAIN


def trained(sets: dict[str, DetectionSet], cache: Path) -> tuple[YoloDetector, dict[str, Any]]:
    """The example detector (``edgecompress.detect.pipeline.example_detector``: trained
    once with :data:`CONFIG`, then from the cache) and its training record."""
    return example_detector(sets, cache, SIZES)


def run() -> None:
    torch.set_num_threads(1)  # as ONNX Runtime's session; two threads beside a job crawl
    sets = read_coco_splits(ensure_fashion_detect())
    cache = default_cache()
    model, record = trained(sets, cache)
    onnx_path = cache / f"{NAME}.onnx"
    export = export_detector_onnx(model, CONFIG.size, onnx_path, check_on=sets["val"])
    assert export.parity is not None
    macs, params = count_macs(model, torch.zeros(1, 3, CONFIG.size, CONFIG.size))
    rows = []
    for label, subject in (("PyTorch FP32", model), ("ONNX Runtime FP32", onnx_path)):
        t0 = time.perf_counter()
        m = evaluate_detector(subject, sets["test"], CONFIG.size, MAP_POST)
        seconds = time.perf_counter() - t0
        rows.append(
            [
                label,
                f"{100 * m.map50:.2f}",
                f"{100 * m.map50_95:.2f}",
                f"{100 * m.map75:.2f}",
                f"{m.detections}",
                f"{seconds:.1f}",
            ]
        )
    epochs = len(record["history"])
    val_curve = [round(100 * r["val_map50_95"], 1) for r in record["history"]]
    header = ["runtime", "mAP@0.5", "mAP@0.5:0.95", "mAP@0.75", "detections", "eval s"]
    test = sets["test"]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}, ONNX Runtime "
        f"{onnxruntime.__version__} (1 thread), NumPy {np.__version__}.\n\n"
        + table(rows, header)
        + f"\n\nModel: `fashion_detector()` (YOLOv8n layout at width 0.125, depth 0.33, "
        f"reg_max 16): {params / 1e6:.3f}M parameters, {macs / 1e6:.1f}M MACs at "
        f"{CONFIG.size}x{CONFIG.size}; exported cut before the box decoding (6 outputs: DFL "
        f"logits and class logits at strides 8/16/32), opset {export.onnx.opset} "
        f"({export.onnx.exporter} exporter); ONNX Runtime vs PyTorch head outputs on 4 val "
        f"images: max abs diff {export.parity['max_abs_diff']:.2g}.\n\n"
        f"Data: the Fashion-MNIST detection example (`ensure_fashion_detect()`: "
        f"{len(sets['train'])} train / {len(sets['val'])} val / {len(test)} test images, "
        f"160x160, {test.objects} test objects). Training: {epochs} epochs, AdamW lr "
        f"{CONFIG.lr} (1 epoch warm-up, cosine to {CONFIG.final_lr}x), batch "
        f"{CONFIG.batch_size}, horizontal flips only, EMA {CONFIG.ema}; "
        f"{record['train_s'] / 60:.1f} min on one nice'd thread beside another job. The kept "
        f"epoch ({record['best_epoch']}) has the best val mAP@0.5:0.95 "
        f"({100 * record['best_val_map50_95']:.2f}); the test split was not seen before this "
        f"table. Val mAP@0.5:0.95 by epoch: {val_curve}. Both runtimes: the same letterboxed "
        "inputs, `decode_yolov8` (conf 0.001, every class above it, NMS IoU 0.7, 300 "
        "detections) and pycocotools' COCOeval (100 detections per image); "
        "`benchmarks/detect_train.py`.\n\nReading: ONNX Runtime FP32 gives PyTorch's mAP. "
        "Val mAP@0.5:0.95 flattens after about 20 epochs and peaks before the last while "
        "the training loss keeps falling: this suggests the 2,000 training images (flips "
        "the only augmentation) limit the model more than the number of epochs."
    )
    write_section("Detection: the example detector in PyTorch and ONNX Runtime", body)


if __name__ == "__main__":
    run()
