"""A recipe typo names the bad key and the valid ones; defaults follow the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.errors import ConfigError
from edgecompress.recipe import Recipe, default_recipe, load_recipe
from edgecompress.targets import TARGETS


@pytest.mark.parametrize("target", ["host", "rk3588", "android-arm64"])
def test_default_recipe_is_the_pipeline_and_exports_what_the_target_runs(target: str) -> None:
    recipe = default_recipe(target)
    names = [s.name for s in recipe.stages]
    exports = [f"export_{e}" for e in TARGETS[target].exporters]
    assert names == ["evaluate", "prune", "distill", "merge", "quantize", *exports, "bench"]
    defaults = TARGETS[target].defaults
    prune = recipe.stages[1].config
    assert prune.keep == defaults.keep and prune.align  # type: ignore[attr-defined]


def test_a_seed_reaches_every_training_step_and_leaves_the_data_split_alone() -> None:
    from edgecompress.distill.config import FitConfig

    recipe = default_recipe("rk3588").with_seed(7)
    trained = [
        (s.name, field, value.seed)
        for s in recipe.stages
        for field, value in s.config
        if isinstance(value, FitConfig)
    ]
    # prune's (iterative) recovery, distill's training and merge's recovery
    assert {(n, f) for n, f, _ in trained} == {
        ("prune", "recovery"),
        ("distill", "train"),
        ("merge", "recovery"),
    }
    assert all(seed == 7 for *_, seed in trained)
    quantize = next(s.config for s in recipe.stages if s.name == "quantize")
    assert quantize.seed == 7  # type: ignore[attr-defined]
    assert recipe.data.seed == 0 and recipe.data == default_recipe("rk3588").data
    # Everything else is the target's default.
    assert recipe.with_seed(0).to_dict() == default_recipe("rk3588").to_dict()


def test_jetson_defaults_end_in_the_engine_and_a_missing_exporter_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [s.name for s in default_recipe("jetson-orin").stages]
    assert names[-3:] == ["export_onnx", "export_tensorrt", "bench"] and "quantize" in names
    # a target naming an exporter nobody registered: the default recipe must not skip it
    from edgecompress.targets import TARGETS

    toy = TARGETS["host"].model_copy(update={"name": "toy", "exporters": ("onnx", "coreml")})
    monkeypatch.setitem(TARGETS, "toy", toy)
    with pytest.raises(ConfigError, match="unknown exporter 'coreml'; known: onnx, rknn"):
        default_recipe("toy")


def test_roundtrip_through_yaml(tmp_path: Path) -> None:
    raw = {
        "target": "rk3588",
        "preprocess": {"input_size": [32, 32], "resize": "stretch"},
        "data": {"classes": ["tench", "goldfish"]},
        "stages": ["evaluate", {"name": "export_onnx", "max_abs_diff": 1e-4}, "export_rknn"],
    }
    recipe = Recipe.from_dict(raw)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again == recipe
    assert again.stages[1].config.max_abs_diff == 1e-4  # type: ignore[attr-defined]
    assert again.preprocess.input_size == (32, 32)
    assert again.data.classes == ("tench", "goldfish")


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"target": "rk3588", "stage": []},
            r"unknown key 'stage' \(did you mean 'stages'\?\); valid keys: target",
        ),
        ({"target": "rk3589"}, r"unknown target 'rk3589'; known targets: host, rk3588"),
        (
            {"target": "host", "stages": ["evalute"]},
            r"stages\[0\]: unknown stage 'evalute' \(did you mean 'evaluate'\?\)",
        ),
        (
            {"target": "host", "stages": [{"name": "export_onnx", "max_abs_dif": 1}]},
            r"stages\[0\] \(export_onnx\): unknown key 'max_abs_dif' "
            r"\(did you mean 'max_abs_diff'\?\); valid keys: .*opset",
        ),
        (
            {"target": "host", "preprocess": {"input_size": [0, 32]}},
            r"preprocess: input_size.*positive",
        ),
        ({"target": "host", "preprocess": {"resize": "squash"}}, r"preprocess: resize.*'squash'"),
        ({"target": "host", "data": {"calibration_images": 0}}, r"data: calibration_images"),
        (
            {"target": "host", "data": {"classes": ["cat", "dog", "cat"]}},
            r"data: classes: .*\['cat'\] appear more than once",
        ),
        ({"target": "host", "stages": []}, r"non-empty list"),
        ({"preprocess": {}}, r"no 'target'"),
        (["evaluate"], r"expected a mapping"),
    ],
)
def test_errors_name_the_problem(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(raw, "recipe.yaml")


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("target: host\nstages: [evaluate\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: not valid YAML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")
