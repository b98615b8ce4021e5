"""The agent's TensorRT backend, where a CUDA device and the `tensorrt` package exist
(a lent GPU machine, a Jetson). Skipped with the reason elsewhere: there is no GPU to
run an engine on, and a fake would prove nothing about TensorRT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecompress.errors import ModelLoadError
from edgecompress.runtime.harness import BenchOptions, bench_artifact

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU on this machine")
    trt = pytest.importorskip("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(tiny_onnx.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    blob = builder.build_serialized_network(network, config)
    path = tmp_path_factory.mktemp("trt") / "tiny.engine"
    path.write_bytes(bytes(blob))
    return path


def test_engine_is_timed_on_the_gpu(engine: Path, tiny_onnx: Path) -> None:
    opts = BenchOptions(runs=100, warmup=10, min_time_s=0.5, sensors=(), onnx=tiny_onnx)
    res = bench_artifact(engine, "jetson-orin", "local", opts)
    assert res["runtime"] == "tensorrt" and res["latency"]["p50_ms"] > 0
    assert res["input_shapes"] and res["energy"]["analytic"]["precision"] == "fp16"


def test_a_corrupt_engine_is_refused_with_the_reason(engine: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.engine"
    bad.write_bytes(engine.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="rebuild it there"):
        bench_artifact(bad, "jetson-orin", "local", BenchOptions(sensors=()))
