"""Energy without a sensor: MAC and byte counts of real ONNX graphs, the per-target tables,
and fitting the coefficients to measured runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.errors import ConfigError, DataError, ModelLoadError
from edgecompress.runtime.energy_model import (
    ENERGY_TABLES,
    PRECISIONS,
    estimate_energy,
    fit_coefficients,
    fit_from_files,
    layer_costs,
    load_fit,
    save_fit,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fit in the user's cache would turn estimates "fitted"; each test gets its own."""
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _export(model: Any, shape: tuple[int, ...], path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False)
    return path


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("energy") / "conv.onnx"
    return _export(torch.nn.Conv2d(3, 8, 3, stride=1, padding=1), (1, 3, 32, 32), path)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv 3->8, depthwise 3x3, grouped 1x1 (2 groups), pool, linear 4->10."""
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.Conv2d(8, 4, 1, groups=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    return _export(model, (1, 3, 16, 16), tmp_path_factory.mktemp("energy") / "cnn.onnx")


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _qdq_conv(path: Path, quantized: bool) -> Path:
    """x -> Q -> DQ -> Conv(weight) -> Relu, the weight int8 behind DequantizeLinear
    (QDQ, as ONNX Runtime's quantizer writes it) or plain fp32."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
    ]
    inits = [scale, zero]
    if quantized:
        inits.append(numpy_helper.from_array(np.round(w / 0.02).astype(np.int8), "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"]))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    return _save(graph, path)


def test_conv_macs_and_bytes_are_exact(conv_onnx: Path) -> None:
    (conv,) = layer_costs(conv_onnx)
    assert conv.op_type == "Conv"
    assert conv.macs == 8 * 32 * 32 * 3 * 3 * 3
    assert conv.precision == "fp32"
    assert conv.weight_bytes == (8 * 3 * 3 * 3 + 8) * 4  # weight and bias
    assert conv.activation_bytes == (3 * 32 * 32 + 8 * 32 * 32) * 4


def test_grouped_depthwise_conv_and_gemm_macs(cnn_onnx: Path) -> None:
    costs = layer_costs(cnn_onnx)
    macs = [(c.op_type, c.macs) for c in costs if c.macs]
    assert macs == [
        ("Conv", 8 * 16 * 16 * 3 * 9),
        ("Conv", 8 * 16 * 16 * 1 * 9),  # depthwise: one input channel per filter
        ("Conv", 4 * 16 * 16 * 4 * 1),  # 2 groups: 4 of the 8 input channels per filter
        ("Gemm", 4 * 10),
    ]
    # pool and activation do no MACs but still move their tensors; Flatten is a view
    moved = {c.op_type: c.activation_bytes for c in costs if not c.macs}
    assert moved["Relu"] == 2 * 8 * 16 * 16 * 4
    assert "Flatten" not in moved


def test_batched_matmul_and_conv_transpose_macs(tmp_path: Path) -> None:
    b = numpy_helper.from_array(np.ones((16, 32), np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "c"], ["ac"], name="batched"),
            helper.make_node("MatMul", ["ac", "b"], ["y"], name="broadcast"),
            helper.make_node("ConvTranspose", ["x", "wt"], ["z"], name="up", strides=[2, 2]),
        ],
        "mm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4, 5]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 3, 5, 16]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 32]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 16, 16]),
        ],
        [b, numpy_helper.from_array(np.ones((4, 2, 2, 2), np.float32), "wt")],
    )
    costs = {c.name: c for c in layer_costs(_save(graph, tmp_path / "mm.onnx"))}
    assert costs["batched"].macs == 2 * 3 * 4 * 16 * 5
    assert costs["broadcast"].macs == 2 * 3 * 4 * 32 * 16
    assert costs["broadcast"].weight_bytes == 16 * 32 * 4
    # each of the 4x8x8 inputs is scattered to 2 output channels x 2x2 taps
    assert costs["up"].macs == 4 * 8 * 8 * 2 * 2 * 2


def test_qdq_weights_are_detected_as_int8_and_qdq_nodes_folded(tmp_path: Path) -> None:
    quant = layer_costs(_qdq_conv(tmp_path / "qdq.onnx", quantized=True))
    plain = layer_costs(_qdq_conv(tmp_path / "fp.onnx", quantized=False))
    assert [c.op_type for c in quant] == ["Conv", "Relu"]
    conv = quant[0]
    assert conv.precision == "int8"
    assert conv.macs == 4 * 6 * 6 * 3 * 9
    assert conv.weight_bytes == 4 * 3 * 3 * 3  # one byte per int8 weight
    assert plain[0].precision == "fp32"
    assert plain[0].weight_bytes == 4 * conv.weight_bytes


def test_fp16_graph_is_detected_and_costed_at_two_bytes(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 4, 4])],
        [w],
    )
    (conv,) = layer_costs(_save(graph, tmp_path / "half.onnx"))
    assert conv.precision == "fp16"
    assert conv.weight_bytes == 8 * 3 * 2
    assert conv.activation_bytes == (3 + 8) * 16 * 2


def test_given_precision_prices_every_layer_at_it(cnn_onnx: Path) -> None:
    fp32 = layer_costs(cnn_onnx)
    int8 = layer_costs(cnn_onnx, "int8")
    assert {c.precision for c in int8} == {"int8"}
    assert [c.macs for c in int8] == [c.macs for c in fp32]
    assert sum(c.bytes for c in int8) * 4 == sum(c.bytes for c in fp32)
    with pytest.raises(ConfigError, match="int4"):
        layer_costs(cnn_onnx, "int4")


@pytest.mark.parametrize("target", sorted(ENERGY_TABLES))
def test_int8_costs_less_than_fp32_on_every_target(cnn_onnx: Path, target: str) -> None:
    table = ENERGY_TABLES[target]
    assert table.pj_per_mac["int8"] < table.pj_per_mac["fp16"] <= table.pj_per_mac["fp32"]
    assert "Horowitz" in table.source and "estimate" in table.source
    fp32 = estimate_energy(cnn_onnx, target, "fp32")
    int8 = estimate_energy(cnn_onnx, target, "int8")
    assert fp32["kind"] == int8["kind"] == "analytic"
    assert 0 < int8["energy_per_inference_j"] < fp32["energy_per_inference_j"]
    assert int8["compute_j"] < fp32["compute_j"] and int8["memory_j"] < fp32["memory_j"]


def test_estimate_adds_up_and_names_the_largest_layers(cnn_onnx: Path) -> None:
    est = estimate_energy(cnn_onnx, "rk3588")
    parts = est["compute_j"] + est["memory_j"] + est["fixed_j"]
    assert est["energy_per_inference_j"] == pytest.approx(parts)
    assert est["precision"] == "fp32"  # detected: an fp32 export
    assert est["features"]["macs"]["fp32"] == sum(c.macs for c in layer_costs(cnn_onnx))
    tops = [t["energy_j"] for t in est["top_layers"]]
    assert len(tops) == 5 and tops == sorted(tops, reverse=True)
    json.dumps(est)  # a bench result embeds it
    with pytest.raises(ConfigError, match="known"):
        estimate_energy(cnn_onnx, "no-such-board")


def test_corrupt_or_missing_onnx_is_a_model_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        layer_costs(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx"):
        estimate_energy(empty, "host")
    with pytest.raises(ModelLoadError, match=r"missing\.onnx.*export"):
        layer_costs(tmp_path / "missing.onnx")


# --- fitting -------------------------------------------------------------------------------
TRUE = {"fp32": 3.0, "int8": 0.4, "byte": 50.0, "fixed_uj": 100.0}  # pJ, pJ, pJ, µJ


def _result(fp32: float, int8: float, nbytes: float, noise: float, target: str) -> dict:
    joules = (fp32 * TRUE["fp32"] + int8 * TRUE["int8"] + nbytes * TRUE["byte"]) * 1e-12 + TRUE[
        "fixed_uj"
    ] * 1e-6
    features = {"macs": {"fp32": fp32, "fp16": 0, "int8": int8}, "bytes": nbytes}
    return {
        "target": target,
        "energy": {
            "measured": {"energy_per_inference_j": joules * (1 + noise)},
            "analytic": {"features": features},
        },
    }


def _synthetic(target: str = "jetson-orin") -> list[dict]:
    rng = np.random.default_rng(0)
    runs = [
        (1e8, 0, 1e6), (0, 3e8, 2e6), (5e7, 1e8, 3e6), (2e7, 0, 4e5),
        (0, 5e8, 1e6), (8e7, 2e8, 5e6), (3e7, 4e8, 2e5), (1e7, 1e7, 2e6),
    ]  # fmt: skip
    noise = rng.uniform(-0.02, 0.02, len(runs))
    return [_result(*run, n, target) for run, n in zip(runs, noise, strict=True)]


def test_fit_recovers_known_coefficients_from_noisy_runs() -> None:
    fit = fit_coefficients("jetson-orin", [*_synthetic(), *_synthetic("host")[:1]])
    assert any("skipped" in n and "'host'" in n for n in fit["notes"])
    coef = fit["coefficients"]
    assert fit["method"] == "nnls" and fit["runs"] == 8
    assert coef["pj_per_mac"]["fp32"] == pytest.approx(TRUE["fp32"], rel=0.05)
    assert coef["pj_per_mac"]["int8"] == pytest.approx(TRUE["int8"], rel=0.05)
    assert coef["pj_per_byte"] == pytest.approx(TRUE["byte"], rel=0.05)
    assert coef["fixed_uj"] == pytest.approx(TRUE["fixed_uj"], rel=0.05)
    # no run used fp16: that coefficient cannot be determined and keeps the table value
    assert coef["pj_per_mac"]["fp16"] == ENERGY_TABLES["jetson-orin"].pj_per_mac["fp16"]
    assert fit["kept_from_table"] == ["pj_per_mac.fp16"]
    assert fit["mean_abs_rel_error_fit"] < 0.02 < fit["mean_abs_rel_error_table"]
    assert len(fit["residuals"]) == 8
    assert all(abs(r["rel_error_fit"]) < 0.04 for r in fit["residuals"])


def test_fit_with_two_runs_falls_back_to_a_scale_factor() -> None:
    table = ENERGY_TABLES["host"]
    results = []
    for fp32, nbytes in ((1e8, 1e6), (4e7, 3e6)):
        analytic = (fp32 * table.pj_per_mac["fp32"] + nbytes * table.pj_per_byte) * 1e-12
        features = {"macs": {"fp32": fp32, "fp16": 0, "int8": 0}, "bytes": nbytes}
        energy = {"measured": {"energy_per_inference_j": 1.5 * analytic}}
        results.append({"energy": energy | {"analytic": {"features": features}}})
    fit = fit_coefficients("host", results)
    assert fit["method"] == "scale" and fit["fitted"] == ["scale"]
    assert fit["scale"] == pytest.approx(1.5)
    assert any("scale factor" in n for n in fit["notes"])
    assert fit["coefficients"]["pj_per_byte"] == pytest.approx(1.5 * table.pj_per_byte)
    assert fit["mean_abs_rel_error_fit"] == pytest.approx(0, abs=1e-9)
    assert fit["mean_abs_rel_error_table"] == pytest.approx(1 / 3)


def test_saved_fit_is_used_by_later_estimates(
    cnn_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    assert not (tmp_path / "energy").exists()
    before = estimate_energy(cnn_onnx, "jetson-orin", "fp32")
    fit = fit_coefficients("jetson-orin", _synthetic())
    path = save_fit(fit)
    assert path == tmp_path / "energy" / "jetson-orin.json"
    assert load_fit(path)["coefficients"] == fit["coefficients"]
    after = estimate_energy(cnn_onnx, "jetson-orin", "fp32")
    assert before["kind"] == "analytic" and after["kind"] == "fitted"
    assert str(path) in after["source"] and "8 measured runs" in after["source"]
    assert after["coefficients"] == fit["coefficients"]
    assert after["fixed_j"] == pytest.approx(fit["coefficients"]["fixed_uj"] * 1e-6)
    assert estimate_energy(cnn_onnx, "host")["kind"] == "analytic"  # no host fit saved
    with pytest.raises(ConfigError, match="jetson-orin"):
        estimate_energy(cnn_onnx, "rk3588", coefficients=path)


def test_corrupt_fit_file_is_a_clear_error(
    cnn_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    path = tmp_path / "energy" / "rk3588.json"
    path.parent.mkdir()
    path.write_text('{"target": "rk3588", "runs": 3}')
    with pytest.raises(DataError, match=r"rk3588\.json.*coefficients"):
        estimate_energy(cnn_onnx, "rk3588")
    fit = fit_coefficients("rk3588", _synthetic("rk3588"))
    fit["coefficients"]["pj_per_byte"] = -1.0
    path.write_text(json.dumps(fit))
    with pytest.raises(DataError, match=r"rk3588\.json.*>= 0"):
        load_fit(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"rk3588\.json.*fit again"):
        load_fit(path)


def test_fit_from_files_names_a_file_without_measured_energy(tmp_path: Path) -> None:
    paths = []
    for i, result in enumerate(_synthetic("rk3588")):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(result))
    other = tmp_path / "other.json"  # another target's run, here without a sensor reading
    partial = {"target": "rk3588", "complete": False}  # a disconnect: no energy at all
    other.write_text(json.dumps([{"target": "host", "energy": {"measured": None}}, partial]))
    fit = fit_from_files("rk3588", [*paths, other])
    assert fit["runs"] == 8 and len(fit["files"]) == 9
    assert any("other.json [0]" in n and "host" in n for n in fit["notes"])
    assert any("other.json [1]" in n and "incomplete" in n for n in fit["notes"])

    no_sensor = _synthetic("rk3588")[0]
    no_sensor["energy"]["measured"] = None
    (tmp_path / "nosensor.json").write_text(json.dumps(no_sensor))
    with pytest.raises(DataError, match=r"nosensor\.json: no measured energy.*sensor"):
        fit_from_files("rk3588", [*paths, tmp_path / "nosensor.json"])
    (tmp_path / "text.json").write_text("latency 3 ms")
    with pytest.raises(DataError, match=r"text\.json: not a readable JSON"):
        fit_from_files("rk3588", [tmp_path / "text.json"])


def test_every_precision_has_a_cost_on_every_target() -> None:
    for name, table in ENERGY_TABLES.items():
        assert set(table.pj_per_mac) == set(PRECISIONS), name
        assert all(v > 0 for v in table.pj_per_mac.values()), name
        assert table.pj_per_byte > 0 and table.fixed_uj == 0, name
