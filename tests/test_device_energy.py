"""Measured energy end to end: the agent samples a meter during the idle window and the
timed loop, and the host reads a meter of its own lined up by the agent's events. No
power meter is attached to this machine: tests/fakes/process_meter.py stands in for one
(a real subprocess printing ``epoch,watts`` lines that follow the CPU time of this test
process's children, the agent among them, so the figures do not depend on how busy
the machine is)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgecompress.errors import DeviceError
from edgecompress.runtime.harness import BenchOptions, bench_artifact

_METER_PY = str(Path(__file__).parent / "fakes" / "process_meter.py")
METER = f"command:{shlex.join([sys.executable, _METER_PY, str(os.getpid())])}"
OPTS = BenchOptions(runs=200, warmup=10, min_time_s=1.0, idle_s=0.8, sensors=(METER,))


def _check_measurement(m: dict, calls: int) -> None:
    assert m["kind"] == "command" and m["samples_idle"] >= 10 and m["samples_loop"] >= 10
    assert m["loop_power_w"] > m["idle_power_w"] >= 2.0, "the loop shows above the baseline"
    expected = (m["loop_power_w"] - m["idle_power_w"]) * m["loop_s"] / calls
    assert m["energy_per_inference_j"] == pytest.approx(expected, rel=0.05)


def test_meter_on_the_device_gives_measured_energy(tiny_onnx: Path) -> None:
    res = bench_artifact(tiny_onnx, "host", "local", OPTS)
    energy = res["energy"]
    assert energy["kind"] == "measured"
    _check_measurement(energy["measured"], res["calls"])
    assert energy["energy_per_inference_j"] == energy["measured"]["energy_per_inference_j"]
    # The analytic estimate is kept beside the measurement, for `energy fit`.
    assert energy["analytic"]["kind"] in ("analytic", "fitted")
    assert energy["analytic"]["energy_per_inference_j"] > 0


def test_meter_on_the_host_lines_up_by_events(tiny_onnx: Path) -> None:
    res = bench_artifact(
        tiny_onnx, "host", "local", replace(OPTS, sensors=(), host_sensors=(METER,))
    )
    m = res["energy"]["measured"]
    assert res["energy"]["kind"] == "measured" and m["where"].startswith("host")
    _check_measurement(m, res["calls"])


def test_no_sensor_falls_back_to_the_estimate_and_says_so(tiny_onnx: Path) -> None:
    res = bench_artifact(tiny_onnx, "host", "local", replace(OPTS, sensors=(), idle_s=0))
    assert res["energy"]["kind"] in ("analytic", "fitted") and res["energy"]["measured"] is None
    assert (
        res["energy"]["energy_per_inference_j"]
        == res["energy"]["analytic"]["energy_per_inference_j"]
    )


def test_a_named_sensor_that_is_absent_is_an_error(tiny_onnx: Path) -> None:
    with pytest.raises(DeviceError, match="tegrastats"):
        bench_artifact(tiny_onnx, "host", "local", replace(OPTS, sensors=("tegrastats",)))


def test_energy_fit_on_measured_runs_makes_later_estimates_fitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench --json with a meter on three models of different size -> energy fit ->
    energy estimate now says "fitted" and is closer to what was measured."""
    import json

    import torch

    from edgecompress.cli import main
    from edgecompress.testing.models import tiny_cnn

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    results = []
    for size in (32, 64, 96):
        onnx = tmp_path / f"tiny{size}.onnx"
        torch.onnx.export(
            tiny_cnn().eval(), (torch.randn(1, 3, size, size),), str(onnx), dynamo=False
        )
        out = tmp_path / f"tiny{size}.json"
        argv = ["bench", str(onnx), "--sensor", METER, "--runs", "100", "--min-time", "0.8"]
        assert main([*argv, "--idle-s", "0.6", "--json", str(out)]) == 0
        results.append(out)
        assert json.loads(out.read_text())["energy"]["kind"] == "measured"
    fit_file = tmp_path / "fit.json"
    assert main(["energy", "fit", *map(str, results), "--target", "host", "-o", str(fit_file)]) == 0
    fit = json.loads(fit_file.read_text())
    assert fit["target"] == "host" and len(fit["residuals"]) == 3
    assert fit["mean_abs_rel_error_fit"] <= fit["mean_abs_rel_error_table"]
    from edgecompress.runtime.energy_model import estimate_energy

    est = estimate_energy(tmp_path / "tiny64.onnx", "host", coefficients=fit_file)
    assert est["kind"] == "fitted"


def test_no_idle_window_keeps_the_latency_and_says_why(tiny_onnx: Path) -> None:
    res = bench_artifact(tiny_onnx, "host", "local", replace(OPTS, idle_s=0))
    assert res["complete"] and res["latency"]["p50_ms"] > 0
    assert res["energy"]["measured"] is None
    assert any("idle" in note for note in res["power_notes"])


def test_the_headline_sensor_is_a_primary_one() -> None:
    """A RAPL core subzone is counted inside its package: never the headline figure."""
    from edgecompress.runtime.harness import best_measurement

    core = {"sensor": "rapl:package-0/core", "kind": "rapl", "primary": False,
            "energy_per_inference_j": 1e-4}  # fmt: skip
    package = {"sensor": "rapl:package-0", "kind": "rapl", "primary": True,
               "energy_per_inference_j": 3e-4}  # fmt: skip
    assert best_measurement([core, package]) is package
