"""ONNX -> RKNN for Rockchip NPUs, INT8 with calibration images from the data (mean/std
from the preprocessing spec), then the RKNN simulator's outputs against ONNX Runtime's
and its accuracy on the validation split."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from edgecompress.errors import ConfigError
from edgecompress.evaluate import classification_metrics, cosine
from edgecompress.exporters.onnx import check_parity, run_onnx
from edgecompress.io import sha256_file
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class ExportRknnConfig(StageConfig):
    source: str = Field(
        "onnx",
        pattern="^(onnx|onnx_qat|onnx_ptq)$",
        description="onnx: RKNN calibrates itself; onnx_qat/onnx_ptq: the QDQ model from the "
        "quantize stage, whose ranges the toolkit takes over (what QAT trained is what runs)",
    )
    label: str = "rknn-simulator"
    quantize: bool = True
    algorithm: str = Field("normal", pattern="^(normal|mmse|kl_divergence)$")
    method: str = Field("channel", pattern="^(channel|layer)$")
    min_cosine: float = Field(0.98, gt=0, le=1, description="simulator vs ONNX Runtime, per output")
    filename: str = "model.rknn"


@register_stage
class ExportRknn(Stage):
    """model.rknn converted by rknn-toolkit2 in its own interpreter and run in its simulator."""

    name = "export_rknn"
    Config = ExportRknnConfig
    cfg: ExportRknnConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from edgecompress.exporters.rknn import convert_rknn

        platform = ctx.target.rknn_platform
        if platform is None:
            raise ConfigError(
                f"target {ctx.target.name!r} is not a Rockchip NPU; "
                "remove export_rknn from the recipe"
            )
        onnx_path = ctx.artifact(self.cfg.source, self.name)
        # A QDQ model carries its own ranges: the toolkit must not re-calibrate it.
        quantize = self.cfg.quantize and self.cfg.source == "onnx"
        out = ctx.out_dir / self.cfg.filename
        result = convert_rknn(
            onnx_path,
            out,
            ctx.spec,
            platform,
            ctx.data.calibration_prepared,
            ctx.data.val_prepared,
            quantize=quantize,
            algorithm=self.cfg.algorithm,
            method=self.cfg.method,
            rknn_python=ctx.options.rknn_python,
        )
        ort_out = run_onnx(onnx_path, ctx.data.val_inputs, ctx.options.threads)
        cosines = [cosine(a, b) for a, b in zip(ort_out, result.outputs, strict=True)]
        n = len(ctx.data.val_labels)
        how = (
            f"RKNN simulator (rknn-toolkit2 {result.toolkit_version}) vs ONNX Runtime "
            f"on {n} validation images"
        )
        key = self.cfg.filename.removesuffix(".rknn").replace("model", "rknn", 1)
        ctx.report.add_parity(
            key, {f"cosine[{i}]": metric(c, "", how) for i, c in enumerate(cosines)}
        )
        ctx.report.add_artifact(
            key,
            {
                "path": out.name,
                "size_bytes": result.size_bytes,
                "sha256": sha256_file(out),
                "exporter": f"rknn-toolkit2 {result.toolkit_version}",
                "platform": platform,
                "quantized": self.cfg.quantize,
                "source": self.cfg.source,
                "quantization": {
                    "algorithm": self.cfg.algorithm,
                    "method": self.cfg.method,
                    "calibration_images": len(ctx.data.calibration_prepared),
                },
                "seconds": {"convert": result.convert_s, "simulate": result.simulate_s},
            },
        )
        ctx.artifacts[key] = out
        check_parity(
            f"{self.cfg.filename} (RKNN simulator)",
            {"max_abs_diff": 0.0, "cosine": min(cosines)},
            max_abs_diff=None,
            min_cosine=self.cfg.min_cosine,
        )
        logits = result.outputs[0].reshape(n, -1)
        metrics = classification_metrics(logits, ctx.data.val_labels, ctx.reference_logits())
        ctx.report.add_accuracy(
            self.cfg.label,
            metrics,
            f"RKNN simulator (rknn-toolkit2 {result.toolkit_version}, "
            f"{self._precision()}), {n} validation images",
        )
        ctx.report.data["accuracy"][self.cfg.label]["artifact"] = metric(key, "", "artifact name")
        return model

    def _precision(self) -> str:
        if self.cfg.source != "onnx":
            return f"int8 from the {self.cfg.source} QDQ ranges"
        return "int8, RKNN calibration" if self.cfg.quantize else "fp16"
