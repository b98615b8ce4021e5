"""Latency and memory of every artifact this machine can run (host: ONNX Runtime).
Artifacts for other devices are listed as not measured, with the reason."""

from __future__ import annotations

import platform

from pydantic import Field
from torch import nn

from edgecompress.stages.base import BuildContext, Stage, StageConfig, register_stage


class BenchConfig(StageConfig):
    runs: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    min_time_s: float = Field(1.0, ge=0)
    threads: int | None = Field(None, ge=1, description="default: the build's --threads")


@register_stage
class Bench(Stage):
    """Host latency (p50/p90/p99/mean/std) and peak memory through ONNX Runtime."""

    name = "bench"
    Config = BenchConfig
    cfg: BenchConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from edgecompress.runtime.onnxrt import bench_onnx

        threads = self.cfg.threads or ctx.options.threads
        for name, path in ctx.artifacts.items():
            if path.suffix != ".onnx":
                ctx.report.add_latency(
                    f"{name}@{ctx.target.name}",
                    {
                        "artifact": name,
                        "measured": False,
                        "reason": f"needs a {ctx.target.name} device (on-device benchmarking)",
                    },
                )
                continue
            res = bench_onnx(
                path,
                threads=threads,
                warmup=self.cfg.warmup,
                runs=self.cfg.runs,
                min_time_s=self.cfg.min_time_s,
            )
            lat = res["latency"]
            ctx.report.add_latency(
                f"{name}@host",
                {
                    "artifact": name,
                    "measured": True,
                    "device": "host",
                    "cpu": platform.processor() or platform.machine(),
                    "runtime": f"onnxruntime {res['runtime_version']}",
                    "threads": threads,
                    **lat,
                    "load_ms": res["load_ms"],
                    "peak_rss_bytes": res["peak_rss_bytes"],
                    "method": f"median of {lat['runs']} timed runs after {lat['warmup']} warm-up, "
                    f"batch 1, random inputs, {threads} thread(s)",
                },
            )
        return model
