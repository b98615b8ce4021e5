"""Issue: quantization. The digits example (and the same model pruned to 50% MACs with
recovery): FP32, ONNX Runtime PTQ INT8, QAT INT8, and the ladder 8 -> 6 -> 4 bits (each
rung), with top-1, size, and host latency ratio INT8/FP32 (ONNX Runtime, 1 thread, same run;
at 32x32 and at 224x224 where the same graph is exported at that size); the RKNN simulator's
top-1 for RKNN's own calibration (PTQ) against the QAT model handed over as QDQ."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgecompress as ec
from benchmarks.common import machine, write_section
from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.example import ARCH, prepare_digits_example
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.exporters.rknn import convert_rknn
from edgecompress.model_io import load_model
from edgecompress.quantize.fake import float_copy, prepare_qat
from edgecompress.quantize.ladder import Rung, run_ladder
from edgecompress.quantize.onnx_qdq import integer_ops, qat_overrides, quantize_qdq, runs_in_integer
from edgecompress.report.markdown import table
from edgecompress.runtime.onnxrt import bench_onnx

X32, X224 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224)


def _p50(path: Path) -> float:
    return float(
        bench_onnx(path, threads=1, warmup=20, runs=100, min_time_s=1.5)["latency"]["p50_ms"]
    )


def _top1(path: Path, val: tuple[np.ndarray, np.ndarray]) -> float:
    return float((run_onnx(path, val[0])[0].argmax(1) == val[1]).mean() * 100)


def _rknn_top1(onnx_path: Path, bundle: DataBundle, quantize: bool, work: Path) -> float:
    res = convert_rknn(
        onnx_path,
        work / "m.rknn",
        DIGITS_SPEC,
        "rk3588",
        bundle.calibration_prepared,
        bundle.val_prepared,
        quantize=quantize,
    )
    return float(
        (res.outputs[0].reshape(len(bundle.val_labels), -1).argmax(1) == bundle.val_labels).mean()
        * 100
    )


def _latency_224(fp: nn.Module, qat: nn.Module | None, work: Path) -> tuple[float, float]:
    """FP32 and INT8 p50 at 224x224 (random calibration: ranges do not change speed)."""
    calib = np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32)
    fp_path, q_path = work / "fp224.onnx", work / "q224.onnx"
    export_onnx(fp, X224, fp_path)
    if qat is None:
        quantize_qdq(fp_path, q_path, calib)
    else:
        src = work / "qat224.onnx"
        export_onnx(float_copy(qat), X224, src)
        quantize_qdq(src, q_path, calib, overrides=qat_overrides(src, qat))
    return _p50(fp_path), _p50(q_path)


def _rows(
    name: str, fp: nn.Module, bundle: DataBundle, train: tuple, val: tuple, work: Path
) -> list[list[str]]:
    cal = torch.from_numpy(val[0][:128])
    calib_np = np.stack([DIGITS_SPEC.normalize(im) for im in bundle.calibration_prepared])
    fp_path = work / "fp.onnx"
    export_onnx(fp, X32, fp_path)
    fp_lat, fp_size = _p50(fp_path), fp_path.stat().st_size
    rows = [
        [
            name,
            "FP32",
            f"{_top1(fp_path, val):.2f}",
            f"{fp_size / 1024:.0f} KiB",
            "1.000",
            "1.000",
            "-",
            f"{_rknn_top1(fp_path, bundle, True, work):.2f} (RKNN PTQ)",
        ]
    ]
    ptq = work / "ptq.onnx"
    quantize_qdq(fp_path, ptq, calib_np)
    lat224 = _latency_224(fp, None, work)
    rows.append(
        [
            name,
            "PTQ INT8 (ORT MinMax)",
            f"{_top1(ptq, val):.2f}",
            f"{ptq.stat().st_size / 1024:.0f} KiB",
            f"{_p50(ptq) / fp_lat:.3f}",
            f"{lat224[1] / lat224[0]:.3f}",
            str(runs_in_integer(integer_ops(ptq))),
            "-",
        ]
    )
    qat = prepare_qat(fp, X32, calibration=[cal[:64], cal[64:]])
    rungs = [Rung(w_bits=8, epochs=3), Rung(w_bits=6, epochs=3), Rung(w_bits=4, epochs=3)]
    teacher = copy.deepcopy(fp).eval()
    for i, rung in enumerate(rungs):
        run_ladder(qat, teacher, train, val, [rung], lr=0.002, progress=False)
        src, q_path = work / "qat_fp.onnx", work / f"qat{rung.w_bits}.onnx"
        export_onnx(float_copy(qat), X32, src)
        quantize_qdq(src, q_path, calib_np, overrides=qat_overrides(src, qat))
        lat224 = _latency_224(fp, qat, work) if i == 0 else (float("nan"), float("nan"))
        rknn = f"{_rknn_top1(q_path, bundle, False, work):.2f} (QAT hand-over)"
        rows.append(
            [
                name,
                f"QAT rung {i + 1}: W{rung.w_bits}A8",
                f"{_top1(q_path, val):.2f}",
                f"{q_path.stat().st_size / 1024:.0f} KiB",
                f"{_p50(q_path) / fp_lat:.3f}",
                f"{lat224[1] / lat224[0]:.3f}" if i == 0 else "-",
                str(runs_in_integer(integer_ops(q_path))),
                rknn,
            ]
        )
        print(rows[-1], flush=True)
    return rows


def run() -> None:
    model_path, data = prepare_digits_example(progress=False)
    fp = load_model(model_path, ARCH).module
    bundle = DataBundle(Path(data), DIGITS_SPEC, DataConfig())
    train, val = bundle.train_arrays(), (bundle.val_inputs, bundle.val_labels)
    pruned, _ = ec.prune(fp, X32, keep=0.5, align=16, progress=False)
    fit(
        pruned,
        fp,
        train,
        val,
        FitConfig(epochs=4, lr=0.01, losses=(LossConfig(name="ce"), LossConfig(name="kd"))),
        progress=False,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("digits ResNet", fp), ("pruned 50% MACs", pruned)):
            rows += _rows(name, model.eval(), bundle, train, val, Path(tmp))
    fp32, qat8 = float(rows[0][2]), float(rows[2][2])
    reading = (
        f"\n\nReading: on the digits ResNet, QAT INT8 is {qat8 - fp32:+.2f} top-1 points from "
        f"FP32 and runs at {rows[2][4]}x its latency with integer kernels; PTQ INT8 is at "
        f"{float(rows[1][2]) - fp32:+.2f} points. Digits saturates: the lower rungs hold accuracy "
        "here, which says little about harder data."
    )
    header = [
        "model",
        "variant",
        "ORT top-1",
        "size",
        "latency 32px",
        "latency 224px",
        "integer kernels",
        "RKNN sim top-1",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}. Latency columns: ONNX Runtime p50 ratio "
        "to the same model's FP32 ONNX, 1 thread, batch 1, same run (after quant_pre_process; "
        "uint8 activations, per-channel int8 weights). QAT: LSQ scales, BN folded, each rung 3 "
        "epochs CE + KD with the FP32 model as teacher, lr 0.002; 6- and 4-bit rungs store their "
        "weights as int8 values within the 6/4-bit range (the CPU and the NPU execute int8; the "
        "ladder goes below that only on request). RKNN column: the FP32 row is RKNN's own "
        "calibration-only INT8; QAT rows are the QDQ model imported with its trained ranges.\n\n"
        + table(rows, header)
        + reading
    )
    write_section("Quantization: PTQ, QAT and the bit-width ladder", body)
