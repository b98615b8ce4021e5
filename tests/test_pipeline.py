"""`edgecompress build` end to end on the real digits example (host target), resume after
an interrupted build, and an output folder that is never clobbered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from edgecompress.cli import main
from edgecompress.errors import EdgeCompressError
from edgecompress.exporters.onnx import run_onnx
from edgecompress.model_io import load_model
from edgecompress.stages.base import STAGES, BuildContext, Stage, StageConfig, register_stage

ARCH = "edgecompress.testing.models:digits_resnet"
RECIPE = Path(__file__).parent.parent / "examples" / "digits.yaml"


def _build(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "build",
            str(model),
            "--arch",
            ARCH,
            "--recipe",
            str(RECIPE),
            "--data",
            str(data),
            "-o",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def test_light_build_with_chosen_stages(digits_example: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = digits_example
    out = tmp_path / "out"
    stages = "evaluate,export_onnx,bench"
    assert _build(model, data, out, "--target", "host", "--stages", stages) == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    torch_top1 = acc["pytorch"]["top1"]["value"]
    assert torch_top1 > 90.0, "the example model should have learned digits"
    assert abs(acc["onnxruntime"]["top1"]["value"] - torch_top1) <= 0.1
    assert acc["onnxruntime"]["agreement"]["value"] >= 99.5
    assert report["parity"]["onnx"]["max_abs_diff"]["value"] < 1e-3
    lat = report["latency"]["onnx@host"]
    assert lat["measured"] and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert report["artifacts"]["onnx"]["size_bytes"] == (out / "model.onnx").stat().st_size
    assert [s["name"] for s in report["stages"]] == ["evaluate", "export_onnx", "bench"]
    assert (out / "report.md").read_text().startswith("# edgecompress report")
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    # The artifact computes what the PyTorch model does on the same preprocessed image.
    spec_x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    net = load_model(model, ARCH).module
    with torch.no_grad():
        np.testing.assert_allclose(
            run_onnx(out / "model.onnx", spec_x)[0], net(torch.from_numpy(spec_x)), atol=1e-4
        )


def test_default_host_build_compresses_and_says_what_it_bought(
    digits_host_build: tuple[Path, str],
) -> None:
    out, printed = digits_host_build
    report = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names == ["evaluate", "prune", "distill", "merge", "quantize", "export_onnx", "bench"]
    rows = {r["row"]: r for r in report["summary"]["rows"]}
    original, final = rows["original"], rows["model.int8.onnx"]
    assert final["precision"] == "int8" and report["artifacts"]["onnx"]["integer_kernels"]
    assert final["macs"] <= 0.5 * original["macs"] * 1.02
    assert final["top1"] >= original["top1"] - 2.0
    # Every row was timed in this run; the numbers are the report's, shown to the user.
    assert all(rows[k]["p50_ms"] for k in ("original", "02_prune", "05_quantize"))
    assert final["speedup"] == pytest.approx(original["p50_ms"] / final["p50_ms"])
    assert "| original" in printed and "model.int8.onnx" in printed
    md = (out / "report.md").read_text()
    assert "## What compression bought" in md and "02_prune" in md
    # The deployed file is the fastest form timed here within a val point of the original
    # (the INT8 file, ONNX Runtime's PTQ, the FP32 model), and the summary says which.
    dep = report["deployment"]
    forms = {c["form"]: c for c in dep["candidates"]}
    assert len(forms) == 3 and (out / dep["file"]).is_file() and dep["file"] == "model.int8.onnx"
    within = [
        c for c in forms.values() if report["models"][0]["val_top1"]["value"] - c["val_top1"] <= 1
    ]
    assert dep["p50_ms"] <= min(c["p50_ms"] for c in within) * 1.05
    assert f"deployed: {dep['file']}" in printed


def test_output_folder_is_not_clobbered(
    digits_example: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = digits_example
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "stages: [evaluate]\n")
    args = [
        "build",
        str(model),
        "--arch",
        ARCH,
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    before = (out / "report.json").read_bytes()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before
    assert main([*args, "--force"]) == 0


def test_force_removes_the_files_the_previous_build_deployed(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    """A rebuild that deploys something else must not leave the old deployed file beside
    it to be shipped by mistake; files the tool did not write stay."""
    model, data = digits_example
    out = tmp_path / "out"
    args = ["build", str(model), "--arch", ARCH, "--data", str(data), "-o", str(out), "--quiet"]
    for stages in ("[export_onnx]", "[evaluate]"):
        recipe = tmp_path / f"r{len(stages)}.yaml"
        recipe.write_text(RECIPE.read_text() + f"stages: {stages}\n")
        if stages == "[export_onnx]":
            assert main([*args, "--recipe", str(recipe)]) == 0
            assert (out / "model.onnx").is_file()
            (out / "notes.txt").write_text("mine")
        else:
            assert main([*args, "--recipe", str(recipe), "--force"]) == 0
    assert not (out / "model.onnx").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["artifacts"] == {}


# --- resume: a model-changing stage, then a stage that fails once --------------------------


class _ScaleConfig(StageConfig):
    factor: float = 2.0


@register_stage
class _ScaleHead(Stage):
    """Test stage: scales the classifier so checkpoints visibly carry the changed model."""

    name = "test_scale_head"
    Config = _ScaleConfig
    changes_model = True
    calls: ClassVar[int] = 0

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        type(self).calls += 1
        with torch.no_grad():
            model.fc.weight.mul_(self.cfg.factor)  # type: ignore[attr-defined, union-attr, operator]
        return model


@register_stage
class _FailOnce(Stage):
    """Test stage: raises the first time, as a killed or crashed build would."""

    name = "test_fail_once"
    failed: ClassVar[bool] = False

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        if not type(self).failed:
            type(self).failed = True
            raise EdgeCompressError("simulated interruption")
        return model


def test_resume_continues_after_last_finished_stage(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    assert "test_scale_head" in STAGES
    model, data = digits_example
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        RECIPE.read_text() + "stages: [evaluate, test_scale_head, test_fail_once, export_onnx]\n"
    )
    out = tmp_path / "out"
    args = [
        "build",
        str(model),
        "--arch",
        ARCH,
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(args) == 2
    assert (out / "stages" / "02_test_scale_head" / "model.pt").exists()
    assert not (out / "stages" / "03_test_fail_once" / "done.json").exists()
    partial = json.loads((out / "report.json").read_text())
    assert partial["stages"][-1] == {
        **partial["stages"][-1],
        "name": "test_fail_once",
        "status": "failed",
    }
    calls = _ScaleHead.calls

    assert main([*args, "--resume"]) == 0
    assert _ScaleHead.calls == calls, "a finished stage ran again"
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "evaluate",
        "test_scale_head",
        "test_fail_once",
        "export_onnx",
    ]
    assert all(s["status"] == "done" for s in report["stages"])
    # The export is of the scaled model from the checkpoint, not of the original.
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    net = load_model(model, ARCH).module
    with torch.no_grad():
        original = net(torch.from_numpy(x)).numpy()
    exported = run_onnx(out / "model.onnx", x)[0]
    np.testing.assert_allclose(
        exported, original * 2.0 - net.fc.bias.detach().numpy(), rtol=1e-3, atol=1e-3
    )


def test_resume_may_drop_or_change_the_stages_after_the_last_finished_one(
    digits_example: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage that failed is dropped from the recipe and the build resumed: what
    finished is kept (not run again), the failed stage's folder goes, the rest runs."""
    model, data = digits_example
    recipe, out = tmp_path / "r.yaml", tmp_path / "out"
    recipe.write_text(RECIPE.read_text() + "stages: [evaluate, test_scale_head, test_fail_once]\n")
    args = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data", str(data)]
    args += ["-o", str(out), "--quiet"]
    monkeypatch.setattr(_FailOnce, "failed", False)
    assert main(args) == 2
    calls = _ScaleHead.calls
    recipe.write_text(RECIPE.read_text() + "stages: [evaluate, test_scale_head, export_onnx]\n")
    assert main([*args, "--resume"]) == 0
    assert _ScaleHead.calls == calls, "a finished stage ran again"
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["evaluate", "test_scale_head", "export_onnx"]
    assert sorted(p.name for p in (out / "stages").iterdir()) == [
        "01_evaluate", "02_test_scale_head", "03_export_onnx"
    ]  # fmt: skip
    # An option changed at stage 2: it runs again, stage 1 does not.
    recipe.write_text(
        RECIPE.read_text()
        + "stages: [evaluate, {name: test_scale_head, factor: 3.0}, export_onnx]\n"
    )
    assert main([*args, "--resume"]) == 0
    assert _ScaleHead.calls == calls + 1


def test_resume_refuses_changed_inputs(
    digits_example: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = digits_example
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "stages: [evaluate]\n")
    args = [
        "build",
        str(model),
        "--arch",
        ARCH,
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    recipe.write_text(
        RECIPE.read_text().replace("calibration_images: 100", "calibration_images: 50")
        + "stages: [evaluate]\n"
    )
    assert main([*args, "--resume"]) == 2
    assert "different model, data, preprocessing or measured target" in capsys.readouterr().err


def test_junk_in_the_image_folder_is_reported(
    digits_example: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = digits_example
    junk = tmp_path / "digits"
    shutil.copytree(data, junk)
    (junk / "test" / "3" / "notes.txt").write_text("not an image")
    (junk / "test" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "stages: [evaluate]\n")
    assert (
        main(
            [
                "build",
                str(model),
                "--arch",
                ARCH,
                "--recipe",
                str(recipe),
                "--data",
                str(junk),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    info = json.loads((out / "report.json").read_text())["data"]
    assert info["skipped"] == 2
    assert any("notes.txt" in s for s in info["skipped_examples"])
    assert any("broken.png" in s for s in info["skipped_examples"])
    # and on the console, not only in report.json
    assert "note: 2 file(s) in the data folder were skipped" in capsys.readouterr().out
    # report.md names the split every accuracy was scored on, not only train and val
    md = (out / "report.md").read_text()
    assert f"/ {info['test']} test images (every accuracy above is on {info['test_images']} " in md


@register_stage
class _Damage(Stage):
    """Test stage: adds noise to every weight, as a lossy compression step would."""

    name = "test_damage"
    changes_model = True

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from edgecompress.testing.ddp_fit import damaged_copy

        return damaged_copy(model, scale=0.5)


@pytest.mark.slow
def test_distill_stage_recovers_against_the_model_before_the_change(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = digits_example
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        RECIPE.read_text()
        + "stages:\n  - evaluate\n  - test_damage\n  - name: distill\n"
        + "    train: {epochs: 2, lr: 0.01, losses: [{name: ce}, {name: kd, temperature: 4}]}\n"
        + "  - name: evaluate\n    label: pytorch-recovered\n  - export_onnx\n"
    )
    out = tmp_path / "out"
    args = [
        "build",
        str(model),
        "--arch",
        ARCH,
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    rec = report["recovery"]["03_distill"]
    before, after = rec["before"]["top1"]["value"], rec["after"]["top1"]["value"]
    assert after > before + 5, (before, after)
    assert rec["epochs_run"] == 2 and len(rec["history"]) == 2
    # The teacher was the model before the damage: the recovered model agrees with it.
    assert report["accuracy"]["pytorch-recovered"]["agreement"]["value"] > 90
    assert (out / "stages" / "03_distill" / "model.pt").exists()
    # The exported model is the recovered one.
    assert report["accuracy"]["onnxruntime"]["top1"]["value"] == pytest.approx(
        report["accuracy"]["pytorch-recovered"]["top1"]["value"], abs=0.1
    )


def test_distill_recipe_typo_inside_train_is_named(
    digits_example: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = digits_example
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "stages:\n  - name: distill\n    train: {epoch: 2}\n")
    assert (
        main(
            [
                "build",
                str(model),
                "--arch",
                ARCH,
                "--recipe",
                str(recipe),
                "--data",
                str(data),
                "-o",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "train.epoch" in capsys.readouterr().err


@pytest.mark.slow
def test_build_benches_every_artifact_on_every_given_device(
    digits_example: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phone over adb (tests/fakes/adb: no phone can be attached here, the fake replays
    adb and runs the agent on this machine) and an ssh host that does not answer: the
    build measures what it can reach and reports the other, without failing."""
    import socket
    import sys

    fakes = Path(__file__).parent / "fakes"
    (tmp_path / "phone" / "data" / "local" / "tmp").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{fakes}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path / "phone"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    model, data = digits_example
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        RECIPE.read_text()
        + "stages:\n  - evaluate\n  - export_onnx\n  - name: bench\n    runs: 20\n"
        "    min_time_s: 0.1\n"
    )
    code = main(
        [
            "build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--target",
            "android-arm64", "--data", str(data), "-o", str(out), "--quiet",
            "--device", "adb://FAKE0123", "--device", f"ssh://nobody@127.0.0.1:{port}",
            "--device-python", sys.executable,
        ]
    )  # fmt: skip
    assert code == 0
    lat = json.loads((out / "report.json").read_text())["latency"]
    phone = lat["onnx@adb://FAKE0123"]
    assert phone["measured"] and phone["p50_ms"] > 0 and phone["runs"] >= 20
    assert phone["energy"]["kind"] in ("analytic", "fitted")
    assert phone["energy"]["energy_per_inference_j"] > 0
    host = lat["onnx@host"]
    assert host["measured"] and host["energy"]["energy_per_inference_j"] > 0
    lost = lat[f"onnx@ssh://nobody@127.0.0.1:{port}"]
    assert not lost["measured"] and "unreachable" in lost["reason"]
    md = (out / "report.md").read_text()
    assert "mJ/inference (analytic" in md or "mJ/inference (fitted" in md


@pytest.mark.slow
def test_seed_moves_every_training_step_and_the_same_seed_rebuilds_the_same_model(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    """`--seed N` reaches the QAT ladder's training (a user measuring a spread runs a few
    seeds); the test split does not move with it, and one seed rebuilds bit for bit."""
    model, data = digits_example
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        RECIPE.read_text()
        + "stages:\n  - evaluate\n  - name: quantize\n"
        + "    rungs: [{w_bits: 8, epochs: 1}]\n    ptq: null\n"
    )

    def built(seed: int, name: str) -> tuple[dict[str, torch.Tensor], dict]:
        out = tmp_path / name
        args = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data"]
        assert main([*args, str(data), "-o", str(out), "--quiet", "--seed", str(seed)]) == 0
        saved = yaml.safe_load((out / "recipe.yaml").read_text())
        stages = {s["name"]: s for s in saved["stages"]}
        assert stages["quantize"]["seed"] == seed
        assert saved["data"]["seed"] == 0, "the split and calibration pick stay on data.seed"
        report = json.loads((out / "report.json").read_text())
        weights = torch.load(out / "stages" / "02_quantize" / "model.pt", weights_only=False)
        return weights.state_dict(), report

    one, r1 = built(1, "s1")
    again, _ = built(1, "s1_again")
    two, r2 = built(2, "s2")
    # The same test images: the original model scores the same on them in both builds.
    assert r1["data"]["split"] == r2["data"]["split"] and r1["data"]["test"] == r2["data"]["test"]
    assert r1["accuracy"]["pytorch"]["top1"] == r2["accuracy"]["pytorch"]["top1"]
    assert all(torch.equal(one[k], again[k]) for k in one), "same seed, different model"
    moved = [k for k in one if one[k].is_floating_point() and not torch.equal(one[k], two[k])]
    assert moved, "another seed trained the same weights"
