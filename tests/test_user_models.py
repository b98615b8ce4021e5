"""Models users bring, each written the way a third party writes it (its own module and
file, not this package's helpers), through the default build (every default stage, no
recipe) with no flags beyond ``--target``, ``--data`` and what the file cannot say
(``--arch`` for a state_dict, ``--input-size`` where the model records none): it builds,
or it stops before any training with a message that names the fix."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.cli import main

pytestmark = pytest.mark.slow

THIRDPARTY = Path(__file__).parent / "thirdparty"


class _Flatten(nn.Module):
    """Exported with a dynamic batch: its flatten is Shape -> Gather -> Concat -> Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x).relu()).relu()
        return self.fc(x.view(x.size(0), -1))


def _build(model: Path, data: Path, out: Path, *flags: str) -> tuple[int, dict]:
    argv = ["build", str(model), "--target", "host", "--data", str(data), "-o", str(out)]
    code = main([*argv, "--quiet", *flags])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.exists() else {}


def _stages(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report.get("stages", [])}


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(THIRDPARTY))
    import their_models  # type: ignore[import-not-found]

    return their_models


DEFAULT = {"evaluate", "prune", "distill", "merge", "quantize", "export_onnx", "bench"}


def test_an_onnx_with_a_dynamic_batch_and_a_shape_concat_flatten_builds(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = tiny
    path = tmp_path / "theirs.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, batch = torch.zeros(1, 3, 16, 16), {"x": {0: "n"}}
        torch.onnx.export(_Flatten().eval(), (x,), str(path), input_names=["x"],
                          dynamic_axes=batch, dynamo=False)  # fmt: skip
    code, report = _build(path, data, tmp_path / "out")  # 16x16 read from the file
    assert code == 0 and set(_stages(report)) == DEFAULT
    assert report["models"][-1]["macs"] < report["models"][0]["macs"]


def test_a_grey_state_dict_saved_on_a_gpu_with_an_int_size_factory_builds(
    tiny: tuple[Path, Path], tmp_path: Path, third_party, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = tiny
    path, tag = tmp_path / "grey.pth", torch.serialization.location_tag
    monkeypatch.setattr(torch.serialization, "location_tag", lambda _storage: "cuda:0")
    torch.save(third_party.GreyNet(16).state_dict(), path)  # as saved on a GPU
    monkeypatch.setattr(torch.serialization, "location_tag", tag)
    code, report = _build(path, data, tmp_path / "out", "--arch", "their_models:GreyNet",
                          "--input-size", "16", "16")  # fmt: skip
    assert code == 0 and set(_stages(report)) == DEFAULT
    assert report["preprocess"]["channels"] == 1
    assert report["models"][-1]["macs"] < report["models"][0]["macs"]


def test_a_model_with_control_flow_stops_before_any_training_naming_each_fix(
    tiny: tuple[Path, Path], tmp_path: Path, third_party, capsys: pytest.CaptureFixture[str]
) -> None:
    """merge needs torch.fx, and torch.onnx's default (dynamo) exporter needs torch.export:
    neither takes data-dependent control flow. Each is named, with its fix, before the
    first epoch (the export one was found after prune and ten epochs of distillation)."""
    _, data = tiny
    path = tmp_path / "gated.pth"
    torch.save(third_party.Gated().state_dict(), path)
    flags = ("--arch", "their_models:Gated", "--input-size", "16", "16")
    code, _ = _build(path, data, tmp_path / "out", *flags)
    assert code == 2 and not (tmp_path / "out" / "stages").exists()
    assert "leave merge out of the recipe (or --stages)" in capsys.readouterr().err
    stages = "evaluate,prune,distill,quantize,export_onnx,bench"  # the fix it names
    code, _ = _build(path, data, tmp_path / "out2", *flags, "--stages", stages)
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out2" / "stages").exists()
    assert "try `exporter: torchscript` in the export_onnx stage" in err
    assert "Found before any training" in err


def test_a_torchscript_traced_at_32x32_builds_at_its_size(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data = tiny
    path = tmp_path / "traced.pt"
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net.eval(), torch.zeros(1, 3, 32, 32)).save(str(path))
    code, _ = _build(path, data, tmp_path / "refused")  # a TorchScript file keeps no shape
    assert code == 2 and "pass --input-size H W" in capsys.readouterr().err
    code, report = _build(path, data, tmp_path / "out", "--input-size", "32", "32")
    assert code == 0 and set(_stages(report)) == DEFAULT
    assert report["preprocess"]["input_size"] == [32, 32]
