"""Export the model this stage is given to ONNX and prove it: ONNX Runtime's outputs
against PyTorch's on real images, and ONNX Runtime's accuracy on the test split.

A float model becomes ``model.onnx`` (FP32); a fake-quantized one (after ``quantize``)
becomes ``model.int8.onnx``, INT8 QDQ with the scales QAT learned, which ONNX Runtime
runs with integer kernels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.api import export_model_onnx
from edgecompress.exporters.onnx import (
    check_parity,
    export_onnx,
    nudged_cosine,
    parity_metrics,
    run_onnx,
)
from edgecompress.exporters.onnx_shapes import external_data_path, onnx_size_bytes
from edgecompress.exporters.qdq import run_exact, weight_storage
from edgecompress.exporters.registry import Parity
from edgecompress.io import sha256_file
from edgecompress.measure import evaluate_logits
from edgecompress.quantize.fake import is_quantized
from edgecompress.quantize.onnx_qdq import integer_ops, narrow_layers, runs_in_integer
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, ExportStage
from edgecompress.stages.configs import ExportOnnxConfig


class ExportOnnx(ExportStage):
    """model.onnx (or model.int8.onnx from a QAT model): static shape, simplified,
    checked, parity-tested in ONNX Runtime."""

    name = "export_onnx"
    Config = ExportOnnxConfig
    cfg: ExportOnnxConfig

    def export(self, model: nn.Module, ctx: BuildContext) -> Artifact:
        quantized = is_quantized(model)
        out = ctx.out_dir / (
            self.cfg.filename or ("model.int8.onnx" if quantized else "model.onnx")
        )
        example = torch.from_numpy(ctx.data.test_inputs[:1].copy())
        opset = self.cfg.opset or ctx.target.onnx_opset
        info: dict[str, object]
        if quantized:
            export_model_onnx(
                model,
                example,
                out,
                target=ctx.target,
                calibration=ctx.calibration_inputs(),
                min_cosine=self.cfg.min_cosine_int8,
            )
            ops = integer_ops(out)
            floats = len(narrow_layers(out, ctx.target.int8_min_in_channels))
            info = {
                "exporter": "torch.onnx + onnxruntime.quantization (QDQ, QAT scales)",
                "form": "QAT",
                "weight_storage": weight_storage(out),
                "integer_kernels": runs_in_integer(ops, floats),
                "float_layers": floats,
                "optimized_ops": ops,
            }
        else:
            result = export_onnx(
                model,
                example,
                out,
                opset=opset,
                exporter=self.cfg.exporter,
                simplify=self.cfg.simplify,
            )
            info = {
                "exporter": f"torch.onnx ({result.exporter})",
                "opset": result.opset,
                "nodes": {"exported": result.nodes_exported, "final": result.nodes_final},
                "simplifier": result.simplifier,
            }
            data = external_data_path(out)
            if data.exists():  # past protobuf's 2 GiB: the weights beside the graph
                info["external_data"] = {"path": data.name, "sha256": sha256_file(data)}
        art = ctx.add_artifact("onnx", ArtifactKind.onnx, "int8" if quantized else "fp32", out)
        ctx.report.add_artifact(
            art.name,
            {
                "path": out.name,
                "size_bytes": onnx_size_bytes(out),
                "sha256": sha256_file(out),
                "precision": art.precision,
                "stage": art.stage,
                **info,
            },
        )
        return art

    def verify(self, model: nn.Module, art: Artifact, ctx: BuildContext) -> Parity:
        """ONNX Runtime against PyTorch (the fake-quantized model for an INT8 file) on the
        test images, and ONNX Runtime's accuracy there."""
        quantized, name = art.precision == "int8", art.name
        inputs = ctx.data.test_inputs
        torch_out = [evaluate_logits(model, inputs)]
        if quantized:
            ort_out = [run_exact(art.path, inputs, ctx.options.threads)]
        else:
            ort_out = run_onnx(art.path, inputs, ctx.options.threads)
        parity = parity_metrics(torch_out, ort_out)
        runtime = f"ONNX Runtime {_ort_version()}"
        torch_kind = "PyTorch (fake-quantized)" if quantized else "PyTorch"
        how = f"{runtime} vs {torch_kind} on {len(inputs)} test images"
        ctx.report.add_parity(
            name,
            {
                "max_abs_diff": metric(parity["max_abs_diff"], "", how),
                "cosine": metric(parity["cosine"], "", how + ", worst output"),
            },
        )
        check_parity(
            f"{art.path.name} (ONNX Runtime)",
            parity,
            max_abs_diff=None if quantized else self.cfg.max_abs_diff,
            min_cosine=self.cfg.min_cosine_int8 if quantized else self.cfg.min_cosine,
            stability=lambda: nudged_cosine(
                lambda x: [evaluate_logits(model, x)], inputs, torch_out
            ),
        )
        if ctx.data.test_labels is None:  # ec.export: images without labels
            return parity
        metrics = classification_metrics(
            np.asarray(ort_out[0]), ctx.data.test_labels, ctx.reference_logits()
        )
        label = "onnxruntime-int8" if quantized else "onnxruntime"
        if label in ctx.report.data["accuracy"]:
            label = f"{label}-{ctx.stage_dir.name if ctx.stage_dir else name}"
        ctx.report.add_accuracy(
            label, metrics, f"{runtime}, {len(inputs)} test images, CPU", artifact=name
        )
        return parity


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
