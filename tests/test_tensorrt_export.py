"""`build --target jetson-orin`: the engine is built by trtexec on the board the build
names and copied back with trtexec's timing; without a board, the ONNX file and the line
that says how to build the engine. There is no GPU or Jetson here: the board is this
machine (``--device local``) with tests/fakes/trtexec.py as its trtexec, which reads the
real ONNX file, refuses what TensorRT refuses (asymmetric Q/DQ, an op it has no importer
for) and prints trtexec 10.3's log format. These tests prove the build's use of trtexec
(arguments, copying back, parsing, errors), not TensorRT."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.exporters.tensorrt import parse_trtexec, trtexec_args

FAKE = Path(__file__).parent / "fakes" / "trtexec.py"
ARCH = "edgecompress.testing.models:digits_resnet"
PREPROCESS = (
    "preprocess: {input_size: [32, 32], resize: stretch, mean: [0.305, 0.305, 0.305],"
    " std: [0.324, 0.324, 0.324]}\n"
)


@pytest.fixture()
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on PATH holding `trtexec` (the fake); nothing else named trtexec."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "trtexec"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return bin_dir


def _build(
    digits_example: tuple[Path, Path], tmp_path: Path, stages: str, *extra: str
) -> tuple[int, Path]:
    model, data = digits_example
    recipe = tmp_path / "jetson.yaml"
    recipe.write_text(f"target: jetson-orin\n{PREPROCESS}stages: {stages}\n")
    out = tmp_path / "out"
    argv = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data", str(data)]
    return main([*argv, "-o", str(out), "--quiet", *extra]), out


def test_the_engine_is_built_on_the_board_and_timed_there(
    digits_example: tuple[Path, Path], tmp_path: Path, board: Path
) -> None:
    code, out = _build(
        digits_example, tmp_path, "[evaluate, export_onnx, export_tensorrt]", "--device", "local"
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    engine = report["artifacts"]["tensorrt"]
    assert engine["path"] == "model.engine" and (out / "model.engine").is_file()
    assert (out / "model.engine").read_bytes().startswith(b"ftrt")  # what the board wrote
    assert engine["command"] == "trtexec " + " ".join(
        trtexec_args("model.onnx", "model.engine", "fp16")
    )
    assert engine["exporter"] == "trtexec (TensorRT 10.3.0) on local" and engine["device"] == "Orin"
    (lat,) = [v for v in report["latency"].values() if v["artifact"] == "tensorrt"]
    assert lat["p50_ms"] == pytest.approx(0.339844) and lat["measured"] is True
    assert lat["gpu_compute_ms"]["median"] == pytest.approx(0.312256)
    assert report["tensorrt"] == {"built": True, "where": "local", "artifact": "tensorrt"}


def test_a_qat_model_goes_to_tensorrt_as_symmetric_explicit_quantization(
    digits_example: tuple[Path, Path], tmp_path: Path, board: Path
) -> None:
    """jetson-orin's QDQ file has int8 activations with zero point 0: the fake refuses
    anything else, as TensorRT does; the engine is built with --int8 --fp16."""
    stages = "[evaluate, {name: quantize, rungs: [{w_bits: 8, epochs: 1}]}, export_onnx, "
    stages += "export_tensorrt]"
    code, out = _build(digits_example, tmp_path, stages, "--device", "local")
    assert code == 0
    engine = json.loads((out / "report.json").read_text())["artifacts"]["tensorrt"]
    assert engine["precision"] == "int8" and "--int8 --fp16" in engine["command"]


def test_without_a_board_the_build_keeps_the_onnx_and_says_how(
    digits_example: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no trtexec here
    code, out = _build(digits_example, tmp_path, "[evaluate, export_onnx, export_tensorrt]")
    assert code == 0
    assert not (out / "model.engine").exists() and (out / "model.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    how = report["tensorrt"]["how"]
    assert report["tensorrt"]["built"] is False
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --fp16" in how
    assert "--device ssh://" in how
    assert f"tensorrt: {how}" in report["summary"]["notes"]


def test_an_op_tensorrt_cannot_import_fails_the_build_naming_it_and_leaves_no_engine(
    digits_example: tuple[Path, Path],
    tmp_path: Path,
    board: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "Add")  # the residual adds
    code, out = _build(
        digits_example, tmp_path, "[evaluate, export_onnx, export_tensorrt]", "--device", "local"
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "model.onnx: TensorRT could not build an engine on local" in err
    assert "No importer registered for op: Add" in err
    assert not list(out.glob("*.engine")) and not list(out.glob(".*engine*"))


def test_trtexec_logs_of_tensorrt_8_parse_too() -> None:
    """TensorRT 8.6's summary (a desktop GPU), as trtexec prints it."""
    log = """&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=m.onnx
[03/28/2024-07:10:12] [I] Selected Device: NVIDIA GeForce RTX 2080
[03/28/2024-07:10:12] [I] TensorRT version: 8.6.1
[06/26/2023-11:30:51] [I] === Performance summary ===
[06/26/2023-11:30:51] [I] Throughput: 234.19 qps
[06/26/2023-11:30:51] [I] Latency: min = 4.27838 ms, max = 5.82495 ms, mean = 4.29966 ms, median = 4.29718 ms, percentile(90%) = 4.30725 ms, percentile(95%) = 4.31128 ms, percentile(99%) = 4.32874 ms
[06/26/2023-11:30:51] [I] GPU Compute Time: min = 4.2 ms, max = 5.7 ms, mean = 4.24 ms, median = 4.24 ms, percentile(99%) = 4.3 ms
"""  # noqa: E501
    got = parse_trtexec(log)
    assert got["tensorrt"] == "8.6.1" and got["device"] == "NVIDIA GeForce RTX 2080"
    assert got["throughput_qps"] == pytest.approx(234.19)
    assert got["latency_ms"]["median"] == pytest.approx(4.29718)
    assert got["latency_ms"]["p99"] == pytest.approx(4.32874)
    assert got["gpu_compute_ms"]["min"] == pytest.approx(4.2)
    no_version_line = parse_trtexec("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # x")
    assert no_version_line["tensorrt"] == "10.2.0"
