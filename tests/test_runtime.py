"""The torch-free benchmark: timing statistics, ONNX Runtime bench, and no torch import."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.errors import ModelLoadError
from edgecompress.runtime.latency import time_loop
from edgecompress.runtime.onnxrt import bench_onnx


def test_time_loop_statistics_are_consistent() -> None:
    stats = time_loop(lambda: time.sleep(0.001), warmup=2, runs=20)
    assert stats.runs == 20 and stats.warmup == 2
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert 1.0 <= stats.p50_ms < 50.0
    assert stats.throughput_per_s == pytest.approx(1000.0 / stats.mean_ms)


def test_time_loop_honours_the_time_budget() -> None:
    start = time.perf_counter()
    stats = time_loop(lambda: None, warmup=0, runs=5, min_time_s=0.2)
    assert time.perf_counter() - start >= 0.2 and stats.runs > 5


def _matmul_model(path: Path) -> Path:
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [w],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        str(path),
    )
    return path


def test_bench_onnx_reports_what_it_measured(tmp_path: Path) -> None:
    res = bench_onnx(_matmul_model(tmp_path / "mm.onnx"), runs=30, warmup=3, batch=4)
    assert res["runtime"] == "onnxruntime" and res["threads"] == 1
    assert res["input_shapes"] == {"x": [4, 64]}
    assert res["latency"]["runs"] == 30 and res["latency"]["p50_ms"] > 0
    assert res["peak_rss_bytes"] > 0 and res["load_ms"] > 0
    assert res["model_size_bytes"] == (tmp_path / "mm.onnx").stat().st_size


def test_corrupt_onnx_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx: ONNX Runtime cannot load it"):
        bench_onnx(bad)


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys, edgecompress.runtime.onnxrt, edgecompress.runtime.latency, "
        "edgecompress.runtime.memory; assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
