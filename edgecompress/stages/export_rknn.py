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
        onnx_path = ctx.artifact("onnx", self.name)
        out = ctx.out_dir / self.cfg.filename
        result = convert_rknn(
            onnx_path,
            out,
            ctx.spec,
            platform,
            ctx.data.calibration_prepared,
            ctx.data.val_prepared,
            quantize=self.cfg.quantize,
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
        ctx.report.add_parity(
            "rknn", {f"cosine[{i}]": metric(c, "", how) for i, c in enumerate(cosines)}
        )
        ctx.report.add_artifact(
            "rknn",
            {
                "path": out.name,
                "size_bytes": result.size_bytes,
                "sha256": sha256_file(out),
                "exporter": f"rknn-toolkit2 {result.toolkit_version}",
                "platform": platform,
                "quantized": self.cfg.quantize,
                "quantization": {
                    "algorithm": self.cfg.algorithm,
                    "method": self.cfg.method,
                    "calibration_images": len(ctx.data.calibration_prepared),
                },
                "seconds": {"convert": result.convert_s, "simulate": result.simulate_s},
            },
        )
        ctx.artifacts["rknn"] = out
        check_parity(
            "model.rknn (RKNN simulator)",
            {"max_abs_diff": 0.0, "cosine": min(cosines)},
            max_abs_diff=None,
            min_cosine=self.cfg.min_cosine,
        )
        logits = result.outputs[0].reshape(n, -1)
        metrics = classification_metrics(logits, ctx.data.val_labels, ctx.reference_logits())
        ctx.report.add_accuracy(
            "rknn-simulator",
            metrics,
            f"RKNN simulator (rknn-toolkit2 {result.toolkit_version}, "
            f"{'int8' if self.cfg.quantize else 'fp16'}), {n} validation images",
        )
        ctx.report.data["accuracy"]["rknn-simulator"]["artifact"] = metric(
            "rknn", "", "artifact name"
        )
        return model
