"""Stages compose: every ordering of the model-changing stages either builds (and its
last export computes what the final PyTorch model does) or is refused before anything
runs with an error that says what to move; a stage may appear twice; an export after
quantize exports the QAT model; the default recipe is the whole pipeline."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from edgecompress.cli import main
from edgecompress.errors import ConfigError
from edgecompress.recipe import Recipe, default_recipe
from edgecompress.stages import STAGES

ARCH = "edgecompress.testing.models:tiny_cnn"
CHANGING = ("prune", "distill", "merge", "quantize")
FAST = {
    "prune": {"keep": 0.6, "align": False},
    "distill": {"train": {"epochs": 1}},
    "quantize": {"rungs": [{"w_bits": 8, "epochs": 1}]},
}
PRE = {"input_size": [16, 16], "resize": "stretch", "mean": [0.3] * 3, "std": [0.3] * 3}


def _recipe(stages: list[str], target: str = "host") -> dict:
    return {
        "target": target,
        "preprocess": PRE,
        "data": {"calibration_images": 20},
        "stages": [{"name": s, **FAST.get(s, {})} for s in stages],
    }


def _valid(stages: list[str]) -> bool:
    q = stages.index("quantize") if "quantize" in stages else len(stages)
    return all(stages.index(s) < q for s in ("prune", "merge") if s in stages)


def _build(tiny: tuple[Path, Path], stages: list[str], out: Path, target: str = "host") -> dict:
    import yaml

    model, data = tiny
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(stages, target)))
    args = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data", str(data)]
    assert main([*args, "-o", str(out), "--quiet"]) == 0
    return json.loads((out / "report.json").read_text())


ORDERS = [list(p) for p in itertools.permutations(CHANGING)]


@pytest.mark.parametrize("order", [o for o in ORDERS if not _valid(o)], ids="-".join)
def test_an_ordering_that_cannot_work_is_refused_before_anything_runs(order: list[str]) -> None:
    with pytest.raises(ConfigError, match="move it before quantize"):
        Recipe.from_dict(_recipe([*order, "export_onnx"]))


@pytest.mark.parametrize("order", [o for o in ORDERS if _valid(o)], ids="-".join)
@pytest.mark.slow
def test_every_valid_ordering_builds_and_exports_its_final_model(
    order: list[str], tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    report = _build(tiny, [*order, "export_onnx"], tmp_path / "out")
    art = report["artifacts"]["onnx"]
    # The export stage exported the model it was given: the QAT model as INT8 QDQ.
    assert art["precision"] == "int8" and art["integer_kernels"] is True
    assert report["parity"]["onnx"]["cosine"]["value"] >= 0.99
    rows = report["summary"]["rows"]
    assert next(r["row"] for r in rows if r["kind"] == "model") == "original"
    assert len([r for r in rows if r["kind"] == "model"]) == 1 + len(order)
    macs = {r["row"]: r["macs"] for r in rows if r["kind"] == "model"}
    assert min(macs.values()) < macs["original"], "pruning removed MACs"


def test_a_stage_twice_keeps_its_own_folder_and_section(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    stages = ["export_onnx", "prune", "distill", "merge", "distill", "quantize", "export_onnx"]
    out = tmp_path / "out"
    report = _build(tiny, stages, out)
    folders = sorted(p.name for p in (out / "stages").iterdir())
    assert folders[:2] == ["01_export_onnx", "02_prune"] and "05_distill" in folders
    arts = report["artifacts"]
    # The first export is the float original, the second the QAT model; both kept.
    assert arts["onnx"]["precision"] == "fp32" and arts["onnx"]["stage"] == "01_export_onnx"
    assert arts["onnx_2"]["precision"] == "int8" and arts["onnx_2"]["stage"] == "07_export_onnx"
    assert (out / "model.onnx").exists() and (out / "model.int8.onnx").exists()
    assert report["accuracy"]["onnxruntime"]["artifact"]["value"] == "onnx"
    assert report["accuracy"]["onnxruntime-int8"]["artifact"]["value"] == "onnx_2"


def test_a_stage_that_needs_a_missing_artifact_names_the_stage_that_makes_it() -> None:
    with pytest.raises(ConfigError, match=r"export_rknn.*needs an onnx artifact.*'export_onnx'"):
        Recipe.from_dict(_recipe(["quantize", "export_rknn"], target="rk3588"))


def test_the_default_recipe_is_the_whole_pipeline() -> None:
    for target in ("host", "rk3588"):
        names = [s.name for s in default_recipe(target).stages]
        assert names[:5] == ["evaluate", "prune", "distill", "merge", "quantize"]
        assert names[-1] == "bench"
    assert [s.name for s in default_recipe("rk3588").stages][5:7] == ["export_onnx", "export_rknn"]
    assert set(STAGES.names()) >= {"evaluate", "prune", "distill", "merge", "quantize"}


@pytest.mark.rknn
@pytest.mark.slow
def test_rknn_after_quantize_takes_over_the_qat_ranges(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    report = _build(
        tiny, ["prune", "quantize", "export_onnx", "export_rknn"], tmp_path / "o", "rk3588"
    )
    rknn = report["artifacts"]["rknn"]
    assert rknn["source"] == "onnx" and rknn["precision"] == "int8"
    assert rknn["ranges"].startswith("from the QDQ model")
    assert min(v["value"] for v in report["parity"]["rknn"].values()) >= 0.98


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "pickle", "onnx"])
@pytest.mark.slow
def test_every_model_format_is_compressed_by_build(
    fmt: str, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """The formats a user ships, not only a state_dict: each becomes an editable module
    before any training, then is pruned, quantized and exported."""
    import yaml

    from edgecompress.testing.models import tiny_cnn

    state, data = tiny
    model = tiny_cnn().eval()
    model.load_state_dict(torch.load(state, weights_only=True))
    example = torch.randn(1, 3, 16, 16)
    path = tmp_path / f"model.{fmt}"
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, example), str(path))
    elif fmt == "pt2":
        torch.export.save(torch.export.export(model, (example,)), str(path))
    elif fmt == "pickle":
        torch.save(model, path)
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(["evaluate", "prune", "quantize", "export_onnx"])))
    out = tmp_path / "out"
    args = ["build", str(path), "--recipe", str(recipe), "--data", str(data), "-o", str(out)]
    assert main([*args, "--quiet", "--trust-pickle"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["format"] == ("state_dict" if fmt == "state_dict" else fmt)
    rows = {r["row"]: r for r in report["summary"]["rows"]}
    assert rows["02_prune"]["macs"] < rows["original"]["macs"]
    assert report["artifacts"]["onnx"]["precision"] == "int8"
    # The original's accuracy is the given model's: conversion changed nothing it computes.
    acc = report["accuracy"]["pytorch"]["top1"]["value"]
    assert acc == pytest.approx(rows["original"]["top1"])
