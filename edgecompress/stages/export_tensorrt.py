"""ONNX -> TensorRT engine on the device the build names (``--device ssh://user@jetson``),
or on this machine when it has trtexec (a lent GPU machine): the engine is copied back to
``out/`` and trtexec's own timing of it is recorded. With neither, the build keeps the
ONNX file TensorRT wants and says how to build the engine on the board.

The ONNX file was proven against PyTorch by export_onnx (ONNX Runtime); TensorRT's outputs
are checked on the board by the bench stage's agent where it runs."""

from __future__ import annotations

import shutil

from torch import nn

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.errors import ConfigError
from edgecompress.exporters.registry import Parity
from edgecompress.exporters.tensorrt import (
    TRTEXEC,
    EngineResult,
    build_engine,
    how_to_build,
)
from edgecompress.io import sha256_file
from edgecompress.stages.base import BuildContext, ExportStage
from edgecompress.stages.configs import ExportTensorrtConfig


class ExportTensorrt(ExportStage):
    """model.engine built by trtexec where it will run."""

    name = "export_tensorrt"
    Config = ExportTensorrtConfig
    cfg: ExportTensorrtConfig

    def export(self, model: nn.Module, ctx: BuildContext) -> Artifact | None:
        from edgecompress.runtime.transports import parse_device

        if ctx.target.runtime != "tensorrt":
            raise ConfigError(
                f"target {ctx.target.name!r} does not run TensorRT engines; "
                "remove export_tensorrt from the recipe"
            )
        source = ctx.artifact(ArtifactKind.onnx, self.name, self.cfg.source)
        precision = "int8" if source.precision == "int8" else "fp16"
        where = _where(ctx)
        if where is None:
            how = how_to_build(source.path.name, precision, self.cfg.filename)
            ctx.report.data["tensorrt"] = {"built": False, "onnx": source.path.name, "how": how}
            ctx.log(f"export_tensorrt: {how}")
            return None
        transport = parse_device(
            where, python=ctx.options.device_python, ssh_options=ctx.options.ssh_options
        )
        out = ctx.out_dir / self.cfg.filename
        ctx.log(f"export_tensorrt: building {out.name} from {source.path.name} on {where}")
        result = build_engine(source.path, out, precision, transport, self.cfg.timeout_s)
        return self._record(ctx, source.name, precision, result)

    def verify(self, model: nn.Module, artifact: Artifact, ctx: BuildContext) -> Parity:
        """Nothing here: the engine runs only on its GPU, where the bench stage's agent
        compares its outputs (the ONNX it came from was proven by export_onnx)."""
        return {}

    def _record(self, ctx: BuildContext, source: str, precision: str, r: EngineResult) -> Artifact:
        art = ctx.add_artifact("tensorrt", ArtifactKind.tensorrt, precision, r.path)
        ctx.report.add_artifact(
            art.name,
            {
                "path": r.path.name,
                "size_bytes": r.path.stat().st_size,
                "sha256": sha256_file(r.path),
                "exporter": f"trtexec (TensorRT {r.tensorrt or '?'}) on {r.where}",
                "command": r.command,
                "device": r.device,
                "precision": precision,
                "stage": ctx.stage_dir.name if ctx.stage_dir else None,
                "source": source,
                "seconds": {"build": r.seconds},
            },
        )
        ctx.report.data["tensorrt"] = {"built": True, "where": r.where, "artifact": art.name}
        if r.latency_ms.get("median") is not None:
            ctx.report.add_latency(
                f"{art.name}@{r.where}:trtexec",
                {
                    "artifact": art.name,
                    "measured": True,
                    "device": r.where,
                    "cpu": r.device,
                    "runtime": f"tensorrt {r.tensorrt or ''}".strip(),
                    "p50_ms": r.latency_ms["median"],
                    "p90_ms": r.latency_ms.get("p90"),
                    "p99_ms": r.latency_ms.get("p99"),
                    "mean_ms": r.latency_ms.get("mean"),
                    "min_ms": r.latency_ms.get("min"),
                    "gpu_compute_ms": r.gpu_compute_ms,
                    "throughput_per_s": r.throughput_qps,
                    "method": "trtexec's own timing right after the build: median host "
                    "latency (H2D + GPU compute + D2H), batch 1, its default run length",
                },
            )
        return art


def _where(ctx: BuildContext) -> str | None:
    """The first device the build names, else this machine when it has trtexec."""
    if ctx.options.devices:
        return ctx.options.devices[0]
    return "local" if any(shutil.which(t) for t in TRTEXEC) else None
