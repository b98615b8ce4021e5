"""ONNX Runtime's profiler, folded per node: what a build says when INT8 is slower than
FP32 on the machine it runs on (issue #34: "the build says why (kernel, shape)")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecompress.deploy import Candidate
from edgecompress.errors import ModelLoadError
from edgecompress.runtime.op_profile import by_op, explain_slower, node_times

X = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX Runtime's own static PTQ of the tiny CNN (QDQ, per-channel int8 weights)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = ort.InferenceSession(str(tiny_onnx)).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.items = iter(
                {name: rng.standard_normal(X.shape).astype(np.float32)} for _ in range(8)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    quantize_static(
        str(tiny_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True
    )
    return out


def test_node_times_names_each_kernel_with_its_shape(tiny_onnx: Path, int8_onnx: Path) -> None:
    fp32 = node_times(tiny_onnx, X, runs=5)
    int8 = node_times(int8_onnx, X, runs=5)
    # the kernels ORT really ran: fused FP32 convolutions, quantized ones in the INT8 file
    assert any("Conv" in t.op for t in fp32) and not any(t.op == "QLinearConv" for t in fp32)
    assert any(t.op == "QLinearConv" for t in int8)
    assert all(t.us > 0 for t in fp32 + int8)
    assert [t.us for t in fp32] == sorted((t.us for t in fp32), reverse=True)
    first = next(t for t in int8 if t.op == "QLinearConv")
    assert "32" in first.shapes and "x" in first.shapes  # the activation's shape
    ops = by_op(int8)
    assert sum(ops.values()) == pytest.approx(sum(t.us for t in int8))


def test_explain_slower_reports_kernels_and_costliest_nodes(
    tiny_onnx: Path, int8_onnx: Path
) -> None:
    got = explain_slower(int8_onnx, tiny_onnx, X, runs=5)
    heavy = next(iter(got["by_op_us"]["slow"]))
    assert heavy in got["why"] and "costliest nodes" in got["why"]
    assert got["nodes"][0]["op"] in got["why"] and got["nodes"][0]["shapes"] in got["why"]
    assert got["kernel_ms"]["slow"] > 0 and got["kernel_ms"]["fast"] > 0


def test_a_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        node_times(bad, X)


def test_deploy_explains_only_an_int8_form_slower_than_fp32(
    tiny_onnx: Path, int8_onnx: Path
) -> None:
    """The deploy step's rule on the timings its bench measured (given here: which of the
    two files is faster on a shared 2-core machine is not a test's to decide)."""
    from edgecompress.stages.deploy_form import _int8_slower

    ctx = SimpleNamespace(
        data=SimpleNamespace(val_inputs=X),
        target=SimpleNamespace(graph_optimization="all"),
        options=SimpleNamespace(threads=1),
    )

    def forms(int8_ms: float, fp32_ms: float) -> list[Candidate]:
        return [
            Candidate("int8", "QAT int8", int8_onnx, "int8", int8_ms, 90.0, 0.3, built=True),
            Candidate("fp32", "FP32 04_merge", tiny_onnx, "fp32", fp32_ms, 90.0, 0.3),
        ]

    assert _int8_slower(ctx, forms(0.3, 0.5)) is None  # type: ignore[arg-type]
    got = _int8_slower(ctx, forms(0.6, 0.5))  # type: ignore[arg-type]
    assert got is not None
    assert got["ratio"] == pytest.approx(1.2)
    assert got["why"].startswith("QAT int8 1.20x the p50 of FP32 04_merge")
    assert "QLinearConv" in got["why"]
