"""Every accepted model format becomes an editable module that is pruned, quantized (QAT)
and exported; what cannot be made editable is refused by name before any training."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from edgecompress.editable import make_editable, needs_conversion
from edgecompress.errors import ModelLoadError, UnsupportedOpError
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.measure import count_macs
from edgecompress.model_io import load_model
from edgecompress.prune.engine import PruneSettings, prune_to_budget
from edgecompress.quantize.fake import QuantWrapper, float_copy, prepare_qat
from edgecompress.testing.models import digits_resnet

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
FORMATS = ("torchscript", "pt2", "state_dict", "pickle", "onnx", "onnx-dynamo")
ARCHS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "digits_resnet": (digits_resnet, "edgecompress.testing.models:digits_resnet"),
    "resnet18": (
        lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        "torchvision:resnet18",
    ),
}


def _trained_like(net: nn.Module) -> nn.Module:
    """Random but non-trivial BatchNorm statistics, so a wrong conversion shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _save(net: nn.Module, fmt: str, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, X), str(path))
        elif fmt == "pt2":
            torch.export.save(torch.export.export(net, (X,)), str(path))
        elif fmt == "state_dict":
            torch.save(net.state_dict(), path)
        elif fmt == "pickle":
            torch.save(net, path)
        elif fmt == "onnx":
            torch.onnx.export(net, (X,), str(path), dynamo=False, input_names=["image"])
        else:  # torch's default exporter: opset 18+, ReduceMean with axes as an input
            torch.onnx.export(net, (X,), str(path), dynamo=True, verbose=False)


def _rel_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def _params(arch: str) -> list:
    # resnet18 and the dynamo exporter's first run (torch.export warm-up) cost seconds each.
    return [
        pytest.param(
            arch,
            fmt,
            marks=pytest.mark.slow if arch == "resnet18" or fmt == "onnx-dynamo" else (),
            id=f"{arch}-{fmt}",
        )
        for fmt in FORMATS
    ]


@pytest.mark.parametrize(("arch", "fmt"), _params("digits_resnet") + _params("resnet18"))
@pytest.mark.slow
def test_format_is_pruned_quantized_and_exported(arch: str, fmt: str, tmp_path: Path) -> None:
    factory, arch_name = ARCHS[arch]
    net = _trained_like(factory())
    with torch.no_grad():
        expected = net(X)
    onnx_file = fmt.startswith("onnx")
    path = tmp_path / f"model.{'onnx' if onnx_file else 'pt'}"
    _save(net, fmt, path)
    loaded = load_model(path, arch_name if fmt == "state_dict" else None, trust_pickle=True)
    assert loaded.format == ("onnx" if onnx_file else fmt)

    editable = make_editable(loaded.module, X, source=str(path))
    assert not needs_conversion(editable)
    if not onnx_file:  # an ONNX file exported in eval mode has BN fused already
        assert any(isinstance(m, nn.BatchNorm2d) for m in editable.modules())  # not fused
    with torch.no_grad():
        assert _rel_diff(expected, editable(X)) < 1e-4

    def macs(m: nn.Module) -> float:
        return count_macs(m, X)[0]

    pruned, plan, kept = prune_to_budget(editable, X, 0.5, macs, PruneSettings(), iters=8, tol=0.05)
    assert plan and 0.4 < kept < 0.6
    assert macs(pruned) < 0.6 * macs(editable)

    qat = prepare_qat(pruned, X)
    assert sum(isinstance(m, QuantWrapper) for m in qat.modules()) >= 9
    plain = float_copy(qat)
    onnx = export_onnx(plain, X, tmp_path / "pruned.onnx")
    with torch.no_grad():
        torch_out = plain(X).numpy()
    assert _rel_diff(torch_out, run_onnx(onnx.path, X.numpy())[0]) < 1e-4


def test_plain_module_is_returned_unchanged() -> None:
    net = digits_resnet().eval()
    assert make_editable(net, X, source="net") is net


class _GridSampler(nn.Module):
    """A conv net with an op (GridSample) the ONNX -> PyTorch converter lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(x.shape[0], 4, 4, 2)
        y = nn.functional.grid_sample(self.conv(x), grid, align_corners=False)
        return self.fc(y.mean((2, 3)))


def test_unconvertible_op_is_named_before_training(tmp_path: Path) -> None:
    path = tmp_path / "grid.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_GridSampler().eval(), X), str(path))
    loaded = load_model(path)
    with pytest.raises(ModelLoadError, match=r"GridSample.*--arch.*--trust-pickle.*convert"):
        make_editable(loaded.module, X, source=str(path))
    onnx_path = tmp_path / "grid.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_GridSampler().eval(), (X,), str(onnx_path), dynamo=False)
    with pytest.raises(ModelLoadError, match=r"grid\.onnx.*GridSample"):
        load_model(onnx_path)


class _ChannelShuffle(nn.Module):
    """A reshape to fixed channel groups: pruning through it cannot keep its shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.conv2(x).mean((2, 3)))


def test_fixed_reshape_names_itself_when_pruning_breaks_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(_ChannelShuffle().eval(), X)
    editable = make_editable(scripted, X, source="shuffle.pt")
    with pytest.raises(UnsupportedOpError, match=r"Reshape .*fixed shape \[1, 2, 8, 16, 16\]"):
        prune_to_budget(
            editable, X, 0.5, lambda m: count_macs(m, X)[0], PruneSettings(), iters=2, tol=0.05
        )


def test_view_before_the_head_becomes_a_flatten_and_prunes(tmp_path: Path) -> None:
    class ViewHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
            self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv2(torch.relu(self.conv1(x)))
            return self.fc(x.view(x.size(0), -1))  # a Reshape to [1, 1024] in the graph

    path = tmp_path / "view.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ViewHead().eval(), (X,), str(path), dynamo=False)
    editable = load_model(path).module
    pruned, _, kept = prune_to_budget(
        editable, X, 0.5, lambda m: count_macs(m, X)[0], PruneSettings(), iters=6, tol=0.05
    )
    assert kept < 0.7
    assert pruned(X).shape == (1, 10)


def test_a_foreign_onnx_with_hard_swish_as_div_is_traceable_for_merge(tmp_path: Path) -> None:
    """PP-OCR's classifier writes hard-swish as Mul/Clip/Div: onnx2torch's Div wrapper
    branches on dtype, which torch.fx cannot trace, so the default build's merge stage
    refused every such model before any training."""
    from edgecompress.merge.engine import traced_graph

    class HardSwishNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.conv(x))
            x = x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0
            return self.fc(x.mean((2, 3)))

    path = tmp_path / "hswish.onnx"
    net = _trained_like(HardSwishNet()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (X,), str(path), dynamo=False)
    editable = load_model(path).module
    traced_graph(editable)  # raised UnsupportedOpError ("... control flow") before
    assert _rel_diff(editable(X).detach(), net(X).detach()) < 1e-4
