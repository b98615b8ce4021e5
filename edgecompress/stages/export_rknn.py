"""ONNX -> RKNN for Rockchip NPUs, then the RKNN simulator's outputs against ONNX
Runtime's and its accuracy on the test split.

The source is the latest ONNX model the build made. An INT8 QDQ model (the QAT model's
export) carries its own ranges, which the toolkit takes over: what QAT trained is what
runs on the NPU. A float model is quantized by the toolkit with calibration images from
the data (mean/std from the preprocessing spec), or kept FP16 with ``quantize: false``."""

from __future__ import annotations

from torch import nn

from edgecompress.artifacts import ArtifactKind
from edgecompress.errors import ConfigError
from edgecompress.evaluate import classification_metrics, cosine
from edgecompress.exporters.onnx import check_parity, degenerate_output, run_onnx
from edgecompress.io import sha256_file
from edgecompress.quantize.export import run_exact
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import ExportRknnConfig


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
        source = ctx.artifact(ArtifactKind.onnx, self.name, self.cfg.source)
        onnx_path = source.path
        # A QDQ model carries its own ranges: the toolkit must not re-calibrate it.
        from_qdq = source.precision == "int8"
        quantize = self.cfg.quantize and not from_qdq
        out = ctx.out_dir / self.cfg.filename
        result = convert_rknn(
            onnx_path,
            out,
            ctx.spec,
            platform,
            ctx.data.calibration_prepared,
            ctx.data.test_prepared,
            quantize=quantize,
            algorithm=self.cfg.algorithm,
            method=self.cfg.method,
            rknn_python=ctx.options.rknn_python,
            progress=ctx.options.progress,
        )
        threads = ctx.options.threads
        ort_out = (
            [run_exact(onnx_path, ctx.data.test_inputs, threads)]
            if from_qdq
            else run_onnx(onnx_path, ctx.data.test_inputs, threads)
        )
        cosines = [cosine(a, b) for a, b in zip(ort_out, result.outputs, strict=True)]
        n = len(ctx.data.test_labels)
        how = (
            f"RKNN simulator (rknn-toolkit2 {result.toolkit_version}) vs ONNX Runtime "
            f"({source.name}) on {n} test images"
        )
        precision = "int8" if (quantize or from_qdq) else "fp16"
        key = ctx.add_artifact("rknn", ArtifactKind.rknn, precision, out).name
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
                "precision": precision,
                "stage": ctx.stage_dir.name if ctx.stage_dir else None,
                "source": source.name,
                "ranges": "from the QDQ model (QAT/PTQ scales)"
                if from_qdq
                else "rknn-toolkit2 calibration"
                if quantize
                else "none (fp16)",
                "quantization": {
                    "algorithm": self.cfg.algorithm,
                    "method": self.cfg.method,
                    "calibration_images": len(ctx.data.calibration_prepared),
                },
                "seconds": {"convert": result.convert_s, "simulate": result.simulate_s},
            },
        )
        check_parity(
            f"{self.cfg.filename} (RKNN simulator)",
            {
                "max_abs_diff": 0.0,
                "cosine": min(cosines),
                "degenerate": float(any(degenerate_output(o) for o in result.outputs)),
            },
            max_abs_diff=None,
            min_cosine=self.cfg.min_cosine,
            options="export_rknn",
        )
        logits = result.outputs[0].reshape(n, -1)
        metrics = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
        how = (
            f"int8 from the {source.name} QDQ ranges"
            if from_qdq
            else "int8, RKNN calibration"
            if quantize
            else "fp16"
        )
        ctx.report.add_accuracy(
            self.cfg.label,
            metrics,
            f"RKNN simulator (rknn-toolkit2 {result.toolkit_version}, {how}), {n} test images",
            artifact=key,
        )
        return model
