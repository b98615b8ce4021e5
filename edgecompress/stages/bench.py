"""Latency, memory and energy of every artifact: on this machine where it can run the
artifact (ONNX Runtime), and on every device the build was given (``--device``).
Each artifact also gets the analytic energy estimate for the target, so a report always
has an energy figure and says which kind it is.

In the same run, the original model and the model after every stage that changed it are
exported to ONNX and timed the same way, so the summary's speed-ups are ratios measured
together (and an INT8 artifact is compared with the FP32 form of the same model)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress import memory
from edgecompress.errors import EdgeCompressError
from edgecompress.report.latency import compact_energy, latency_entry
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import BenchConfig


class Bench(Stage):
    """Every artifact on this machine (when it can run it) and on every given device."""

    name = "bench"
    Config = BenchConfig
    cfg: BenchConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from edgecompress.runtime.harness import BenchOptions

        h, w = ctx.spec.input_size
        opts = BenchOptions(
            runs=self.cfg.runs,
            warmup=self.cfg.warmup,
            min_time_s=self.cfg.min_time_s,
            threads=self.cfg.threads or ctx.options.threads,
            # what an NPU runtime takes; ONNX reads its own shapes
            inputs=((1, h, w, ctx.spec.channels),),
            sensors=tuple(self.cfg.sensors),
            idle_s=self.cfg.idle_s,
            python=None,
            ssh_options=ctx.options.ssh_options,
            timeout_s=self.cfg.timeout_s,
            onnx=_latest_onnx(ctx),
            level=ctx.target.graph_optimization,
        )
        timed = self._on_host(ctx, opts)
        for device in ctx.options.devices:
            self._on_device(ctx, device, opts)
        if ctx.target.on_this_machine and self.cfg.deploy == "fastest":
            from edgecompress.stages.deploy_form import deploy_fastest

            deploy_fastest(ctx, timed, self.cfg.max_accuracy_drop)
        return model

    def _on_host(self, ctx: BuildContext, opts: Any) -> dict[Path, dict[str, Any]]:
        """The original, every stage's model (as ONNX) and every artifact this machine can
        run, timed in interleaved rounds so that a change in the machine's load while the
        bench runs falls on every row alike (each row keeps its fastest round)."""
        from edgecompress.runtime.backends import backend_for

        jobs: list[tuple[Path, Callable[[dict[str, Any]], None]]] = self._model_jobs(ctx)
        for art in ctx.artifacts:
            if backend_for(art.path) == "onnxruntime":
                jobs.append((art.path, partial(_record_artifact, ctx, art.name)))
            else:
                ctx.report.add_latency(
                    f"{art.name}@{ctx.target.name}",
                    {
                        "artifact": art.name,
                        "measured": False,
                        "reason": f"needs a {ctx.target.name} device: build --device URL",
                        "energy": estimate_only(art.path, ctx.target.name, opts),
                    },
                )
        results = _interleaved([path for path, _ in jobs], opts, self.cfg.rounds, ctx)
        for (_, record), res in zip(jobs, results, strict=True):
            record(res)
        return {path: res for (path, _), res in zip(jobs, results, strict=True)}

    def _model_jobs(self, ctx: BuildContext) -> list[tuple[Path, Callable[[dict[str, Any]], None]]]:
        """ONNX files of the original and of each stage's model, and what to record."""
        from edgecompress.model_io import load_checkpoint
        from edgecompress.quantize.fake import float_copy

        assert ctx.stage_dir is not None
        folder = ctx.stage_dir / "models"
        folder.mkdir(exist_ok=True)
        rows = ctx.report.data.get("models", [])
        jobs: list[tuple[Path, Callable[[dict[str, Any]], None]]] = []
        for i, ((label, snapshot), row) in enumerate(zip(ctx.snapshots, rows, strict=True)):
            model = snapshot if isinstance(snapshot, nn.Module) else load_checkpoint(snapshot)
            path = _model_onnx(model, ctx, folder / f"{label}.onnx")
            row.update(onnx=str(path.relative_to(ctx.out_dir)), onnx_bytes=path.stat().st_size)
            jobs.append((path, partial(_record_row, row)))
            if i == len(rows) - 1 and row.get("quantized"):  # the same model in FP32
                fp = _model_onnx(float_copy(model), ctx, folder / f"{label}.fp32.onnx")
                jobs.append((fp, partial(_record_float, row)))
            # A stage's model loaded for its export goes before the next one is loaded
            # (RegNetY-128GF's bench was killed for memory holding two and their exports).
            del model
            memory.release()
        return jobs

    def _on_device(self, ctx: BuildContext, device: str, opts: Any) -> None:
        from dataclasses import replace

        from edgecompress.runtime.backends import backend_for
        from edgecompress.runtime.harness import DeviceDisconnected, bench_artifact, probe_device

        opts = replace(opts, python=ctx.options.device_python)
        try:
            runtimes = probe_device(device, opts).get("runtimes", {})
        except EdgeCompressError as exc:
            for name in (a.name for a in ctx.artifacts):
                ctx.report.add_latency(
                    f"{name}@{device}",
                    {"artifact": name, "measured": False, "reason": f"unreachable: {exc}"},
                )
            ctx.log(f"bench: {device} is unreachable: {exc}")
            return
        for art in ctx.artifacts:
            name, path = art.name, art.path
            runtime, key = backend_for(path), f"{name}@{device}"
            if not runtimes.get(runtime):
                reason = f"{device} has no {runtime} (found: {_found(runtimes)})"
                ctx.report.add_latency(key, {"artifact": name, "measured": False, "reason": reason})
                continue
            ctx.log(f"bench: {name} on {device}")
            try:
                res = bench_artifact(
                    path, ctx.target.name, device, opts, progress=ctx.options.progress
                )
            except DeviceDisconnected as exc:
                entry = {"artifact": name, "measured": False, "reason": str(exc)}
                ctx.report.add_latency(key, {**entry, "partial": exc.partial})
                continue
            except EdgeCompressError as exc:
                ctx.report.add_latency(
                    key, {"artifact": name, "measured": False, "reason": str(exc)}
                )
                continue
            ctx.report.add_latency(key, latency_entry(name, res))


def _record_artifact(ctx: BuildContext, name: str, res: dict[str, Any]) -> None:
    ctx.report.add_latency(f"{name}@host", latency_entry(name, res))


def _record_float(row: dict[str, Any], res: dict[str, Any]) -> None:
    row["float_p50_ms"] = res["latency"]["p50_ms"]


def _record_row(row: dict[str, Any], res: dict[str, Any]) -> None:
    energy = compact_energy(res["energy"])
    row.update(
        p50_ms=res["latency"]["p50_ms"],
        energy_j=energy["energy_per_inference_j"],
        energy_kind=energy["kind"],
    )


def _interleaved(
    paths: list[Path], opts: Any, rounds: int, ctx: BuildContext
) -> list[dict[str, Any]]:
    """Each file timed ``rounds`` times, round-robin; per file, the round with the lowest
    p50. On a shared 2-core machine the same INT8 file, timed in one session, ran at
    0.35 ms p50 in some 70 ms stretches and 0.47-0.53 ms in others: a median round still
    carries that noise (the same graph timed twice in one build came out 17% apart), the
    least disturbed round is what each file runs at and compares like for like."""
    from dataclasses import replace

    from edgecompress.runtime.harness import bench_artifact

    share = replace(opts, runs=max(1, opts.runs // rounds), min_time_s=opts.min_time_s / rounds)
    tries: list[list[dict[str, Any]]] = [[] for _ in paths]
    for r in range(rounds):
        for i, path in enumerate(paths):
            ctx.log(f"bench: {path.name} on this machine (round {r + 1}/{rounds})")
            tries[i].append(bench_artifact(path, "host", "local", share, progress=False))
    return [{**min(t, key=lambda x: x["latency"]["p50_ms"]), "rounds": rounds} for t in tries]


def _latest_onnx(ctx: BuildContext) -> Path | None:
    from edgecompress.artifacts import ArtifactKind

    art = ctx.artifacts.latest(ArtifactKind.onnx)
    return art.path if art else None


def _model_onnx(model: nn.Module, ctx: BuildContext, out: Path) -> Path:
    """``model`` as the ONNX a build would ship: INT8 QDQ for a fake-quantized model."""
    import torch

    from edgecompress.exporters.api import export_model_onnx

    example = torch.from_numpy(ctx.data.test_inputs[:1].copy())
    calib = ctx.calibration_inputs()
    return export_model_onnx(model, example, out, target=ctx.target, calibration=calib).path


def _found(runtimes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in runtimes.items() if v) or "none"


def estimate_only(path: Path, target: str, opts: Any) -> dict[str, Any]:
    """The analytic figure for an artifact no device here can run."""
    from edgecompress.runtime.harness import energy_summary

    return compact_energy(energy_summary(path, target, opts, []))
