"""Measuring a PyTorch model the same way everywhere: its logits on an array of inputs,
its MACs and parameters (Torch-Pruning's op counter), and its ONNX Runtime latency on
this machine (for latency-aware allocation and latency budgets)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress import memory
from edgecompress.errors import UnsupportedOpError


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

    from edgecompress.prune import attention
    from edgecompress.quantize.fake import float_copy, is_quantized

    if is_quantized(model):
        model = float_copy(model)
    if attention.hides_layers(model):  # counted as the prune stage will see it
        model = attention.standardize_attention(copy.deepcopy(model))
    macs, params = tp.utils.count_ops_and_params(model, example)
    # Its counting copy of the model is held in reference cycles (methods bound onto the
    # modules): freed now, not whenever the cyclic collector next runs (a 1.2 GB ViT-L
    # left one such copy per count), and its pages handed back.
    memory.release()
    return float(macs), float(params)


def onnx_latency_ms(model: nn.Module, example: Tensor, threads: int = 1, runs: int = 60) -> float:
    """Median ONNX Runtime latency (batch of ``example``), after warm-up."""
    return onnx_latencies_ms([model], example, threads, runs, rounds=1)[0]


def onnx_latencies_ms(
    models: Iterable[nn.Module],
    example: Tensor,
    threads: int = 1,
    runs: int = 60,
    rounds: int = 3,
) -> list[float]:
    """Median ONNX Runtime latency of each model, all timed in turns
    (:func:`interleaved_p50`). ``models`` may be a generator: each is exported and dropped
    before the next is made."""
    from edgecompress.exporters.onnx import export_onnx

    # The TorchScript exporter is several times faster to run than dynamo and gives the
    # same graph for timing purposes; the shipped artifact uses the build's one. Dynamo
    # where TorchScript has no export (e.g. VGG's adaptive 7x7 pool of a map 7 does not
    # divide, as at any input but 224 px): the candidates share their operators, so the
    # rest go to dynamo straight away.
    exporter = "torchscript"
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, model in enumerate(models):
            paths.append(Path(tmp) / f"candidate{i}.onnx")
            if exporter == "torchscript":
                try:
                    export_onnx(
                        model, example, paths[-1], opset=17, exporter=exporter, simplify=False
                    )
                    continue
                except UnsupportedOpError:
                    exporter = "dynamo"
            export_onnx(model, example, paths[-1], exporter=exporter, simplify=False)
        return interleaved_p50(paths, rounds, threads=threads, warmup=10, runs=runs, min_time_s=0.0)


def interleaved_p50(
    paths: list[Path],
    rounds: int = 3,
    *,
    threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    min_time_s: float = 1.0,
) -> list[float]:
    """ONNX Runtime p50 (ms, batch 1) of each file, timed in turns (p50 over at least
    ``runs`` runs after ``warmup``), ``rounds`` rounds, the lowest round kept: a job beside
    this one slows whichever run it overlaps, not the comparison."""
    from edgecompress.runtime.onnxrt import bench_onnx

    best = [float("inf")] * len(paths)
    for _ in range(max(rounds, 1)):
        for i, path in enumerate(paths):
            res = bench_onnx(path, threads=threads, warmup=warmup, runs=runs, min_time_s=min_time_s)
            best[i] = min(best[i], float(res["latency"]["p50_ms"]))
    return best
