"""Exporters are registered, and a target is a profile that names them: a target and an
exporter added here, in the test, build end to end with nothing else changed (the
recipe, the export stage, the bench stage's runtime and the goals' deployed file all read
the registry). The toy exporter is real: ONNX Runtime's own graph optimisation, saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.cli import main
from edgecompress.errors import ConfigError, ParityError
from edgecompress.exporters.registry import (
    EXPORTERS,
    ExporterSpec,
    register_exporter,
    unregister_exporter,
)
from edgecompress.goals import deployed_row
from edgecompress.recipe import Recipe, default_recipe
from edgecompress.runtime.backends import backend_for
from edgecompress.targets import TARGETS, TargetProfile, get_target, target_for_file

ARCH = "edgecompress.testing.models:tiny_cnn"


class OptimizedOnnxConfig(BaseModel):
    level: str = "extended"
    min_cosine: float = 0.9999


class OptimizedOnnx:
    """The latest ONNX file as ONNX Runtime optimises it (fused, constant-folded), saved:
    a file any ONNX Runtime loads without optimising again."""

    Config = OptimizedOnnxConfig

    def __init__(self, cfg: OptimizedOnnxConfig) -> None:
        self.cfg = cfg

    def export(self, model: Any, ctx: Any) -> Artifact:
        import onnxruntime as ort

        self.source = ctx.artifact(ArtifactKind.onnx, "onnx_opt")
        out = ctx.out_dir / "model.opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, f"ORT_ENABLE_{self.cfg.level.upper()}"
        )
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(self.source.path), opts, providers=["CPUExecutionProvider"])
        art = ctx.add_artifact("onnx_opt", ArtifactKind.onnx, "fp32", out)
        ctx.report.add_artifact(
            art.name,
            {"path": out.name, "precision": "fp32", "stage": art.stage, "source": "onnx"},
        )
        return art

    def verify(self, model: Any, artifact: Artifact, ctx: Any) -> dict[str, float]:
        from edgecompress.exporters.onnx import check_parity, parity_metrics, run_onnx
        from edgecompress.report.schema import metric

        x = ctx.data.test_inputs
        parity = parity_metrics(run_onnx(self.source.path, x), run_onnx(artifact.path, x))
        how = f"ONNX Runtime: {artifact.path.name} vs {self.source.path.name}"
        ctx.report.add_parity(artifact.name, {"cosine": metric(parity["cosine"], "", how)})
        check_parity(artifact.path.name, parity, max_abs_diff=None, min_cosine=self.cfg.min_cosine)
        return parity


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[TargetProfile]:
    """The exporter and a CPU target whose device runs its files, for this test only."""
    register_exporter(
        ExporterSpec(
            "onnx_opt",
            ArtifactKind.onnx,
            (".opt.onnx",),
            "onnxruntime",
            ("onnx",),
            OptimizedOnnx,
            doc="ONNX Runtime's optimised graph",
        )
    )
    profile = get_target("host").model_copy(
        update={"name": "toy-cpu", "exporters": ("onnx", "onnx_opt"), "description": "toy"}
    )
    profile = TargetProfile.model_validate(profile.model_dump())  # validated as a user's
    monkeypatch.setitem(TARGETS, "toy-cpu", profile)
    yield profile
    unregister_exporter("onnx_opt")


def test_a_target_and_exporter_added_in_a_test_build_end_to_end(
    toy: TargetProfile, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    assert toy.suffixes == (".opt.onnx",)
    stages = default_recipe("toy-cpu").stages
    assert [s.name for s in stages[-3:]] == ["export_onnx", "export", "bench"]
    assert stages[-2].config.model_dump() == {"exporters": ["onnx_opt"], "options": {}}
    model, data = tiny
    recipe = {
        "target": "toy-cpu",
        "preprocess": {"input_size": [16, 16], "resize": "stretch", "mean": [0.3] * 3,
                       "std": [0.3] * 3},
        "stages": [
            "evaluate",
            {"name": "export", "options": {"onnx_opt": {"level": "basic"}}},  # the profile's
            {"name": "bench", "runs": 10, "min_time_s": 0.05, "warmup": 1, "rounds": 1,
             "deploy": "as_built"},
        ],
    }  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    argv = ["build", str(model), "--arch", ARCH, "--recipe", str(path), "--data", str(data)]
    assert main([*argv, "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["path"] for a in report["artifacts"].values()] == ["model.onnx", "model.opt.onnx"]
    assert report["parity"]["onnx_opt"]["cosine"]["value"] > 0.9999
    assert report["latency"]["onnx_opt@host"]["measured"]
    assert report["latency"]["onnx_opt@host"]["p50_ms"] > 0
    # the file the toy device runs, told by its exporter's suffix whatever the row order
    for rows in (report["summary"]["rows"], report["summary"]["rows"][::-1]):
        row = deployed_row({**report, "summary": {**report["summary"], "rows": rows}})
        assert row is not None and row.artifact == "onnx_opt"
    assert backend_for(out / "model.opt.onnx") == "onnxruntime"
    assert target_for_file(out / "model.opt.onnx") == "host"  # the first profile that runs it


def test_an_exporter_that_fails_its_check_stops_the_build(
    toy: TargetProfile, tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(self: OptimizedOnnx, model: Any, ctx: Any) -> Artifact:
        art = real(self, model, ctx)
        import onnx

        graph = onnx.load(str(art.path))
        init = graph.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(-arr - 1, init.name))
        onnx.save(graph, str(art.path))
        return art

    real = OptimizedOnnx.export
    monkeypatch.setattr(OptimizedOnnx, "export", corrupt)
    model, data = tiny
    recipe = Recipe.from_dict(
        {
            "target": "toy-cpu",
            "preprocess": {"input_size": [16, 16], "resize": "stretch"},
            "stages": ["export"],
        }
    )
    from edgecompress.pipeline import BuildRequest, run_build
    from edgecompress.stages.base import BuildOptions

    req = BuildRequest(model, data, tmp_path / "out", recipe, arch=ARCH)
    with pytest.raises(ParityError, match=r"model\.opt\.onnx"):
        run_build(req, BuildOptions(progress=False), log=lambda _: None)


def test_recipes_name_only_registered_exporters_in_an_order_that_has_their_input(
    toy: TargetProfile,
) -> None:
    base = {"target": "toy-cpu", "preprocess": {"input_size": [16, 16]}}
    with pytest.raises(ConfigError, match=r"unknown exporter 'tflite'; known: .*onnx_opt"):
        Recipe.from_dict({**base, "stages": [{"name": "export", "exporters": ["tflite"]}]})
    with pytest.raises(ConfigError, match="exporter onnx_opt needs an onnx artifact"):
        Recipe.from_dict({**base, "stages": [{"name": "export", "exporters": ["onnx_opt"]}]})
    rknn = {**base, "target": "rk3588", "stages": [{"name": "export", "exporters": ["rknn"]}]}
    with pytest.raises(ConfigError, match="exporter rknn needs an onnx artifact"):
        Recipe.from_dict(rknn)
    assert [s.name for s in Recipe.from_dict({**rknn, "stages": ["export"]}).stages] == ["export"]
    opt = {"name": "export", "exporters": ["onnx_opt"]}
    ok = Recipe.from_dict({**base, "stages": ["export_onnx", opt]})
    assert [s.name for s in ok.stages] == ["export_onnx", "export"]


def test_a_profile_names_registered_exporters_and_the_maps_read_them() -> None:
    with pytest.raises(ValidationError, match=r"unknown exporter.*tflite.*registered: onnx"):
        get_target("host").model_validate(
            {**get_target("host").model_dump(), "exporters": ["onnx", "tflite"]}
        )
    assert [get_target(t).suffixes for t in ("host", "rk3588", "jetson-orin")] == [
        (".onnx",),
        (".rknn",),
        (".engine", ".plan"),
    ]
    assert [target_for_file(Path(f)) for f in ("m.int8.onnx", "m.rknn", "m.plan")] == [
        "host",
        "rk3588",
        "jetson-orin",
    ]
    with pytest.raises(ConfigError, match="no target runs such a file"):
        target_for_file(Path("m.tflite"))
    assert {EXPORTERS.get(n).runtime for n in EXPORTERS} == {"onnxruntime", "rknnlite", "tensorrt"}
    for name in EXPORTERS:  # each built-in's implementation has the protocol's two steps
        cls = EXPORTERS.get(name).load()
        assert callable(cls.export) and callable(cls.verify) and cls.Config is not None


def test_ec_export_makes_and_proves_files_through_the_registered_exporters(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """``ec.export`` ran its own ONNX/RKNN code with no parity check: it now runs the
    registered exporters a build runs, so a file that does not compute what the model does
    is refused, and rk3588 gets its RKNN proven in the simulator."""
    import numpy as np
    import torch

    import edgecompress as ec
    from edgecompress.calibration.preprocess import PreprocessSpec, read_image
    from edgecompress.testing.models import tiny_cnn

    state, data = tiny
    net = tiny_cnn().eval()
    net.load_state_dict(torch.load(state))
    spec = PreprocessSpec(input_size=(16, 16), resize="stretch", mean=(0.3,) * 3, std=(0.3,) * 3)
    files = sorted((data / "test").rglob("*.png"))[:12]
    images = [spec.prepare(read_image(p)) for p in files]
    x = torch.from_numpy(spec.normalize(images[0])[None])
    arts = ec.export(net, x, tmp_path / "rk", target="rk3588", spec=spec, images=images)
    assert [(a.kind.value, a.path.name) for a in arts] == [("onnx", "model.onnx"),
                                                         ("rknn", "model.rknn")]  # fmt: skip
    dead = tiny_cnn().eval()
    dead.load_state_dict(torch.load(state))
    with torch.no_grad():
        dead[8].weight.zero_()  # every input gives the head's bias
    calib = np.stack([spec.normalize(img) for img in images])
    with pytest.raises(ParityError, match="identical for every input"):
        ec.export(dead, x, tmp_path / "host", target="host", calibration=calib)
