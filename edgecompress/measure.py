"""Measuring a PyTorch model the same way everywhere: its logits on an array of inputs,
its MACs and parameters (Torch-Pruning's op counter), and its ONNX Runtime latency on
this machine (for latency-aware allocation and latency budgets)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress import memory


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
    """(multiply-accumulates, parameters) of one forward pass at ``example``'s shape, by
    the layers' hooks: a fake-quantized model is counted as its ``float_copy`` (the QAT
    wrappers call their layers' kernels directly, which hooks do not see)."""
    import torch_pruning as tp

    from edgecompress.attention import hides_layers, standardize_attention

    if hides_layers(model):  # counted as the prune stage will see it
        model = standardize_attention(copy.deepcopy(model))
    macs, params = tp.utils.count_ops_and_params(model, example)
    # Its counting copy of the model is held in reference cycles (methods bound onto the
    # modules): freed now, not whenever the cyclic collector next runs (a 1.2 GB ViT-L
    # left one such copy per count), and its pages handed back.
    memory.release()
    return float(macs), float(params)
