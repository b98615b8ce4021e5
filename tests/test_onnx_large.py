"""Models whose weights pass protobuf's 2 GiB limit (ViT-H/14, RegNetY-128GF) export with
their weights in one external data file beside the graph, as torch.onnx and ONNX Runtime
expect, and the timing that pruning does works on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.exporters import onnx_shapes
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.timing import onnx_latencies_ms


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_model_past_the_limit_is_written_with_its_weights_beside_it(
    exporter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit lowered to 4 KiB, so a small model takes the large-model path.
    monkeypatch.setattr(onnx_shapes, "PROTOBUF_LIMIT", 4096)
    model, x = _cnn(), torch.randn(4, 3, 16, 16)
    out = tmp_path / "model.onnx"
    res = export_onnx(model, x[:1], out, exporter=exporter)
    data = tmp_path / "model.onnx.data"
    assert data.stat().st_size > 8 * out.stat().st_size
    assert res.size_bytes == out.stat().st_size + data.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    got = run_onnx(out, x.numpy())[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    # The same model written again under the normal limit is one file again.
    monkeypatch.setattr(onnx_shapes, "PROTOBUF_LIMIT", 2**31 - 2**26)
    export_onnx(model, x[:1], out, exporter=exporter)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.slow
def test_a_2_3_gb_model_exports_runs_and_is_timed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.ReLU(), nn.Linear(12000, 12000)) for _ in range(4)]
    model = nn.Sequential(nn.Linear(64, 12000), *blocks, nn.Linear(12000, 10)).eval()
    x = torch.randn(2, 64)
    out = tmp_path / "model.onnx"
    res = export_onnx(model, x[:1], out, exporter="torchscript", simplify=False)
    assert res.size_bytes > 2**31
    assert out.stat().st_size < 2**20  # the graph; the weights are in model.onnx.data
    onnx.checker.check_model(str(out), full_check=True)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(run_onnx(out, x.numpy())[0], want, rtol=1e-4, atol=1e-5)
    assert onnx_latencies_ms([model], x[:1], runs=3, rounds=1)[0] > 0


def test_a_build_past_the_limit_ships_and_benches_the_weights_file(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import yaml

    from edgecompress.cli import main

    monkeypatch.setattr(onnx_shapes, "PROTOBUF_LIMIT", 4096)
    state, data = tiny
    pre = {"input_size": [16, 16], "resize": "stretch", "mean": [0.3] * 3, "std": [0.3] * 3}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"target": "host", "preprocess": pre, "stages": ["export_onnx", "bench"]})
    )
    out = tmp_path / "out"
    args = ["build", str(state), "--arch", "edgecompress.testing.models:tiny_cnn"]
    args += ["--recipe", str(recipe), "--data", str(data), "-o", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    onnx_art = report["artifacts"]["onnx"]
    assert onnx_art["external_data"]["path"] == "model.onnx.data"
    assert (out / "model.onnx.data").stat().st_size + (out / "model.onnx").stat().st_size == (
        onnx_art["size_bytes"]
    )
    timed = [v for v in report["latency"].values() if v.get("measured")]
    assert {v["artifact"] for v in timed} >= {"onnx"}, report["latency"]


def test_an_int8_model_of_a_float_model_past_the_limit_is_written_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ViT-H/14's float graph is 2.5 GB: ONNX Runtime's quantizer must read it and write
    # its own float copies with external data, and the INT8 result goes where save_onnx
    # puts a model of its size (here, with the limit lowered, beside it again).
    from edgecompress.quantize.onnx_qdq import integer_ops, quantize_qdq, runs_in_integer

    monkeypatch.setattr(onnx_shapes, "PROTOBUF_LIMIT", 4096)
    model, x = _cnn(), torch.randn(16, 3, 16, 16)
    fp = tmp_path / "fp" / "model.onnx"
    fp.parent.mkdir()
    export_onnx(model, x[:1], fp)
    assert (fp.parent / "model.onnx.data").exists()
    out = tmp_path / "int8" / "model.int8.onnx"
    out.parent.mkdir()
    quantize_qdq(fp, out, x.numpy())
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "model.int8.onnx",
        "model.int8.onnx.data",
    ]
    assert runs_in_integer(integer_ops(out))
    got, want = run_onnx(out, x.numpy())[0], model(x).detach().numpy()
    cos = (got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cos > 0.99


def test_a_graph_too_large_to_simplify_in_free_memory_is_written_as_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxslim holds about 7x the weights (8.5 GB for ViT-L/16): where that is more than
    # the machine has free (here: made so), the exported graph is written as it is.
    from edgecompress.exporters import onnx as onnx_exporter

    monkeypatch.setattr(onnx_exporter, "SLIM_MEMORY_FACTOR", 1e12)
    model, x = _cnn(), torch.randn(4, 3, 16, 16)
    res = export_onnx(model, x[:1], tmp_path / "model.onnx")
    assert res.simplifier is not None and res.simplifier.startswith("not simplified")
    assert "GB free" in res.simplifier and res.nodes_final == res.nodes_exported
    got = run_onnx(tmp_path / "model.onnx", x.numpy())[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    monkeypatch.undo()
    slim = export_onnx(model, x[:1], tmp_path / "slim.onnx").simplifier
    assert slim is not None and slim.startswith("onnxslim")
