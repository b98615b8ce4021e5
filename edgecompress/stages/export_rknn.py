"""ONNX -> RKNN for Rockchip NPUs, then the RKNN simulator's outputs against ONNX
Runtime's and its accuracy on the test split.

The source is the latest ONNX model the build made. An INT8 QDQ model (the QAT model's
export) carries its own ranges, which the toolkit takes over: what QAT trained is what
runs on the NPU. A float model is quantized by the toolkit with calibration images from
the data (mean/std from the preprocessing spec), or kept FP16 with ``quantize: false``.

When the toolkit fails on, or crashes converting, the QDQ model, the build fails, unless
the recipe allows ``fallback: float_calibrated``: then the float model quantize started
from is exported (``model.float.onnx`` in the stage's folder) and quantized by the
toolkit instead, and the report's artifact entry says so and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.errors import (
    ConfigError,
    EdgeCompressError,
    ModelLoadError,
    UnsupportedOpError,
)
from edgecompress.evaluate import classification_metrics, cosine
from edgecompress.exporters.onnx import (
    check_parity,
    degenerate_output,
    nudged_cosine,
    parity_metrics,
    run_onnx,
)
from edgecompress.exporters.qdq import run_exact
from edgecompress.io import sha256_file
from edgecompress.measure import evaluate_logits
from edgecompress.quantize.fake import is_quantized
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, ExportStage
from edgecompress.stages.configs import ExportRknnConfig

if TYPE_CHECKING:
    from pathlib import Path

    from edgecompress.exporters.registry import Parity
    from edgecompress.exporters.rknn import RknnResult

ALLOW_FALLBACK = (
    "To build anyway from the float model with the toolkit's own calibration, set "
    "`fallback: float_calibrated` on the export_rknn stage in the recipe"
)


class ExportRknn(ExportStage):
    """model.rknn converted by rknn-toolkit2 in its own interpreter and run in its simulator."""

    name = "export_rknn"
    Config = ExportRknnConfig
    cfg: ExportRknnConfig

    def export(self, model: nn.Module, ctx: BuildContext) -> Artifact:
        from edgecompress.exporters.rknn import RknnError

        platform = ctx.target.rknn_platform
        if platform is None:
            raise ConfigError(
                f"target {ctx.target.name!r} is not a Rockchip NPU; "
                "remove export_rknn from the recipe"
            )
        source = ctx.artifact(ArtifactKind.onnx, self.name, self.cfg.source)
        # A QDQ model carries its own ranges: the toolkit must not re-calibrate it.
        from_qdq = source.precision == "int8"
        quantize = self.cfg.quantize and not from_qdq
        fallback: dict[str, Any] | None = None
        try:
            result = self._convert(source.path, ctx, platform, quantize)
        except (RknnError, UnsupportedOpError, ModelLoadError) as exc:
            if not from_qdq:
                raise
            if self.cfg.fallback == "none":
                exc.args = (f"{exc}. {ALLOW_FALLBACK}",)
                raise
            fallback = self._fallback_reason(source, exc, ctx)
            source, from_qdq, quantize = self._float_onnx(ctx, exc), False, True
            try:
                result = self._convert(source.path, ctx, platform, quantize)
            except EdgeCompressError as again:
                again.args = (f"{again} (this was the fallback; before it: {exc})",)
                raise
        self._made = (source, result, from_qdq)
        return self._record(ctx, source, result, from_qdq, quantize, fallback)

    def _convert(
        self, onnx_path: Path, ctx: BuildContext, platform: str, quantize: bool
    ) -> RknnResult:
        from edgecompress.exporters.rknn import convert_rknn

        return convert_rknn(
            onnx_path,
            ctx.out_dir / self.cfg.filename,
            ctx.spec,
            platform,
            ctx.data.calibration_prepared,
            ctx.data.test_prepared,
            quantize=quantize,
            algorithm=self.cfg.algorithm,
            method=self.cfg.method,
            rknn_python=ctx.options.rknn_python,
            progress=ctx.options.progress,
            crash_dir=(ctx.stage_dir or ctx.out_dir) / "rknn_crash",
        )

    @staticmethod
    def _fallback_reason(source: Artifact, exc: Exception, ctx: BuildContext) -> dict[str, Any]:
        from edgecompress.exporters.rknn import RknnCrashError

        ctx.log(
            f"export_rknn: converting {source.path.name} failed; falling back to the float "
            f"model with the toolkit's calibration (fallback: float_calibrated). Why: {exc}"
        )
        reason: dict[str, Any] = {
            "kind": "float_calibrated",
            "from": source.name,
            "error": type(exc).__name__,
            "reason": str(exc),
        }
        if isinstance(exc, RknnCrashError):
            reason.update(
                signal=exc.signal, step=exc.step, reproducer=_relative(exc.reproducer, ctx)
            )
        return reason

    def _float_onnx(self, ctx: BuildContext, exc: Exception) -> Artifact:
        """The float model quantize started from (the teacher it set), exported to ONNX in
        this stage's folder and checked against PyTorch: a float ONNX made earlier in the
        recipe may predate pruning or merging, this one cannot."""
        from edgecompress.exporters.api import export_model_onnx

        teacher = ctx.teacher
        if teacher is None or is_quantized(teacher):
            raise ConfigError(
                f"{exc}. export_rknn's fallback (float_calibrated) converts the float model "
                "that quantize started from, and the model before this build's last "
                "quantize stage is not a float one; remove the fallback, or quantize once"
            ) from exc
        path = (ctx.stage_dir or ctx.out_dir) / "model.float.onnx"
        example = torch.from_numpy(ctx.data.test_inputs[:1].copy())
        export_model_onnx(teacher, example, path, target=ctx.target)
        art = ctx.add_artifact("onnx_float", ArtifactKind.onnx, "fp32", path, deploy=False)
        inputs = ctx.data.test_inputs
        parity = parity_metrics(
            [evaluate_logits(teacher, inputs)], run_onnx(path, inputs, ctx.options.threads)
        )
        how = f"ONNX Runtime vs PyTorch (the float model), {len(inputs)} test images"
        ctx.report.add_parity(
            art.name, {k: metric(parity[k], "", how) for k in ("max_abs_diff", "cosine")}
        )
        ctx.report.add_artifact(
            art.name,
            {
                "path": _relative(path, ctx),
                "size_bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "precision": art.precision,
                "stage": art.stage,
                "exporter": "torch.onnx (the float model quantize started from)",
                "deployed": False,
                "why": "export_rknn fallback: the source of the float-calibrated RKNN",
            },
        )
        check_parity(
            f"{path.name} (the fallback's float ONNX)",
            parity,
            max_abs_diff=1e-3,
            min_cosine=0.9999,
            remedy="The float model does not export faithfully; remove the fallback",
        )
        return art

    def _record(
        self,
        ctx: BuildContext,
        source: Artifact,
        result: RknnResult,
        from_qdq: bool,
        quantize: bool,
        fallback: dict[str, Any] | None,
    ) -> Artifact:
        precision = "int8" if (quantize or from_qdq) else "fp16"
        art = ctx.add_artifact("rknn", ArtifactKind.rknn, precision, result.path)
        ranges, self._kind = _ranges(source, from_qdq, quantize, fallback)
        ctx.report.add_artifact(
            art.name,
            {
                "path": result.path.name,
                "size_bytes": result.size_bytes,
                "sha256": sha256_file(result.path),
                "exporter": f"rknn-toolkit2 {result.toolkit_version}",
                "platform": ctx.target.rknn_platform,
                "precision": precision,
                "stage": ctx.stage_dir.name if ctx.stage_dir else None,
                "source": source.name,
                "ranges": ranges,
                "quantization": {
                    "algorithm": self.cfg.algorithm,
                    "method": self.cfg.method,
                    "calibration_images": len(ctx.data.calibration_prepared),
                },
                "fallback": fallback,
                # Where the toolkit would crash on the file as it is (exporters.rknn_graph).
                "rewritten_for_toolkit": list(result.rewrites),
                "seconds": {"convert": result.convert_s, "simulate": result.simulate_s},
            },
        )
        return art

    def verify(self, model: nn.Module, artifact: Artifact, ctx: BuildContext) -> Parity:
        """The simulator's outputs (run when converting) against ONNX Runtime's on the
        source file, per output, and the simulator's accuracy on the test split."""
        source, result, from_qdq = self._made
        threads, inputs = ctx.options.threads, ctx.data.test_inputs

        def run_source(x: np.ndarray) -> list[np.ndarray]:
            if from_qdq:
                return [run_exact(source.path, x, threads)]
            return run_onnx(source.path, x, threads)

        ort_out = run_source(inputs)
        cosines = [cosine(a, b) for a, b in zip(ort_out, result.outputs, strict=True)]
        n = len(inputs)
        version = result.toolkit_version
        how = (
            f"RKNN simulator (rknn-toolkit2 {version}) vs ONNX Runtime ({source.name}) "
            f"on {n} test images"
        )
        ctx.report.add_parity(
            artifact.name, {f"cosine[{i}]": metric(c, "", how) for i, c in enumerate(cosines)}
        )
        parity = {
            "max_abs_diff": 0.0,
            "cosine": min(cosines),
            "degenerate": float(any(degenerate_output(o) for o in result.outputs)),
        }
        check_parity(
            f"{self.cfg.filename} (RKNN simulator)",
            parity,
            max_abs_diff=None,
            min_cosine=self.cfg.min_cosine,
            options="export_rknn",
            stability=lambda: nudged_cosine(run_source, inputs, ort_out),
        )
        if ctx.data.test_labels is None:  # ec.export: images without labels
            return parity
        logits = result.outputs[0].reshape(n, -1)
        metrics = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
        ctx.report.add_accuracy(
            self.cfg.label,
            metrics,
            f"RKNN simulator (rknn-toolkit2 {version}, {self._kind}), {n} test images",
            artifact=artifact.name,
        )
        return parity


def _ranges(
    source: Artifact, from_qdq: bool, quantize: bool, fallback: dict[str, Any] | None
) -> tuple[str, str]:
    """Where the INT8 ranges came from (the artifact entry) and the accuracy's "how"."""
    if fallback:  # the float model, calibrated by the toolkit
        why = f"fallback: converting {fallback['from']} failed"
        return (
            f"rknn-toolkit2 calibration of the float model ({why})",
            f"int8, RKNN calibration of the float model ({why})",
        )
    if from_qdq:
        return "from the QDQ model (QAT/PTQ scales)", f"int8 from the {source.name} QDQ ranges"
    if quantize:
        return "rknn-toolkit2 calibration", "int8, RKNN calibration"
    return "none (fp16)", "fp16"


def _relative(path: Path, ctx: BuildContext) -> str:
    try:
        return str(path.relative_to(ctx.out_dir))
    except ValueError:
        return str(path)
