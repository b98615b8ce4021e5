"""Export to ONNX and prove it: ONNX Runtime's outputs against PyTorch's on the real
validation images, and ONNX Runtime's accuracy."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgecompress.distill.loop import evaluate_logits
from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.onnx import check_parity, export_onnx, parity_metrics, run_onnx
from edgecompress.io import sha256_file
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class ExportOnnxConfig(StageConfig):
    opset: int | None = Field(None, ge=17, description="default: the target profile's")
    exporter: str = Field("auto", pattern="^(auto|dynamo|torchscript)$")
    simplify: bool = True
    max_abs_diff: float = Field(1e-3, gt=0, description="fail the build past this")
    min_cosine: float = Field(0.9999, gt=0, le=1)
    filename: str = "model.onnx"


@register_stage
class ExportOnnx(Stage):
    """model.onnx: static shape, simplified, checked, parity-tested in ONNX Runtime."""

    name = "export_onnx"
    Config = ExportOnnxConfig
    cfg: ExportOnnxConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        out = ctx.out_dir / self.cfg.filename
        example = torch.from_numpy(ctx.data.val_inputs[:1].copy())
        result = export_onnx(
            model,
            example,
            out,
            opset=self.cfg.opset or ctx.target.onnx_opset,
            exporter=self.cfg.exporter,
            simplify=self.cfg.simplify,
        )
        inputs = ctx.data.val_inputs
        torch_out = [evaluate_logits(model, inputs)]
        ort_out = run_onnx(out, inputs, ctx.options.threads)
        parity = parity_metrics(torch_out, ort_out)
        how = f"ONNX Runtime {_ort_version()} vs PyTorch on {len(inputs)} validation images"
        ctx.report.add_parity(
            "onnx",
            {
                "max_abs_diff": metric(parity["max_abs_diff"], "", how),
                "cosine": metric(parity["cosine"], "", how + ", worst output"),
            },
        )
        ctx.report.add_artifact(
            "onnx",
            {
                "path": out.name,
                "size_bytes": result.size_bytes,
                "sha256": sha256_file(out),
                "exporter": f"torch.onnx ({result.exporter})",
                "opset": result.opset,
                "nodes": {"exported": result.nodes_exported, "final": result.nodes_final},
                "simplifier": result.simplifier,
            },
        )
        ctx.artifacts["onnx"] = out
        check_parity(
            "model.onnx (ONNX Runtime)",
            parity,
            max_abs_diff=self.cfg.max_abs_diff,
            min_cosine=self.cfg.min_cosine,
        )
        metrics = classification_metrics(
            np.asarray(ort_out[0]), ctx.data.val_labels, ctx.reference_logits()
        )
        ctx.report.add_accuracy(
            "onnxruntime", metrics, how.split(" vs")[0] + f", {len(inputs)} validation images, CPU"
        )
        ctx.report.data["accuracy"]["onnxruntime"]["artifact"] = metric("onnx", "", "artifact name")
        return model


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
