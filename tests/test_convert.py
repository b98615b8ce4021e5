"""`edgecompress convert`: a model with dynamic dimensions fixed from --input-shape,
simplified, exported for the target and checked against ONNX Runtime; `bench
--input-shape` on ONNX files with dynamic dimensions; the PP-OCR models of issue 15."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecompress.cli import main
from edgecompress.convert import ort_outputs


@pytest.fixture(scope="module")
def dynamic_onnx(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny CNN exported with a dynamic batch, height and width."""
    import torch

    from edgecompress.testing.models import tiny_cnn

    model = tiny_cnn().eval()
    model.load_state_dict(torch.load(tiny[0]))
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
    )
    return path


def _dims(path: Path) -> list[int | str]:
    value = onnx.load(str(path)).graph.input[0]
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


MIN_COSINE = {"det": 0.9, "cls": 0.99, "rec": 0.95}
PRE = ["--mean", "0.3", "0.3", "0.3", "--std", "0.3", "0.3", "0.3", "--resize", "stretch"]


def test_convert_for_host_fixes_the_shape_and_matches_the_original(
    dynamic_onnx: Path, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["convert", str(dynamic_onnx), "--target", "host", "-o", str(out), "--quiet"]
    argv += ["--input-shape", "images=1x3x16x16", "--data", str(tiny[1]), *PRE]
    assert main(argv) == 0
    assert _dims(dynamic_onnx) == ["batch", 3, "height", "width"]
    assert _dims(out / "model.onnx") == [1, 3, 16, 16]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    fixed, original = (
        ort_outputs(p, [{"images": x}])[0] for p in (out / "model.onnx", dynamic_onnx)
    )
    np.testing.assert_allclose(fixed, original, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert set(report["artifacts"]) == {"onnx", "onnx_int8"}
    assert report["artifacts"]["onnx_int8"]["precision"] == "int8"
    assert "test split" in report["convert"]["inputs"]
    assert report["parity"]["onnx"]["max_abs_diff[0]"]["value"] < 1e-5
    assert report["parity"]["onnx_int8"]["cosine[0]"]["value"] > 0.99
    assert report["latency"]["onnx@host"]["p50_ms"] > 0
    assert report["latency"]["onnx_int8@host"]["measured"]
    assert (out / "report.md").exists() and (out / "report.html").exists()


def test_convert_with_a_labelled_folder_reports_top1_that_check_can_budget(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    """A class folder as --data: the original and every artifact are scored on its whole
    test split (every top-1 was "-", so `check` refused the report), and report.md's data
    line names the split that was scored."""
    import torch

    from edgecompress.testing.models import digits_resnet

    state, data = digits_example
    model = digits_resnet().eval()
    model.load_state_dict(torch.load(state))
    path = tmp_path / "digits.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    out = tmp_path / "out"
    argv = ["convert", str(path), "--target", "host", "-o", str(out), "--quiet", "--data"]
    argv += [str(data), "--resize", "stretch", "--mean", *["0.305"] * 3, "--std", *["0.324"] * 3]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["fixed_inputs"] == {"x": [1, 3, 32, 32]}  # a dynamic batch: 1
    original, n = report["models"][0], report["data"]["test_images"]
    assert original["label"] == "original" and original["samples"]["value"] == n
    assert original["top1"]["value"] > 90  # the trained digits ResNet on its test split
    for runtime, artifact in (("onnxruntime", "onnx"), ("onnxruntime-int8", "onnx_int8")):
        acc = report["accuracy"][runtime]
        assert acc["artifact"]["value"] == artifact and acc["samples"]["value"] == n
        assert abs(acc["top1"]["value"] - original["top1"]["value"]) <= 3
    rows = {r["row"]: r for r in report["summary"]["rows"]}
    assert rows["model.onnx"]["top1"] == report["accuracy"]["onnxruntime"]["top1"]["value"]
    assert rows["model.int8.onnx"]["top1_change"] is not None
    assert f"{n} test" in (out / "report.md").read_text()
    budget = tmp_path / "budget.yaml"
    budget.write_text("default:\n  max_accuracy_drop: 3.0\n  min_parity_cosine: 0.99\n")
    assert main(["check", str(out / "report.json"), "--budget", str(budget)]) == 0


def test_a_dynamic_dimension_without_a_shape_is_an_error_that_shows_the_flag(
    dynamic_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["convert", str(dynamic_onnx), "--target", "host", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "input 'images' has dynamic dimension(s) 0 (batch), 2 (height), 3 (width)" in err
    assert "--input-shape images=1x3xHxW" in err
    assert not (out / "model.onnx").exists()
    # A shape that contradicts a fixed dim, and a name the model does not have.
    bad = ["convert", str(dynamic_onnx), "--target", "host", "-o", str(out), "--no-bench"]
    assert main([*bad, "--input-shape", "1x4x16x16"]) == 2
    assert "dimension 1 is fixed at 3 in the model" in capsys.readouterr().err
    assert main([*bad, "--input-shape", "pixels=1x3x16x16"]) == 2
    assert "no input named 'pixels'; its inputs: images" in capsys.readouterr().err


def test_convert_without_data_checks_on_random_inputs_and_says_so(
    dynamic_onnx: Path, tmp_path: Path
) -> None:
    import edgecompress as ec

    report = ec.convert(
        dynamic_onnx, "android-arm64", tmp_path, input_shapes={"": (2, 3, 24, 24)}
    ).data
    assert _dims(tmp_path / "model.onnx") == [2, 3, 24, 24]
    assert set(report["artifacts"]) == {"onnx"}  # no INT8 without calibration images
    assert "seeded random" in report["convert"]["inputs"]
    assert any("--data" in n for n in report["summary"]["notes"])
    assert report["model"]["inputs"] == {"images": ["batch", 3, "height", "width"]}


def test_bench_honours_input_shape_for_onnx(
    dynamic_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", str(dynamic_onnx), "--runs", "20", "--warmup", "2", "--min-time", "0"]
    argv += ["--sensor", "none"]
    assert main([*argv, "--input-shape", "images=2x3x24x40", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["input_shapes"] == {"images": [2, 3, 24, 40]}
    assert res["latency"]["p50_ms"] > 0 and res["items_per_call"] == 2
    capsys.readouterr()
    assert main(argv) == 2  # height and width have no default
    err = capsys.readouterr().err
    assert "input 'images' has a dynamic dimension 'height' at axis 2" in err
    assert "--input-shape images=1x3xNxN" in err


@pytest.mark.rknn
def test_convert_for_rk3588_gives_an_rknn_that_matches_in_the_simulator(
    dynamic_onnx: Path, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    argv = ["convert", str(dynamic_onnx), "--target", "rk3588", "-o", str(tmp_path), "--quiet"]
    argv += ["--input-shape", "images=1x3x16x16", "--data", str(tiny[1]), "--no-bench", *PRE]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["artifacts"]["rknn"]["precision"] == "int8"
    assert (tmp_path / "model.rknn").stat().st_size > 0
    assert report["parity"]["rknn"]["cosine[0]"]["value"] >= 0.98
    assert "onnx_int8" not in report["artifacts"]  # an NPU target gets its own INT8


@pytest.mark.slow
@pytest.mark.rknn
def test_ppocr_models_convert_for_rk3588_and_bench(tmp_path: Path) -> None:
    from benchmarks.convert import HOW_TO_GET, find_wheel, ppocr

    if find_wheel() is None:
        pytest.skip(f"the rapidocr-onnxruntime wheel is absent (.ci/run gets it): {HOW_TO_GET}")
    # min/max calibration: minutes faster than the benchmark's mmse (det 0.943, rec 0.978).
    rows = {r["label"]: r for r in ppocr(tmp_path, eval_images=4, runs=10, algorithm="normal")}
    assert set(rows) == {"det", "cls", "rec"}
    for label, r in rows.items():
        assert r["convert_exit"] == 0 and r["bench_exit"] == 0, r
        assert r["onnx_cosine"] > 0.9999, r
        assert r["rknn_cosine"] >= MIN_COSINE[label], r
        assert r["bench_p50_ms"] > 0 and r["bench_input_shapes"] == {"x": list(r["shape"])}


@pytest.mark.slow
def test_ppocr_direction_classifier_is_compressed_by_build(tmp_path: Path) -> None:
    """A public ONNX classifier (dynamic batch and H/W, hard-swish as Div, softmax
    outputs) through the default build on labelled text lines: pruned, distilled, merged
    and quantized, its top-1 on the test split before and after in the report."""
    from benchmarks.convert import HOW_TO_GET, find_wheel
    from benchmarks.ppocr_build import compress

    if find_wheel() is None:
        pytest.skip(f"the rapidocr-onnxruntime wheel is absent (.ci/run gets it): {HOW_TO_GET}")
    r = compress(tmp_path, images=600)
    assert r["exit"] == 0, r
    assert {"prune", "distill", "merge", "quantize"} <= set(r["stages"]), r
    assert r["after_macs"] < 0.75 * r["before_macs"], r
    assert r["qat_top1"] is not None and r["after_top1"] >= r["before_top1"] - 1.0, r
