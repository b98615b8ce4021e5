"""The deployed file is the fastest form timed in the build within the accuracy budget,
chosen on val; a goal build picks its attempt on val. Test accuracy is reported, never
read by a choice."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml

from edgecompress.cli import main
from edgecompress.deploy import TIE, Candidate, choose
from edgecompress.goals import Goals, assess

ARCH = "edgecompress.testing.models:tiny_cnn"


def _c(name: str, p50: float, top1: float, loss: float = 0.1, built: bool = False) -> Candidate:
    return Candidate(name, name, Path(f"{name}.onnx"), "int8", p50, top1, loss, built)


def test_the_fastest_form_within_the_budget_is_deployed() -> None:
    qat, ptq, fp32 = (
        _c("qat", 0.50, 98.0, built=True),
        _c("ptq", 0.30, 97.5),
        _c("fp32", 0.55, 98.5),
    )
    assert choose([qat, ptq, fp32], 98.5, max_drop=1.0).chosen is ptq
    # Outside the budget the faster form does not count.
    assert choose([qat, ptq, fp32], 98.5, max_drop=0.8).chosen is qat
    # Nothing within it: the most accurate on val, and the reason says so.
    none = choose([qat, ptq], 99.9, max_drop=0.5)
    assert none.chosen is qat and "most accurate on val" in none.why


def test_forms_as_fast_as_each_other_go_to_val_accuracy_then_loss_then_the_built_file() -> None:
    near = 0.30 * (1 + TIE / 2)
    qat, ptq = _c("qat", near, 98.0, built=True), _c("ptq", 0.30, 98.5)
    assert choose([qat, ptq], 98.5, max_drop=1.0).chosen is ptq  # same speed, better val
    qat, ptq = _c("qat", near, 98.5, 0.05, built=True), _c("ptq", 0.30, 98.5, 0.06)
    assert choose([qat, ptq], 98.5, max_drop=1.0).chosen is qat  # val top-1 tied: loss
    qat, ptq = _c("qat", near, 98.5, built=True), _c("ptq", 0.30, 98.5)
    assert choose([qat, ptq], 98.5, max_drop=1.0).chosen is qat  # all tied: as built


def test_a_goal_reads_val_not_test() -> None:
    data = {
        "target": {"runtime": "onnxruntime"},
        "models": [
            {"label": "original", "val_top1": 98.0, "top1": 97.0, "p50_ms": 1.0},
            {"label": "05_quantize", "quantized": True, "val_top1": 97.8, "top1": 90.0},
        ],
        "artifacts": {"onnx": {"path": "model.int8.onnx", "stage": "06_export_onnx"}},
        "accuracy": {"ort": {"top1": 90.0, "artifact": "onnx"}},
        "latency": {
            "onnx@host": {"artifact": "onnx", "measured": True, "device": "local", "p50_ms": 0.25}
        },
        "deployment": {"file": "model.int8.onnx", "form": "QAT", "why": "-", "val_top1": 97.8},
    }
    verdict = assess(data, Goals(speedup=3.0, max_accuracy_drop=1.0))
    # 7 test points lost, 0.2 on val: the choice reads val; test is only reported.
    assert verdict["met"] and verdict["accuracy_drop"] == pytest.approx(0.2)
    assert verdict["test_drop"] == pytest.approx(7.0) and verdict["speedup"] == pytest.approx(4.0)
    data["deployment"]["val_top1"] = 96.0
    assert assess(data, Goals(max_accuracy_drop=1.0))["broken"] == ["accuracy"]


def test_a_faster_fp32_form_takes_the_deployed_place(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the float model wins (a CPU whose INT8 kernels are slower), it becomes
    ``model.onnx`` and the INT8 file moves aside, every record following the files. The
    choice itself is forced here, as are INT8 timings slower than FP32 (as on an AVX2 CPU
    without VNNI) so the profiler explains it; the files, the profile and records are real."""
    import dataclasses

    import edgecompress.stages.deploy_form as deploy_form
    from edgecompress.deploy import Choice

    def fp32_wins(cands: list[Candidate], ref: float, max_drop: float) -> Choice:
        return Choice(next(c for c in cands if c.precision == "fp32"), "forced", tuple(cands))

    measured = deploy_form._candidates

    def int8_slower(*args: object) -> list[Candidate]:
        cands = measured(*args)  # type: ignore[arg-type]
        fp32 = min(c.p50_ms for c in cands if c.precision == "fp32")
        # the built file the fastest INT8 form, so the profiler reads the file that moves
        slow = {True: 2 * fp32, False: 3 * fp32}
        return [
            c if c.precision == "fp32" else dataclasses.replace(c, p50_ms=slow[c.built])
            for c in cands
        ]

    monkeypatch.setattr(deploy_form, "choose", fp32_wins)
    monkeypatch.setattr(deploy_form, "_candidates", int8_slower)
    model, data = tiny
    recipe = {
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
            {"name": "quantize", "rungs": [{"w_bits": 8, "epochs": 0}]},
            "export_onnx",
            {"name": "bench", "runs": 10, "min_time_s": 0.05, "warmup": 1, "rounds": 2},
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    argv = ["build", str(model), "--arch", ARCH, "--recipe", str(path), "--data", str(data)]
    assert main([*argv, "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    dep = report["deployment"]
    assert dep["file"] == "model.onnx" and dep["precision"] == "fp32"
    assert {c["form"] for c in dep["candidates"]} >= {"QAT int8", "PTQ int8"}
    slower = dep["int8_slower"]  # profiled before the INT8 file moved aside
    assert slower["int8"] == "QAT int8" and slower["ratio"] == pytest.approx(2)
    assert "INT8 is slower than FP32 here" in dep["why"]
    assert not (out / "model.int8.onnx").exists()
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and "Conv" in ops
    arts = report["artifacts"]
    assert arts["onnx_fp32"]["path"] == "model.onnx" and arts["onnx"]["deployed"] is False
    moved = out / arts["onnx"]["path"]
    assert moved.parent.name == "not_deployed" and moved.is_file()
    rows = {r["row"]: r for r in report["summary"]["rows"]}
    assert rows["model.onnx"]["deployed"] and rows["model.onnx"]["p50_ms"] > 0
    assert rows["model.onnx"]["top1"] is not None  # its test accuracy, reported
    assert not rows[arts["onnx"]["path"]]["deployed"]
