"""Quantization-aware training down a bit-width ladder, with the model before it as
teacher. The stage hands on the fake-quantized model: the export stages after it write
what it trained (INT8 QDQ ONNX with the learned scales, and from that an RKNN model that
takes those ranges over). ONNX Runtime's post-training quantization of the float model
is written beside it as the baseline to beat (``model.ptq.onnx``, not deployed)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress import memory
from edgecompress.artifacts import ArtifactKind
from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.qdq import export_ptq_onnx, run_exact, weight_storage
from edgecompress.io import sha256_file
from edgecompress.quantize.api import quantize
from edgecompress.quantize.config import Rung
from edgecompress.quantize.fake import is_quantized
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import QuantizeConfig
from edgecompress.targets import Precision


def lowest_bits(precisions: tuple[Precision, ...]) -> int:
    bits = [int(p.value[3:]) for p in precisions if p.value.startswith("int")]
    return min(bits) if bits else 16


def default_rungs(ladder: tuple[int, ...], epochs: int) -> tuple[Rung, ...]:
    return tuple(Rung(w_bits=b, epochs=epochs) for b in ladder)


def cap_for_storage(rungs: list[Rung], int8_weights: str) -> tuple[list[Rung], str | None]:
    """The target's default ladder, its last rung at 7 bits where the target stores 7-bit
    int8 weights (``s7``: its uint8 x int8 kernels saturate beyond +-64, and uint8 weights
    run slower), so that QAT learns the weights the file holds; and why, if it did."""
    if int8_weights != "s7" or not rungs or rungs[-1].w_bits <= 7:
        return rungs, None
    last = rungs[-1].model_copy(update={"w_bits": 7})
    why = (
        f"last rung trains 7-bit weights ({rungs[-1].w_bits} -> 7): the target stores int8 "
        "weights within +-64, which its uint8 x int8 kernels multiply exactly"
    )
    return [*rungs[:-1], last], why


class Quantize(Stage):
    """LSQ QAT ladder (teacher: the model before it); a PTQ baseline for comparison."""

    name = "quantize"
    Config = QuantizeConfig
    cfg: QuantizeConfig

    def keeps_input(self) -> bool:
        return True

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        floor = lowest_bits(ctx.target.precisions)
        d = ctx.target.defaults
        wanted = self.cfg.rungs or default_rungs(d.ladder, d.qat_epochs)
        rungs = [r for r in wanted if self.cfg.below_target or r.w_bits >= floor]
        skipped = [r.w_bits for r in wanted if r not in rungs]
        capped = None  # a recipe's own rungs are trained as written
        if not self.cfg.rungs:
            rungs, capped = cap_for_storage(rungs, ctx.target.int8_weights)
        teacher = model.eval()  # quantize() trains a fake-quantized copy; this stays as it is
        # The PTQ baseline first: before the fake-quantized copy exists (a 1.3 GB ViT-H/14
        # was killed for memory exporting it after QAT).
        ptq = self._ptq(teacher, ctx) if self.cfg.ptq and not is_quantized(teacher) else None
        memory.release()
        val = (ctx.data.val_inputs, ctx.data.val_labels)
        result = quantize(
            model,
            torch.from_numpy(ctx.data.val_inputs[:1].copy()),
            ladder=rungs or [Rung()],
            train=ctx.data.train_arrays(),
            val=val,
            calibration=val,  # activation ranges from validation images
            calibration_batches=self.cfg.calibration_batches,
            teacher=teacher,
            init=self.cfg.init,
            a_symmetric=ctx.target.quant_symmetric_activations,
            lr=self.cfg.lr,
            keep=self.cfg.keep_layers,
            sensitive_layers=self.cfg.sensitive_layers,
            keep_bits=self.cfg.keep_bits,
            seed=self.cfg.seed,
            float_below=ctx.target.int8_min_in_channels,
            workdir=ctx.stage_dir,
            resume=ctx.resume,
            progress=ctx.options.progress,
        )
        qat, results = result.model, result.rungs
        lowest = min((r.w_bits for r in rungs), default=8)
        ctx.report.data.setdefault("quantization", {})[self._section(ctx)] = {
            "rungs": [r.to_dict() for r in results],
            "skipped_rungs": skipped,
            "weight_bits_for_storage": capped,
            "kept_layers": result.kept,
            "sensitivity": {k: round(v, 6) for k, v in list(result.sensitivity.items())[:10]},
            "device_runs": f"int8 kernels ({ctx.target.runtime}); weights hold {lowest}-bit values"
            if lowest < 8
            else f"int8 kernels ({ctx.target.runtime})",
            "ptq_baseline": ptq,
        }  # fmt: skip
        return qat

    @staticmethod
    def _section(ctx: BuildContext) -> str:
        return ctx.stage_dir.name if ctx.stage_dir is not None else "quantize"

    def _ptq(self, fp: nn.Module, ctx: BuildContext) -> dict[str, object]:
        """ONNX Runtime's static PTQ of the float model, evaluated like every artifact."""
        from edgecompress.report.schema import metric

        assert self.cfg.ptq is not None and ctx.stage_dir is not None
        path = ctx.stage_dir / "model.ptq.onnx"
        export_ptq_onnx(
            fp,
            torch.from_numpy(ctx.data.val_inputs[:1].copy()),
            ctx.calibration_inputs(),
            path,
            method=self.cfg.ptq,
            symmetric_activations=ctx.target.quant_symmetric_activations,
            weights=ctx.target.int8_weights,
            float_below=ctx.target.int8_min_in_channels,
            quantize_bias=ctx.target.int8_bias,
        )
        art = ctx.add_artifact("onnx_ptq", ArtifactKind.onnx, "int8", path, deploy=False)
        ctx.report.add_artifact(
            art.name,
            {
                "path": str(path.relative_to(ctx.out_dir)),
                "size_bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "precision": art.precision,
                "stage": art.stage,
                "exporter": f"onnxruntime.quantization static PTQ ({self.cfg.ptq}), QDQ",
                "form": "PTQ",
                "weight_storage": weight_storage(path),
                "deployed": False,
            },
        )
        logits = run_exact(path, ctx.data.test_inputs, ctx.options.threads)
        acc = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
        how = f"ONNX Runtime, {len(logits)} test images"
        ctx.report.add_accuracy("onnxruntime-int8-ptq", acc, how, artifact=art.name)
        return {"artifact": art.name, "top1": metric(acc["top1"], "%", how)}
