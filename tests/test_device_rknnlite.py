"""The agent's rknn-toolkit-lite2 backend. There is no RK3588 NPU here, so
``rknnlite.api`` is tests/fakes/rknnlite (the real API's surface and core-mask values;
each inference holds its core for a few ms). These tests prove the agent's use of the
API (core masks, one runtime per core in the pipeline, input shapes, errors), not NPU
speed."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from edgecompress.errors import ConfigError, MissingToolchainError
from edgecompress.runtime.harness import BenchOptions, bench_artifact

FAKES = Path(__file__).parent / "fakes"
OPTS = BenchOptions(
    runs=30, warmup=2, min_time_s=0.5, sensors=(), python=sys.executable, inputs=((1, 32, 32, 3),)
)


@pytest.fixture()
def rknn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(FAKES))
    monkeypatch.setenv("FAKE_RKNN_LOG", str(tmp_path / "cores.log"))
    path = tmp_path / "model.rknn"
    path.write_bytes(b"RKNN" + bytes(64))
    return path


def _cores(rknn_file: Path) -> Counter[str]:
    return Counter((rknn_file.parent / "cores.log").read_text().split())


def test_single_core_mask_is_passed_to_the_runtime(rknn_file: Path) -> None:
    res = bench_artifact(rknn_file, "rk3588", "local", replace(OPTS, core_mask="1"))
    assert res["runtime"] == "rknnlite" and res["core_masks"] == ["NPU_CORE_1"]
    assert set(_cores(rknn_file)) == {"2"}  # NPU_CORE_1's real value
    assert res["latency"]["p50_ms"] >= 3.0
    assert res["energy"]["analytic"] is None and "--onnx" in res["energy"]["note"]


def test_three_core_pipeline_triples_throughput(
    rknn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 ms per inference: the agent's per-call Python work (which a loaded machine
    # slows) stays small beside the time a core is held, as it is beside a real NPU call.
    monkeypatch.setenv("FAKE_RKNN_MS", "20")
    one = bench_artifact(rknn_file, "rk3588", "local", replace(OPTS, core_mask="0"))
    three = bench_artifact(rknn_file, "rk3588", "local", replace(OPTS, parallel=3))
    assert three["workers"] == 3
    assert three["core_masks"] == ["NPU_CORE_0", "NPU_CORE_1", "NPU_CORE_2"]
    assert {"1", "2", "4"} <= set(_cores(rknn_file))
    ratio = three["latency"]["throughput_per_s"] / one["latency"]["throughput_per_s"]
    assert ratio > 2.2, f"three cores gave only {ratio:.2f}x the throughput of one"


def test_rknn_needs_an_input_shape(rknn_file: Path) -> None:
    with pytest.raises(ConfigError, match="--input-shape"):
        bench_artifact(rknn_file, "rk3588", "local", replace(OPTS, inputs=()))


def test_unknown_core_mask_is_rejected(rknn_file: Path) -> None:
    with pytest.raises(ConfigError, match="core_mask '5'"):
        bench_artifact(rknn_file, "rk3588", "local", replace(OPTS, core_mask="5"))


def test_missing_toolkit_lite_says_how_to_install(
    rknn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH")
    with pytest.raises(MissingToolchainError, match="rknn_toolkit_lite2"):
        bench_artifact(rknn_file, "rk3588", "local", OPTS)
