"""Measuring a PyTorch model the same way everywhere: its logits on an array of inputs,
its MACs and parameters (Torch-Pruning's op counter), and its ONNX Runtime latency on
this machine (for latency-aware allocation and latency budgets)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


def output_tensors(out: object) -> list[Tensor]:
    """A model's output as a flat list of tensors: a tensor, or the tensors of a tuple,
    list or dict (a detector's head outputs), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for o in out for t in output_tensors(o)]
    return []


def evaluate_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Run the model on float32 inputs in eval mode and return logits."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            outs.append(model(torch.from_numpy(inputs[i : i + batch_size])).float().numpy())
    return np.concatenate(outs)


def count_macs(model: nn.Module, example: Tensor) -> tuple[float, float]:
    """(multiply-accumulates, parameters) of one forward pass at ``example``'s shape.
    A fake-quantized model is counted as the float layers it wraps."""
    import torch_pruning as tp

    from edgecompress.quantize.fake import float_copy, is_quantized

    if is_quantized(model):
        model = float_copy(model)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


def onnx_latency_ms(model: nn.Module, example: Tensor, threads: int = 1, runs: int = 60) -> float:
    """Median ONNX Runtime latency (batch of ``example``), after warm-up."""
    from edgecompress.exporters.onnx import export_onnx
    from edgecompress.runtime.onnxrt import bench_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        # The TorchScript exporter is several times faster to run than dynamo and gives the
        # same graph for timing purposes; the shipped artifact uses the build's exporter.
        export_onnx(model, example, path, opset=17, exporter="torchscript", simplify=False)
        res = bench_onnx(path, threads=threads, warmup=10, runs=runs)
    return float(res["latency"]["p50_ms"])
