"""The torch-free benchmark: timing statistics, ONNX Runtime bench, and no torch import."""

from __future__ import annotations

import itertools
import json
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
from edgecompress.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from edgecompress.runtime.onnxrt import bench_onnx


class ScriptedClock:
    """``time`` for the timing loop: the clock moves only when the timed function runs,
    by the durations scripted for it, so the statistics are exact on any machine."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.now_ns, self.durations = 0, itertools.cycle(durations_ms)

    def perf_counter_ns(self) -> int:
        return self.now_ns

    def call(self) -> None:
        self.now_ns += int(next(self.durations) * 1e6)


def test_time_loop_statistics_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.runtime import latency

    durations = [float(ms) for ms in range(1, 21)]  # 1..20 ms, in a scrambled order
    clock = ScriptedClock(durations[::2] + durations[1::2])
    monkeypatch.setattr(latency, "time", clock)
    stats = time_loop(clock.call, warmup=2, runs=20)
    assert stats.runs == 20 and stats.warmup == 2
    # The two warm-up calls used 1 and 3 ms; the timed ones are the next 20 of the cycle.
    timed = np.array([(durations[::2] + durations[1::2])[(2 + i) % 20] for i in range(20)])
    assert stats.p50_ms == pytest.approx(np.percentile(timed, 50))
    assert stats.p90_ms == pytest.approx(np.percentile(timed, 90))
    assert (stats.min_ms, stats.max_ms) == (1.0, 20.0)
    assert stats.mean_ms == pytest.approx(10.5) and stats.std_ms == pytest.approx(timed.std())
    assert stats.throughput_per_s == pytest.approx(1000.0 / 10.5)


def test_time_loop_on_the_real_clock_is_in_milliseconds() -> None:
    stats = time_loop(lambda: time.sleep(0.001), warmup=2, runs=20)
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.min_ms >= 1.0  # a 1 ms sleep never returns sooner (however loaded)
    assert stats.throughput_per_s == pytest.approx(1000.0 / stats.mean_ms)


def test_time_loop_honours_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.runtime import latency

    clock = ScriptedClock([10.0])
    monkeypatch.setattr(latency, "time", clock)
    stats = time_loop(clock.call, warmup=0, runs=5, min_time_s=0.2)
    assert stats.runs == 20, "5 runs asked, but 0.2 s of 10 ms calls is 20"
    with pytest.raises(ValueError, match="runs >= 1"):
        time_loop(lambda: None, runs=0)


def test_memory_readings_follow_an_allocation() -> None:
    import mmap

    before = current_rss_bytes()
    assert before is not None and before > 0
    # Fresh pages from the kernel, every one touched: a heap allocation could reuse memory
    # an earlier test freed and left resident, and then RSS would not move.
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\x01" * (64 * 2**20))
    peak = peak_rss_bytes()
    assert peak is not None and peak >= before + 60 * 2**20
    block.close()
    if reset_peak_rss():  # Linux: the mark drops back to about what is resident now
        assert peak_rss_bytes() < peak - 32 * 2**20


def _matmul_model(path: Path, x_shape: list[int | str] | None = None) -> Path:
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or ["batch", 64])],
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
    lat = res["latency"]
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert lat["throughput_per_s"] == pytest.approx(4 * 1000.0 / lat["mean_ms"])
    assert res["providers"] == ["CPUExecutionProvider"]
    assert 0 <= res["peak_rss_delta_bytes"] < 2**30  # a 8 KiB model: nowhere near 1 GiB
    json.dumps(res)  # the report stores it as is


def test_bench_onnx_symbolic_inner_dim_names_the_input(tmp_path: Path) -> None:
    path = _matmul_model(tmp_path / "dyn.onnx", ["batch", "features"])
    with pytest.raises(ModelLoadError, match=r"dyn\.onnx: input 'x' .*'features' at axis 1"):
        bench_onnx(path, runs=1, warmup=0)


def test_corrupt_onnx_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx: ONNX Runtime cannot load it"):
        bench_onnx(bad)
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: no such ONNX file"):
        bench_onnx(tmp_path / "missing.onnx")


def test_runtime_never_imports_torch(tmp_path: Path) -> None:
    # The board has numpy and the device runtime only: importing and running a bench
    # must not pull torch in, directly or through the package.
    model = _matmul_model(tmp_path / "mm.onnx")
    code = (
        "import sys, edgecompress.runtime.onnxrt, edgecompress.runtime.latency, "
        "edgecompress.runtime.memory; assert 'torch' not in sys.modules, 'torch imported'; "
        f"edgecompress.runtime.onnxrt.bench_onnx({str(model)!r}, runs=2, warmup=0); "
        "assert 'torch' not in sys.modules, 'torch imported by bench_onnx'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
