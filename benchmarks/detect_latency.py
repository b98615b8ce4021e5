"""Issue 17: a YOLOv8n-size detector's host latency at 640x640, FP32 against INT8, in the
same run.

The detector is ``yolo_detector(num_classes=80)`` (YOLOv8n's layout: 3.16M parameters,
4.4 GMACs at 640) with its initial weights: latency does not depend on what the weights
learned, and no checkpoint is downloaded. INT8 is ONNX Runtime's static QDQ
(``quantize_detector_onnx``) calibrated on 32 example canvases letterboxed to 640. Each
file is timed in turns, three rounds, the lowest p50 kept (a job beside this one slows
whichever run it overlaps)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime
import torch

from benchmarks.common import machine, write_section
from edgecompress.detect.coco import read_coco_splits
from edgecompress.detect.deploy import quantize_detector_onnx
from edgecompress.detect.example import ensure_fashion_detect
from edgecompress.detect.model import yolo_detector
from edgecompress.detect.train import export_detector_onnx
from edgecompress.measure import count_macs
from edgecompress.quantize.onnx_qdq import integer_ops, runs_in_integer
from edgecompress.timing import interleaved_p50

SIZE = 640
CALIBRATION = 32


def run() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = yolo_detector(num_classes=80).eval()
    macs, params = count_macs(model, torch.zeros(1, 3, SIZE, SIZE))
    train = read_coco_splits(ensure_fashion_detect())["train"]
    with tempfile.TemporaryDirectory() as tmp:
        fp = Path(tmp) / "yolov8n_fp32.onnx"
        export_detector_onnx(model, SIZE, fp)
        q = quantize_detector_onnx(fp, Path(tmp) / "yolov8n_int8.onnx", train, limit=CALIBRATION)
        fp_ms, q_ms = interleaved_p50([fp, q], rounds=3, min_time_s=2.0)
        in_integer = runs_in_integer(integer_ops(q))
        sizes = fp.stat().st_size, q.stat().st_size
    body = (
        f"Machine: {machine()}; torch {torch.__version__}, ONNX Runtime "
        f"{onnxruntime.__version__}, 1 thread, batch 1. Another job shared the two cores "
        "while this ran.\n\n"
        "| model | input | params | MACs | FP32 p50 | INT8 p50 | INT8 / FP32 |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| `yolo_detector(80)` (YOLOv8n layout) | {SIZE}x{SIZE} | {params / 1e6:.2f}M | "
        f"{macs / 1e9:.2f}G | {fp_ms:.1f} ms | {q_ms:.1f} ms | {q_ms / fp_ms:.2f}x |\n\n"
        f"Both files cut before the box decoding (6 head outputs). INT8: static QDQ, MinMax, "
        f"per-channel int8 weights, uint8 activations, calibrated on {CALIBRATION} example "
        f"canvases letterboxed to {SIZE}; convolutions run as integer kernels: {in_integer}. "
        f"Sizes: FP32 {sizes[0] / 2**20:.1f} MiB, INT8 {sizes[1] / 2**20:.1f} MiB. Each file "
        "timed in turns (p50 over at least 200 runs after 20 warm-up, three rounds, the lowest "
        "kept). Initial weights: latency does not depend on what was learned, so no "
        "checkpoint is needed; accuracy of INT8 on a trained detector is in the section "
        "above. The published RK3588 figure this follows (7.91 ms per 512x512 frame, -58% "
        "latency from INT8) is NPU time, not comparable with this CPU. "
        "`benchmarks/detect_latency.py`."
    )
    write_section("Detection: a YOLOv8n-size model at 640x640, FP32 vs INT8 on the host", body)


if __name__ == "__main__":
    run()
