"""RKNN conversion and the RKNN simulator, for real: rknn-toolkit2 in its own environment
(`make test` creates it with `edgecompress setup rknn`; these tests fail, not skip, without it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.cli import main
from edgecompress.errors import EdgeCompressError, MissingToolchainError
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.exporters.rknn import convert_rknn, cosine_per_output
from edgecompress.exporters.rknn_env import find_rknn_python
from edgecompress.testing.models import tiny_cnn

pytestmark = pytest.mark.rknn

SPEC = PreprocessSpec(input_size=(32, 32), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = tiny_cnn().eval()
    path = tmp_path_factory.mktemp("rknn") / "tiny.onnx"
    export_onnx(net, torch.zeros(1, 3, 32, 32), path)
    return path


def _images(n: int, seed: int) -> np.ndarray:
    # Smooth random images (like photos, unlike white noise) so int8 ranges are realistic.
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    return np.stack([np.kron(im, np.ones((8, 8, 1))) for im in low]).astype(np.uint8)


@pytest.mark.parametrize("quantize, min_cos", [(True, 0.98), (False, 0.999)])
def test_simulator_matches_onnxruntime(
    onnx_model: Path, tmp_path: Path, quantize: bool, min_cos: float
) -> None:
    calib, evals = _images(32, 1), _images(16, 2)
    out = tmp_path / "tiny.rknn"
    result = convert_rknn(onnx_model, out, SPEC, "rk3588", list(calib), evals, quantize=quantize)
    assert out.exists() and out.stat().st_size == result.size_bytes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.rknn", "tiny.rknn.log"], (
        "temp files left"
    )
    reference = run_onnx(onnx_model, np.stack([SPEC.normalize(im) for im in evals]))
    cosines = cosine_per_output(reference, result.outputs)
    assert result.outputs[0].shape == (16, 10)
    assert min(cosines) > min_cos, f"simulator vs ONNX Runtime cosine {cosines}"


def test_missing_interpreter_says_how_to_fix(onnx_model: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingToolchainError, match="edgecompress setup rknn") as err:
        convert_rknn(
            onnx_model,
            tmp_path / "m.rknn",
            SPEC,
            "rk3588",
            list(_images(2, 0)),
            _images(1, 0),
            rknn_python="/nonexistent/python",
        )
    assert "/nonexistent/python" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_python_without_the_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_RKNN_PYTHON", sys.executable)  # the main env: no rknn
    with pytest.raises(
        MissingToolchainError, match=r"cannot import rknn-toolkit2.*edgecompress setup rknn"
    ):
        find_rknn_python()


def test_corrupt_onnx_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf graph" * 10)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(EdgeCompressError, match=r"bad\.onnx failed: rknn-toolkit2 load_onnx"):
        convert_rknn(bad, out_dir / "m.rknn", SPEC, "rk3588", list(_images(2, 0)), _images(1, 0))
    assert [p.name for p in out_dir.iterdir()] == ["m.rknn.log"], (
        "no .rknn or temporary file may remain"
    )


def test_rk3588_build_end_to_end(digits_example: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = digits_example
    out = tmp_path / "out"
    recipe = Path(__file__).parent.parent / "examples" / "digits.yaml"
    code = main(
        [
            "build",
            str(model),
            "--arch",
            "edgecompress.testing.models:digits_resnet",
            "--recipe",
            str(recipe),
            "--target",
            "rk3588",
            "--data",
            str(data),
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    acc = {k: v["top1"]["value"] for k, v in report["accuracy"].items()}
    assert set(acc) == {"pytorch", "onnxruntime", "rknn-simulator"}
    assert abs(acc["onnxruntime"] - acc["pytorch"]) <= 0.1
    assert abs(acc["rknn-simulator"] - acc["pytorch"]) <= 2.0
    assert report["parity"]["rknn"]["cosine[0]"]["value"] > 0.98
    assert report["artifacts"]["rknn"]["quantized"] is True
    assert (out / "model.rknn").stat().st_size == report["artifacts"]["rknn"]["size_bytes"]
    # An INT8 RKNN model is smaller than the FP32 ONNX one.
    assert report["artifacts"]["rknn"]["size_bytes"] < report["artifacts"]["onnx"]["size_bytes"]
    assert report["latency"]["rknn@rk3588"]["measured"] is False
    # The CI gate passes on this build with a 2-point budget.
    assert main(["check", str(out / "report.json"), "--max-accuracy-drop", "2"]) == 0
