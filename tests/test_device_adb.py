"""Benchmarks over adb. No phone can be attached here, so `adb` is tests/fakes/adb: it
replays adb's messages and exit statuses and runs the pushed agent on this machine with
/data/local/tmp mapped to a temporary folder. What these tests prove is the transport's
handling of adb (push, shell quoting, offline and unplugged devices), not a phone."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgecompress.errors import ConfigError, DeviceError
from edgecompress.runtime.harness import BenchOptions, DeviceDisconnected, bench_artifact

FAKES = Path(__file__).parent / "fakes"
OPTS = BenchOptions(runs=20, warmup=2, min_time_s=0.2, sensors=(), python=sys.executable)


@pytest.fixture()
def adb_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "phone"
    (root / "data" / "local" / "tmp").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{FAKES}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    return root


def test_bench_over_adb_pushes_runs_and_cleans_up(adb_root: Path, tiny_onnx: Path) -> None:
    res = bench_artifact(tiny_onnx, "android-arm64", "adb://FAKE0123", OPTS)
    assert res["complete"] and res["calls"] >= 20 and res["latency"]["p50_ms"] > 0
    assert res["device_info"]["agent_file"].startswith("/data/local/tmp/edgecompress.")
    calls = (adb_root / "calls.log").read_text().splitlines()
    assert all(c.startswith("-s FAKE0123 ") for c in calls)  # every call names the device
    assert any(" push " in c and c.endswith("/artifact/tiny.onnx") for c in calls)
    assert list((adb_root / "data/local/tmp").iterdir()) == [], "working folder removed"


def test_offline_device_is_a_clear_error(
    adb_root: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ADB_MODE", "offline")
    with pytest.raises(DeviceError, match=r"adb://FAKE0123.*device offline"):
        bench_artifact(tiny_onnx, "android-arm64", "adb://FAKE0123", OPTS)


def test_wrong_serial_names_it(adb_root: Path, tiny_onnx: Path) -> None:
    with pytest.raises(DeviceError, match="device 'OTHER' not found"):
        bench_artifact(tiny_onnx, "android-arm64", "adb://OTHER", OPTS)


def test_unplugged_mid_run_keeps_the_samples(
    adb_root: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ADB_MODE", "unplugged")
    opts = replace(OPTS, runs=10**9, min_time_s=30)
    with pytest.raises(DeviceDisconnected, match="connection to the device was lost") as err:
        bench_artifact(tiny_onnx, "android-arm64", "adb://FAKE0123", opts)
    assert err.value.partial["calls_received"] > 0
    assert err.value.partial["latency"]["p50_ms"] > 0


def test_serial_that_could_inject_is_rejected(adb_root: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="serial"):
        bench_artifact(tiny_onnx, "android-arm64", "adb://-H;reboot", OPTS)


def test_cli_writes_the_partial_run_when_the_phone_is_unplugged(
    adb_root: Path, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from edgecompress.cli import main

    monkeypatch.setenv("FAKE_ADB_MODE", "unplugged")
    out = tmp_path / "phone.json"
    argv = ["bench", str(tiny_onnx), "--device", "adb://FAKE0123", "--python", sys.executable]
    argv += ["--sensor", "none", "--runs", "1000000000", "--min-time", "30", "--json", str(out)]
    assert main(argv) == 2
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and saved["device"] == "adb://FAKE0123"
    assert saved["calls_received"] > 0 and saved["latency"]["p50_ms"] > 0


def test_a_file_made_on_the_phone_comes_back_and_a_missing_one_is_named(
    adb_root: Path, tmp_path: Path
) -> None:
    from edgecompress.errors import DeviceError
    from edgecompress.runtime.transports import parse_device

    transport = parse_device("adb://FAKE0123")
    job = tmp_path / "job"
    job.mkdir()
    (job / "model.engine").write_bytes(b"\x00engine\xff" * 1000)
    remote = transport.stage(job, timeout_s=30)
    try:
        transport.fetch(f"{remote}/model.engine", tmp_path / "back.engine", timeout_s=30)
        assert (tmp_path / "back.engine").read_bytes() == b"\x00engine\xff" * 1000
        with pytest.raises(DeviceError, match=r"missing\.engine.*No such file"):
            transport.fetch(f"{remote}/missing.engine", tmp_path / "no.engine", timeout_s=30)
    finally:
        transport.cleanup(remote, timeout_s=30)
