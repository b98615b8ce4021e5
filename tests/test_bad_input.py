"""Bad input gets a clear error and loses nothing: a model whose outputs do not depend on
its input fails parity, --force leaves a user's own files alone, a misspelt nested recipe
key is named with its fix, and a parity failure names the option to loosen (or says the
reference itself is unstable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgecompress.cli import main
from edgecompress.errors import ParityError
from edgecompress.exporters.onnx import check_parity, nudged_cosine, parity_metrics

ARCH = "edgecompress.testing.models:tiny_cnn"
PRE = {"input_size": [16, 16], "resize": "stretch", "mean": [0.3] * 3, "std": [0.3] * 3}


def _build(model: Path, data: Path, out: Path, stages: list, *extra: str) -> int:
    recipe = out.parent / "r.yaml"
    recipe.write_text(yaml.safe_dump({"target": "host", "preprocess": PRE, "stages": stages}))
    args = ["build", str(model), "--arch", ARCH, "--recipe", str(recipe), "--data", str(data)]
    return main([*args, "-o", str(out), "--quiet", *extra])


def _export_file(model: Path, data: Path, tmp_path: Path, pre: dict) -> dict:
    """The report of evaluate + export_onnx on a model file that needs no --arch."""
    import json

    recipe = tmp_path / "r.yaml"
    stages = ["evaluate", "export_onnx"]
    recipe.write_text(yaml.safe_dump({"target": "host", "preprocess": pre, "stages": stages}))
    out = tmp_path / "out"
    args = ["build", str(model), "--recipe", str(recipe), "--data", str(data), "-o", str(out)]
    assert main([*args, "--quiet"]) == 0
    return dict(json.loads((out / "report.json").read_text()))


def test_a_zero_initialised_head_fails_parity(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = tiny
    weights = torch.load(state, weights_only=True)
    weights["8.weight"].zero_()  # the classifier: every input gives its bias
    dead = tmp_path / "dead.pt"
    torch.save(weights, dead)
    assert _build(dead, data, tmp_path / "out", ["export_onnx"]) == 2
    assert "identical for every input" in capsys.readouterr().err
    # evaluate says so at once (it scored chance silently; prune then failed on a budget)
    assert _build(dead, data, tmp_path / "eval", ["evaluate"]) == 0
    assert "note: pytorch: the model's outputs are the same for every test image" in (
        capsys.readouterr().out
    )


def test_nan_outputs_fail_parity() -> None:
    x = torch.randn(4, 10).numpy()
    bad = x.copy()
    bad[0, 0] = float("nan")
    with pytest.raises(ParityError, match="NaN/inf"):
        check_parity("m", parity_metrics([x], [bad]), max_abs_diff=1.0, min_cosine=0.5)


def test_a_parity_failure_names_the_option_and_its_direction() -> None:
    x = torch.randn(8, 10).numpy()
    with pytest.raises(ParityError, match="lower min_cosine") as exc:
        check_parity(
            "model.rknn", parity_metrics([x], [-x]), max_abs_diff=None, min_cosine=0.98,
            options="export_rknn",
        )  # fmt: skip
    assert "export_rknn stage's options" in str(exc.value)


def test_a_reference_that_is_itself_unstable_is_named_as_the_cause() -> None:
    """Untrained weights under fake quantization can be chaotic: a random-weight
    torchvision inception_v3 (80x80, QAT W8) moved to cosine 0.96 against itself when its
    inputs moved by 1e-6, and its INT8 ONNX failed the 0.99 gate at 0.98 with a message
    that sent the user looking for exporter faults. sin(1e9 x) stands in for such a model
    here (any nudge scrambles it); a plain conv net is the sound case."""
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)

    def chaotic(a: np.ndarray) -> list[np.ndarray]:
        return [np.sin(a.reshape(len(a), -1)[:, :10].astype(np.float64) * 1e9)]

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    ).eval()

    def sound(a: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [net(torch.from_numpy(a)).numpy()]

    assert nudged_cosine(chaotic, x, chaotic(x)) < 0.5
    assert nudged_cosine(sound, x, sound(x)) > 0.99999
    wrong = parity_metrics(sound(x), [-sound(x)[0]])
    with pytest.raises(ParityError, match="itself unstable") as exc:
        check_parity(
            "model.int8.onnx", wrong, max_abs_diff=None, min_cosine=0.99,
            stability=lambda: nudged_cosine(chaotic, x, chaotic(x)),
        )  # fmt: skip
    assert "trained one" in str(exc.value) and "Look for ops" not in str(exc.value)
    with pytest.raises(ParityError, match="Look for ops") as exc:
        check_parity(
            "model.int8.onnx", wrong, max_abs_diff=None, min_cosine=0.99,
            stability=lambda: nudged_cosine(sound, x, sound(x)),
        )  # fmt: skip
    assert "unstable" not in str(exc.value)

    def never() -> float:
        raise AssertionError("the probe runs only when parity fails")

    same = parity_metrics(sound(x), sound(x))
    check_parity("model.onnx", same, max_abs_diff=1e-6, min_cosine=0.99, stability=never)


def test_force_removes_only_what_the_tool_wrote(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    state, data = tiny
    out = tmp_path / "out"
    assert _build(state, data, out, ["evaluate"]) == 0
    mine = out / "stages" / "my-notes.txt"
    mine.write_text("keep me")
    (out / "stages" / "my_folder").mkdir()
    assert _build(state, data, out, ["evaluate"]) == 2  # a build is there: refused
    assert _build(state, data, out, ["evaluate"], "--force") == 0
    assert mine.read_text() == "keep me" and (out / "stages" / "my_folder").is_dir()
    assert (out / "stages" / "01_evaluate" / "done.json").exists()


def test_a_misspelt_nested_recipe_key_is_named_with_its_fix(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = tiny
    stages = [{"name": "distill", "train": {"epoch": 2}}]
    assert _build(state, data, tmp_path / "out", stages) == 2
    err = capsys.readouterr().err
    assert "'train.epoch'" in err and "did you mean 'epochs'" in err


def test_a_folder_whose_classes_do_not_match_the_model_outputs_is_refused(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    state, data = tiny
    one_class = tmp_path / "one"
    for split in ("train", "val", "test"):
        shutil.copytree(data / split / "3", one_class / split / "3")
    assert _build(state, one_class, tmp_path / "out", ["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "10 outputs" in err and "1 class folder(s) (3)" in err
    assert "--classes" in err  # the way to score it anyway: name each output


def test_damaged_images_in_every_split_are_counted_and_named(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    import json
    import shutil

    state, data = tiny
    junk = tmp_path / "junk"
    shutil.copytree(data, junk)
    for split in ("train", "val", "test"):
        good = next((junk / split / "4").glob("*.png")).read_bytes()
        (junk / split / "4" / "cut.png").write_bytes(good[: len(good) // 2])
    (junk / "train" / "5" / "fake.png").write_text("not a png")
    out = tmp_path / "out"
    assert _build(state, junk, out, ["evaluate"]) == 0  # the test split alone is decoded
    info = json.loads((out / "report.json").read_text())["data"]
    assert info["skipped"] == 4
    reasons = "\n".join(info["skipped_examples"])
    assert reasons.count("truncated") == 3 and "not a PNG file" in reasons
    for split in ("train", "val", "test"):
        assert f"{split}/4/cut.png" in reasons


def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first build into a folder that holds someone's own model.onnx and report.json
    stops before it loads anything and changes neither; --force builds beside them and
    touches nothing the build does not write."""
    import onnx

    model, data = tiny
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the user's own model")
    (out / "report.json").write_text('{"release": "v3"}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _build(model, data, out, ["evaluate", "export_onnx"]) == 2
    err = capsys.readouterr().err
    assert "holds files this tool did not write (model.onnx, report.json)" in err
    assert "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "notes.txt").write_text("keep me")
    assert _build(model, data, out, ["evaluate", "export_onnx"], "--force") == 0
    assert (out / "notes.txt").read_text() == "keep me"
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))  # the build's file now


def test_a_torchscript_model_builds_without_a_stage_that_changes_it(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--stages evaluate,export_onnx,bench`` on a traced model (no prune to make it
    editable first): its MACs are counted and its ONNX proven like any other model's."""

    from edgecompress.testing.models import tiny_cnn

    state, data = tiny
    net = tiny_cnn()
    net.load_state_dict(torch.load(state))
    traced = tmp_path / "traced.ts"
    torch.jit.trace(net.eval(), torch.zeros(1, 3, 16, 16)).save(str(traced))
    report = _export_file(traced, data, tmp_path, PRE)
    assert report["models"][0]["macs"] > 0
    assert report["parity"]["onnx"]["cosine"]["value"] > 0.9999


def test_the_input_size_is_read_from_the_model_or_asked_for(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --input-size: a static ONNX file is built at its own 16x16 (not 224x224);
    a TorchScript file, which keeps no shape, is refused at once, naming --input-size."""
    import json
    import time

    from edgecompress.testing.models import tiny_cnn

    state, data = tiny
    net = tiny_cnn()
    net.load_state_dict(torch.load(state))
    static = tmp_path / "static.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, 16, 16),), str(static), dynamo=False)
    traced = tmp_path / "traced.ts"
    torch.jit.trace(net, torch.zeros(1, 3, 16, 16)).save(str(traced))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"target": "host", "stages": ["evaluate"]}))
    args = ["--recipe", str(recipe), "--data", str(data), "--mean", "0.3", "0.3", "0.3",
            "--std", "0.3", "0.3", "0.3", "--resize", "stretch"]  # fmt: skip
    out = tmp_path / "onnx"
    assert main(["build", str(static), *args, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preprocess"]["input_size"] == [16, 16]
    assert "input size 16x16, read from static.onnx" in capsys.readouterr().err
    t0 = time.monotonic()
    assert main(["build", str(traced), *args, "-o", str(tmp_path / "ts"), "--quiet"]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "traced.ts: which input size" in err and "--input-size H W" in err
    assert not (tmp_path / "ts").exists()


CONTROL_FLOW = """
from torch import nn


class Gated(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = self.conv2(self.conv(x).relu()).relu()
        if y.mean() > 0:
            y = y * 2
        return self.head(y.mean((2, 3)))
"""


def test_a_model_merge_cannot_trace_fails_before_any_training(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """merge after prune and ten epochs of distillation found the model untraceable at
    minute nineteen; it is found before the first epoch now, and says what to drop."""
    import json
    import time

    (tmp_path / "gated_net.py").write_text(CONTROL_FLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    import gated_net  # type: ignore[import-not-found]

    state = tmp_path / "gated.pth"
    torch.save(gated_net.Gated().state_dict(), state)
    _, data = tiny
    recipe = tmp_path / "r.yaml"
    stages = ["evaluate", "prune", {"name": "distill", "train": {"epochs": 10}}, "merge"]
    recipe.write_text(yaml.safe_dump({"target": "host", "preprocess": PRE, "stages": stages}))
    args = ["build", str(state), "--arch", "gated_net:Gated", "--recipe", str(recipe)]
    t0 = time.monotonic()
    assert main([*args, "--data", str(data), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "stage 4 (merge): torch.fx cannot trace Gated" in err
    assert "before any training" in err and not (tmp_path / "out" / "stages").exists()

    # Without merge the same model prunes: only the pruned.pt2 program, which torch.export
    # cannot capture from it, is left out, and the report says why.
    recipe.write_text(yaml.safe_dump({"target": "host", "preprocess": PRE,
                                      "stages": ["evaluate", "prune"]}))  # fmt: skip
    out = tmp_path / "pruned"
    assert main([*args, "--data", str(data), "-o", str(out), "--quiet"]) == 0
    pruning = json.loads((out / "report.json").read_text())["pruning"]
    assert pruning["model"] is None and not (out / "pruned.pt2").exists()
    assert "torch.export cannot capture the model" in pruning["model_not_saved"]
    assert pruning["macs"]["after"] < pruning["macs"]["before"]


class _Regroup(torch.nn.Module):
    """A classifier whose graph regroups channels with a batch-sized Reshape (Shape ->
    Concat in ONNX), as public ONNX classifiers with a dynamic batch are written."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).relu()
        y = y.reshape(y.shape[0], 2, -1).mean(2)
        return self.head(y)


def test_a_foreign_onnx_with_a_dynamic_batch_builds(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """Converted at batch 1, its reshape froze [1, 2, 1024] and evaluation at batch 60
    failed before any stage, with advice about pruning that could not help."""

    _, data = tiny
    path = tmp_path / "foreign.onnx"
    x = torch.zeros(1, 3, 16, 16)
    batch = {"x": {0: "batch"}}
    torch.onnx.export(_Regroup().eval(), (x,), str(path), input_names=["x"],
                      dynamic_axes=batch, dynamo=False)  # fmt: skip
    pre = {k: v for k, v in PRE.items() if k != "input_size"}  # 16x16 read from the file
    report = _export_file(path, data, tmp_path, pre)
    assert report["parity"]["onnx"]["cosine"]["value"] > 0.9999
    assert report["models"][0]["top1"]["value"] >= 0  # evaluated at the test split's batch


THIRDPARTY = Path(__file__).parent / "thirdparty"  # their_models.py: GreyNet, ...


@pytest.mark.parametrize("target", ["host", "rk3588"])
def test_a_greyscale_state_dict_with_an_int_size_factory_builds(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """A third party's one-channel net (its own module, ``input_size: int``, weights
    saved on a GPU): images are read as grey because its first layer takes one channel;
    before, every stage failed on "expected input[1, 3, 16, 16] to have 1 channels".
    Pruned, exported and (rk3588) converted with one mean/std value, each file proven."""
    import json

    monkeypatch.syspath_prepend(str(THIRDPARTY))
    import their_models  # type: ignore[import-not-found]

    _, data = tiny
    torch.manual_seed(0)
    path, tag = tmp_path / "grey.pth", torch.serialization.location_tag
    # Saved as from a GPU: every storage tagged cuda:0 (a plain torch.load fails here)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda _storage: "cuda:0")
    torch.save(their_models.GreyNet(16).state_dict(), path)
    monkeypatch.setattr(torch.serialization, "location_tag", tag)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path)
    stages = ["evaluate", {"name": "prune", "keep": 0.6}, "export_onnx"]
    stages += ["export_rknn"] if target == "rk3588" else []
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"target": target, "stages": stages}))
    out = tmp_path / "out"
    args = ["build", str(path), "--arch", "their_models:GreyNet", "--input-size", "16", "16"]
    args += ["--recipe", str(recipe), "--data", str(data), "-o", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preprocess"]["channels"] == 1
    assert report["preprocess"]["mean"] == [0.449]
    assert report["models"][-1]["macs"] < report["models"][0]["macs"]
    assert report["parity"]["onnx"]["cosine"]["value"] > 0.9999
    if target == "rk3588":
        assert report["parity"]["rknn"]["cosine[0]"]["value"] > 0.99


def test_a_grey_model_with_three_means_is_named(
    tiny: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(THIRDPARTY))
    import their_models

    _, data = tiny
    path = tmp_path / "grey.pth"
    torch.save(their_models.GreyNet(16).state_dict(), path)
    assert _build(path, data, tmp_path / "out", ["evaluate"], "--arch", "their_models:GreyNet") == 2
    assert "one (grey) input channel; preprocess: mean has 3 values" in capsys.readouterr().err


def test_a_build_stopped_by_sigterm_records_the_stage_it_stopped(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """A CI job's timeout sends SIGTERM: the report said nothing of the stage it stopped
    (it listed only the finished ones). Now that stage is "interrupted" with the signal,
    the finished ones stay, and the exit code is 143 (128 + SIGTERM)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    model, data = tiny
    recipe = tmp_path / "r.yaml"
    stages = ["evaluate", {"name": "distill", "train": {"epochs": 5000}}]
    recipe.write_text(yaml.safe_dump({"target": "host", "preprocess": PRE, "stages": stages}))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "edgecompress.cli", "build", str(model), "--arch", ARCH]
    argv += ["--recipe", str(recipe), "--data", str(data), "-o", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # wait for distill to start, however busy the machine is
        if "] distill" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    stages_done = {s["name"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    assert stages_done["evaluate"]["status"] == "done"
    assert stages_done["distill"]["status"] == "interrupted"
    assert "SIGTERM" in stages_done["distill"]["error"]
    assert "--resume" in stages_done["distill"]["error"]


@pytest.mark.parametrize(("arch", "target", "refused"), [
    ("CumMaxNet", "host", "export_onnx: torch.onnx"),
    ("UniqueNet", "rk3588", "export_rknn: RKNN conversion"),
])  # fmt: skip
def test_an_op_the_exporters_refuse_stops_the_build_before_training(
    tiny: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arch: str,
    target: str,
    refused: str,
) -> None:
    """ONNX export and the target's converter were first tried after training (20 min
    of distillation lost to an op neither takes): both are tried on the model as given
    before the first epoch, and the build stops there naming the op's stage."""
    monkeypatch.syspath_prepend(str(THIRDPARTY))
    import their_models  # type: ignore[import-not-found]

    _, data = tiny
    path = tmp_path / "net.pth"
    torch.save(getattr(their_models, arch)().state_dict(), path)
    stages = ["evaluate", {"name": "distill", "train": {"epochs": 20}}, "export_onnx"]
    stages += ["export_rknn"] if target == "rk3588" else []
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"target": target, "preprocess": PRE, "stages": stages}))
    out = tmp_path / "out"
    args = ["build", str(path), "--arch", f"their_models:{arch}", "--recipe", str(recipe)]
    assert main([*args, "--data", str(data), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert refused in err and "Found before any training" in err, err
    assert not (out / "stages").exists() or not list((out / "stages").glob("*distill*"))
