"""Goals on the command line: an accuracy goal that breaks makes the build back off
(prune less, recover longer), every attempt is recorded, the best is kept in out/ and the
build exits 1 when no attempt meets the goal; a goal that holds exits 0 after one try."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgecompress.cli import main

ARCH = "edgecompress.testing.models:tiny_cnn"
RECIPE = {
    "target": "host",
    "preprocess": {
        "input_size": [16, 16],
        "resize": "stretch",
        "mean": [0.3] * 3,
        "std": [0.3] * 3,
    },
    "data": {"calibration_images": 20},
    "stages": [
        "evaluate",
        {"name": "prune", "keep": 0.3, "align": False},
        {"name": "distill", "train": {"epochs": 1}},
        {"name": "quantize", "rungs": [{"w_bits": 8, "epochs": 1}]},
        "export_onnx",
        {"name": "bench", "runs": 20, "min_time_s": 0.1, "warmup": 2},
    ],
}


def _build(tiny: tuple[Path, Path], tmp_path: Path, *goals: str) -> tuple[int, Path]:
    model, data = tiny
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "out"
    args = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data", str(data)]
    return main([*args, "-o", str(out), "--quiet", *goals]), out


@pytest.mark.slow
def test_an_unmeetable_accuracy_goal_backs_off_and_exits_1(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A drop of at most -50 points (a gain of 50) cannot be met: every attempt is tried.
    code, out = _build(tiny, tmp_path, "--max-accuracy-drop", "-50", "--attempts", "2")
    assert code == 1
    goals = json.loads((out / "goals.json").read_text())
    first, second = goals["attempts"]
    assert first["keep"] == 0.3 and second["keep"] == pytest.approx(0.65)
    assert second["distill_epochs"] == 2 * first["distill_epochs"]
    assert not goals["met"] and all("accuracy" in a["broken"] for a in goals["attempts"])
    # The kept result is one of the attempts, whole: its report and its artifact.
    report = json.loads((out / "report.json").read_text())
    assert report["goals"]["chosen_attempt"] in (1, 2)
    deployed = report["deployment"]["file"]  # the INT8 file or, faster here, the FP32 form
    assert deployed in ("model.int8.onnx", "model.onnx") and (out / deployed).exists()
    chosen = out / "attempts" / str(report["goals"]["chosen_attempt"]) / deployed
    assert (out / deployed).read_bytes() == chosen.read_bytes()
    assert "NOT met by any attempt" in capsys.readouterr().out


@pytest.mark.slow
def test_a_goal_that_holds_exits_0_after_one_attempt(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    code, out = _build(tiny, tmp_path, "--max-accuracy-drop", "100")
    assert code == 0
    goals = json.loads((out / "goals.json").read_text())
    assert goals["met"] and len(goals["attempts"]) == 1


def test_a_speedup_goal_on_a_board_target_says_what_it_needs(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _build(tiny, tmp_path, "--target", "rk3588", "--speedup", "2")
    assert code == 2
    assert "--speedup on rk3588" in capsys.readouterr().err


@pytest.mark.slow
def test_a_speedup_goal_starts_where_the_measured_plan_predicts_the_goal_is_met(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """Before training, budgets are pruned and timed here (untrained: weights do not
    change latency); the first attempt starts at the first one predicted to reach the
    goal, or the smallest the allocation reaches."""
    code, out = _build(tiny, tmp_path, "--speedup", "1.1", "--attempts", "1")
    goals = json.loads((out / "goals.json").read_text())
    plan, first = goals["plan"], goals["attempts"][0]
    assert plan["tries"] and all(t["speedup"] > 0 for t in plan["tries"])
    assert [t["keep"] for t in plan["tries"]] == sorted(
        (t["keep"] for t in plan["tries"]), reverse=True
    )
    assert plan["tries"][0]["keep"] <= RECIPE["stages"][1]["keep"]  # never above the recipe's
    reached = [t for t in plan["tries"] if t["speedup"] >= 1.1 * 1.05]
    assert plan["reached"] == bool(reached) and plan["keep"] == plan["tries"][-1]["keep"]
    if reached:  # it stops at the first budget predicted to meet the goal
        assert reached == plan["tries"][-1:]
    assert first["keep"] == plan["keep"]
    assert code == (0 if first["met"] else 1)


def test_goals_are_an_argument_of_the_python_api(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """``ec.build(..., max_accuracy_drop=...)`` runs the goal attempts as the command line
    does (goals existed only on the command line, and ``cmd_build`` did not call
    ``ec.build``)."""
    import edgecompress as ec
    from edgecompress.stages.base import BuildOptions

    model, data = tiny
    stages = ["evaluate", "export_onnx", {"name": "bench", "runs": 5, "min_time_s": 0.05}]
    report = ec.build(model, data, recipe={**RECIPE, "stages": stages}, arch=ARCH,
                      out=tmp_path / "out", max_accuracy_drop=100.0, attempts=2,
                      options=BuildOptions(progress=False), log=lambda _m: None)  # fmt: skip
    assert report.data["goals"]["met"] and report.data["goals"]["max_accuracy_drop"] == 100.0
    assert len(report.data["goals"]["attempts"]) == 1
    assert (tmp_path / "out" / "attempts" / "1" / "report.json").exists()
