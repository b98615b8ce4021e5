"""Every listed torchvision architecture pruned by 50% of its MACs: it runs, its MACs fell
by the requested amount (within 5 points), its classifier output is intact, and it exports
to ONNX that matches PyTorch. Random weights, small inputs (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.measure import count_macs
from edgecompress.prune.engine import PruneSettings, prune_to_budget, replay, widths

ARCHS = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x1_0",
    "googlenet",
    "regnet_x_400mf",
    "densenet121",
    "squeezenet1_1",
    "mnasnet0_5",
]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_prune_half_the_macs(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    base = count_macs(model, x)[0]
    pruned, steps, frac = prune_to_budget(
        model, x, 0.5, lambda m: count_macs(m, x)[0], PruneSettings()
    )
    assert abs(count_macs(pruned, x)[0] / base - 0.5) <= 0.05, frac
    assert steps, "nothing was pruned"
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (1, 10)
    assert list(widths(pruned).values())[-1] == 10  # the classifier keeps its outputs
    onnx_path = tmp_path / f"{arch}.onnx"
    export_onnx(pruned, x, onnx_path)
    ort = run_onnx(onnx_path, x.numpy())[0]
    scale = float(np.abs(out.numpy()).max()) or 1.0
    assert float(np.abs(ort - out.numpy()).max()) / scale < 1e-4
    # The plan replays on the original model to the same pruned model.
    with torch.no_grad():
        torch.testing.assert_close(replay(model, x, steps)(x), out, rtol=1e-4, atol=1e-5)
