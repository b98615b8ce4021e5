"""Timing a candidate model on the host runtime (ONNX Runtime), for latency-aware
allocation and latency budgets."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from edgecompress.exporters.onnx import export_onnx
from edgecompress.runtime.onnxrt import bench_onnx


def onnx_latency_ms(
    model: nn.Module, example: torch.Tensor, threads: int = 1, runs: int = 60
) -> float:
    """Median ONNX Runtime latency (batch of ``example``), after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        # The TorchScript exporter is several times faster to run than dynamo and gives the
        # same graph for timing purposes; the shipped artifact uses the build's exporter.
        export_onnx(model, example, path, opset=17, exporter="torchscript", simplify=False)
        res = bench_onnx(path, threads=threads, warmup=10, runs=runs)
    return float(res["latency"]["p50_ms"])
