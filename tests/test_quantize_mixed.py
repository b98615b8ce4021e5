"""Mixed precision down the ladder: kept layers hold 8-bit weights while the rest go to 4
bits, in the fake-quantized model and in the INT8 ONNX it exports; the layers picked by
sensitivity are the ones that matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import edgecompress as ec
from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.errors import ConfigError
from edgecompress.example import ARCH
from edgecompress.exporters.qdq import export_qat_onnx
from edgecompress.model_io import load_model
from edgecompress.quantize.mixed import weight_layers
from edgecompress.stages.configs import QuantizeConfig


@pytest.fixture(scope="module")
def fp_and_val(digits_example: tuple[Path, Path]) -> tuple[torch.nn.Module, tuple]:
    model_path, data = digits_example
    bundle = DataBundle(data, DIGITS_SPEC, DataConfig())
    return load_model(model_path, ARCH).module.eval(), (bundle.val_inputs, bundle.val_labels)


def _kl_to(fp: torch.nn.Module, q: torch.nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref, out = fp(t).log_softmax(1), q(t).log_softmax(1)
    return float(torch.nn.functional.kl_div(out, ref, log_target=True, reduction="batchmean"))


def _w4(fp: torch.nn.Module, val: tuple, **kw: object) -> ec.quantize:
    x = torch.from_numpy(val[0][:1])
    return ec.quantize(fp, x, ladder=(8, 4), calibration=val, val=val, progress=False, **kw)


def test_kept_layers_hold_8_bit_weights_down_to_the_onnx(fp_and_val: tuple, tmp_path: Path) -> None:
    fp, val = fp_and_val
    q = _w4(fp, val, keep=("fc",), sensitive_layers=2)
    assert q.kept["fc"] == 8 and len(q.kept) == 3, q.kept
    scores = list(q.sensitivity.values())
    assert scores == sorted(scores, reverse=True) and len(scores) == len(weight_layers(q.model))
    bits = {n: m.w_quant.bits for n, m in weight_layers(q.model).items()}
    assert {n for n, b in bits.items() if b == 8} == set(q.kept)
    assert all(b == 4 for n, b in bits.items() if n not in q.kept)
    # What the file holds: kept layers' int8 weights use more than 16 levels, the rest at most 16.
    path = export_qat_onnx(q.model, torch.from_numpy(val[0][:1]), val[0][:32], tmp_path / "q.onnx")
    levels = []
    for init in onnx.load(path).graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype in (np.int8, np.uint8) and arr.ndim >= 2:
            levels.append(max(len(np.unique(c)) for c in arr.reshape(arr.shape[0], -1)))
    assert sum(n > 16 for n in levels) == len(q.kept), levels
    assert sum(n <= 16 for n in levels) == len(bits) - len(q.kept), levels


def test_keeping_the_sensitive_layers_keeps_the_outputs_closer(fp_and_val: tuple) -> None:
    fp, val = fp_and_val
    plain = _w4(fp, val)
    assert plain.kept == {}
    names = list(_w4(fp, val, sensitive_layers=1).sensitivity)
    most = _w4(fp, val, keep=tuple(names[:2]))
    least = _w4(fp, val, keep=tuple(names[-2:]))
    x = val[0][:256]
    kl_plain, kl_most, kl_least = (_kl_to(fp, q.model, x) for q in (plain, most, least))
    assert kl_most < kl_least < kl_plain or kl_most < kl_least <= kl_plain * 1.05, (
        kl_most,
        kl_least,
        kl_plain,
    )


def test_a_keep_pattern_that_names_nothing_lists_the_layers(fp_and_val: tuple) -> None:
    fp, val = fp_and_val
    with pytest.raises(ConfigError, match=r"'head\.\*' names no quantized.*layer1\.conv1"):
        _w4(fp, val, keep=("head.*",))
    with pytest.raises(ValueError, match="keep_bits"):
        QuantizeConfig(keep_bits=9)
