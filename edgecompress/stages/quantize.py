"""Quantization-aware training down a bit-width ladder, with the full-precision model as
teacher; then INT8 QDQ ONNX from the trained model (``model.int8.onnx``) beside ONNX
Runtime's post-training quantization of the float model (``model.ptq.onnx``), both
evaluated in ONNX Runtime, with proof that integer kernels run and their host latency
against FP32 in the same run."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.io import sha256_file
from edgecompress.quantize.fake import INIT_METHODS, float_copy, prepare_qat
from edgecompress.quantize.ladder import Rung, run_ladder
from edgecompress.quantize.onnx_qdq import integer_ops, qat_overrides, quantize_qdq, runs_in_integer
from edgecompress.report.schema import metric
from edgecompress.runtime.onnxrt import bench_onnx
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage
from edgecompress.targets import Precision


class QuantizeConfig(StageConfig):
    rungs: tuple[Rung, ...] = (Rung(w_bits=8, epochs=2),)
    init: str = Field("minmax", pattern="^(minmax|percentile|mse)$")
    lr: float = Field(0.002, gt=0)
    below_target: bool = Field(
        False, description="run rungs below what the target executes (for size)"
    )
    ptq: str = Field(
        "minmax", pattern="^(minmax|entropy|percentile)$", description="PTQ baseline calibration"
    )
    calibration_batches: int = Field(4, ge=1)


def lowest_bits(precisions: tuple[Precision, ...]) -> int:
    bits = [int(p.value[3:]) for p in precisions if p.value.startswith("int")]
    return min(bits) if bits else 16


@register_stage
class Quantize(Stage):
    """LSQ QAT ladder (teacher: the float model) and INT8 QDQ ONNX that runs as INT8."""

    name = "quantize"
    Config = QuantizeConfig
    cfg: QuantizeConfig
    changes_model = True

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        assert INIT_METHODS  # the choices the recipe validates against
        floor = lowest_bits(ctx.target.precisions)
        rungs = [r for r in self.cfg.rungs if self.cfg.below_target or r.w_bits >= floor]
        skipped = [r.w_bits for r in self.cfg.rungs if r not in rungs]
        x_cal = torch.from_numpy(ctx.data.val_inputs[: 32 * self.cfg.calibration_batches].copy())
        cal = [x_cal[i : i + 32] for i in range(0, len(x_cal), 32)]
        teacher = copy.deepcopy(model).eval()
        qat = prepare_qat(
            model,
            cal[0][:1],
            rungs[0].w_bits if rungs else 8,
            rungs[0].a_bits if rungs else 8,
            ctx.target.quant_symmetric_activations,
            self.cfg.init,
            cal,
        )
        val = (ctx.data.val_inputs, ctx.data.val_labels)
        results = run_ladder(
            qat,
            teacher,
            ctx.data.train_arrays(),
            val,
            rungs,
            lr=self.cfg.lr,
            workdir=ctx.stage_dir,
            resume=ctx.resume,
            progress=ctx.options.progress,
        )
        exports = self._export(teacher, qat, ctx)
        lowest = min((r.w_bits for r in rungs), default=8)
        ctx.report.data["quantization"] = {
            "rungs": [r.to_dict() for r in results],
            "skipped_rungs": skipped,
            "device_runs": f"int8 kernels ({ctx.target.runtime}); weights hold {lowest}-bit values"
            if lowest < 8
            else f"int8 kernels ({ctx.target.runtime})",
            **exports,
        }
        return qat

    def _export(self, fp: nn.Module, qat: nn.Module, ctx: BuildContext) -> dict[str, Any]:
        example = torch.from_numpy(ctx.data.val_inputs[:1].copy())
        calib = np.stack(ctx.data.calibration_prepared).astype(np.float32)
        calib = np.stack([ctx.spec.normalize(im.astype(np.uint8)) for im in calib])
        sym = ctx.target.quant_symmetric_activations
        # ONNX Runtime targets get the weight storage this CPU computes exactly; a vendor
        # toolchain (RKNN) reads the standard signed form.
        weights = "auto" if ctx.target.runtime == "onnxruntime" else "s8"
        out: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            fp_onnx, qat_fp_onnx = Path(tmp) / "fp.onnx", Path(tmp) / "qat_fp.onnx"
            export_onnx(fp, example, fp_onnx)
            export_onnx(float_copy(qat), example, qat_fp_onnx)
            paths = {"ptq": ctx.out_dir / "model.ptq.onnx", "qat": ctx.out_dir / "model.int8.onnx"}
            quantize_qdq(
                fp_onnx,
                paths["ptq"],
                calib,
                method=self.cfg.ptq,
                symmetric_activations=sym,
                weights=weights,
            )
            quantize_qdq(
                qat_fp_onnx,
                paths["qat"],
                calib,
                symmetric_activations=sym,
                overrides=qat_overrides(qat_fp_onnx, qat),
                weights=weights,
            )
            fp_lat = bench_onnx(fp_onnx, threads=ctx.options.threads, runs=200, min_time_s=1.0)[
                "latency"
            ]["p50_ms"]
            fp_size = fp_onnx.stat().st_size
        for kind, path in paths.items():
            storage = _storage(path)
            logits = _run_exact(path, storage, ctx.data.val_inputs, ctx.options.threads)
            acc = classification_metrics(logits, ctx.data.val_labels, ctx.reference_logits())
            ops = integer_ops(path)
            lat = bench_onnx(path, threads=ctx.options.threads, runs=200, min_time_s=1.0)[
                "latency"
            ]["p50_ms"]
            how = f"ONNX Runtime, {len(logits)} validation images"
            out[kind] = {
                "path": path.name,
                "size_bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "top1": metric(acc["top1"], "%", how),
                "agreement": metric(acc["agreement"], "%", how),
                "integer_kernels": runs_in_integer(ops),
                "optimized_ops": ops,
                "latency_ratio_vs_fp32": metric(
                    lat / fp_lat, "", "ONNX Runtime p50, batch 1, same run"
                ),
                "size_ratio_vs_fp32": metric(path.stat().st_size / fp_size, "", "file sizes"),
            }
            ctx.artifacts[f"onnx_{kind}"] = path
            ctx.report.add_artifact(
                f"onnx_{kind}",
                {
                    "path": path.name,
                    "size_bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                    "exporter": "onnxruntime.quantization (QDQ, per-channel int8 weights)",
                    "weight_storage": storage,
                    "integer_kernels": runs_in_integer(ops),
                },
            )
            ctx.report.add_accuracy(f"onnxruntime-int8-{kind}", acc, how)
            ctx.report.data["accuracy"][f"onnxruntime-int8-{kind}"]["artifact"] = metric(
                f"onnx_{kind}", "", "artifact name"
            )
        return out


def _storage(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    dq = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    types = {inits[name] for name in dq if name in inits}  # weights, not activations
    if onnx.TensorProto.UINT8 in types:
        return "uint8, zero point 128 (this CPU lacks VNNI: uint8 x int8 kernels saturate)"
    return "int8"


def _run_exact(path: Path, storage: str, inputs: np.ndarray, threads: int) -> np.ndarray:
    """Logits of a QDQ model as integer arithmetic gives them: where this CPU's uint8 x
    int8 kernels saturate, run an exact uint8-weight copy (same values) instead."""
    from edgecompress.quantize.onnx_qdq import _weights_to_uint8, u8s8_saturates

    if not u8s8_saturates() or storage != "int8":
        return run_onnx(path, inputs, threads)[0]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copy2(path, copy)
        _weights_to_uint8(copy)
        return run_onnx(copy, inputs, threads)[0]
