"""The INT8 QDQ graph rknn-toolkit2 is handed is rewritten around the patterns its
converter dies on (exporters.rknn_graph): the patch-embedding rewrite computes exactly
what the file computed, the Q/DQ removals touch only their pattern, a float graph is never
changed, and a QDQ patch-embedding net that killed the real converter (SIGSEGV) now
converts and matches ONNX Runtime in the RKNN simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.exporters.onnx import run_onnx
from edgecompress.exporters.rknn_graph import for_rknn
from edgecompress.quantize.onnx_qdq import quantize_qdq


class _PatchNet(nn.Module):
    """ViT's stem in miniature: a patch conv whose kernel is its stride, then a head."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, patch, stride=patch)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.patch(x)).mean((2, 3)))


class _GeluBlock(nn.Module):
    """ConvNeXt's pointwise pair: Linear -> erf GELU -> Linear on channels-last maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.up, self.down = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).permute(0, 2, 3, 1)
        return self.down(nn.functional.gelu(self.up(y))).mean((1, 2))


def _qdq(model: nn.Module, size: int, tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    fp = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model.eval(), (torch.zeros(1, 3, size, size),), str(fp), opset_version=17,
        dynamo=False, input_names=["image"],
    )  # fmt: skip
    calib = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    return quantize_qdq(fp, tmp_path / f"{name}.int8.onnx", calib)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return run_onnx(path, x)[0]


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("patch, size", [(8, 32), (16, 32), (8, 36)])
def test_a_patch_conv_becomes_space_to_depth_and_computes_the_same(
    patch: int, size: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    qdq = _qdq(_PatchNet(patch), size, tmp_path, "patch")
    out = tmp_path / "for_rknn.onnx"
    changes = for_rknn(qdq, out)
    assert len(changes) == 1 and f"{patch}x{patch} stride-{patch}" in changes[0], changes
    assert "SpaceToDepth" in _ops(out) and ("Slice" in _ops(out)) == (size % patch != 0)
    x = np.random.default_rng(1).standard_normal((8, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(qdq, x), rtol=0, atol=1e-5)


def test_small_strides_and_float_graphs_are_left_alone(tmp_path: Path) -> None:
    qdq = _qdq(_PatchNet(4), 32, tmp_path, "patch4")  # stride 4 converts as it is
    assert for_rknn(qdq, tmp_path / "a.onnx") == [] and not (tmp_path / "a.onnx").exists()
    torch.onnx.export(
        _PatchNet(16).eval(), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "fp.onnx"),
        opset_version=17, dynamo=False, input_names=["image"],
    )  # fmt: skip
    assert for_rknn(tmp_path / "fp.onnx", tmp_path / "b.onnx") == []
    assert not (tmp_path / "b.onnx").exists()


def test_gelu_insides_lose_their_qdq_and_nothing_else(tmp_path: Path) -> None:
    """ONNX Runtime's quantizer puts Q/DQ on GELU's erf, +1 and *0.5 (the toolkit died
    with SIGFPE on ConvNeXt-T's); only those go: the GELU's input and output keep theirs."""
    qdq = _qdq(_GeluBlock(), 32, tmp_path, "gelu")
    before = _ops(qdq).count("QuantizeLinear")
    out = tmp_path / "for_rknn.onnx"
    changes = for_rknn(qdq, out)
    assert any("inside GELU" in c for c in changes), changes
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    quantized = {
        producers[n.input[0]].op_type
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in producers
    }
    assert "Erf" not in quantized and {"Mul", "Gemm"} <= quantized, quantized
    assert 0 < before - _ops(out).count("QuantizeLinear") <= 3
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    a, b = _run(out, x).ravel(), _run(qdq, x).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


@pytest.mark.rknn
def test_a_qdq_patch_conv_converts_and_matches_in_the_simulator(tmp_path: Path) -> None:
    """rknn-toolkit2 2.5.0 was killed by SIGSEGV building this file as exported."""
    from edgecompress.exporters.rknn import convert_rknn, cosine_per_output

    spec = PreprocessSpec(input_size=(32, 32), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    qdq = _qdq(_PatchNet(16), 32, tmp_path, "patch")
    rng = np.random.default_rng(2)
    low = rng.integers(0, 256, size=(16, 4, 4, 3)).astype(np.uint8)
    images = np.stack([spec.prepare(np.kron(im, np.ones((8, 8, 1), np.uint8))) for im in low])
    result = convert_rknn(qdq, tmp_path / "p.rknn", spec, "rk3588", [], images, quantize=False)
    assert any("SpaceToDepth" in r for r in result.rewrites), result.rewrites
    reference = _run(qdq, np.stack([spec.normalize(im) for im in images]))
    centred = [o - o.mean(0) for o in (reference, result.outputs[0])]
    assert min(cosine_per_output([centred[0]], [centred[1]])) > 0.98
