"""How fast a PyTorch model runs once exported: ONNX Runtime p50s taken in interleaved
rounds, for the choices that read speed (pruning allocations by latency, merges, the
speed plan). Above the exporters it calls; :mod:`edgecompress.measure` stays below them."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from torch import Tensor, nn

from edgecompress.errors import UnsupportedOpError


def onnx_latency_ms(model: nn.Module, example: Tensor, threads: int = 1, runs: int = 60) -> float:
    """Median ONNX Runtime latency (batch of ``example``), after warm-up."""
    return onnx_latencies_ms([model], example, threads, runs, rounds=1)[0]


def onnx_latencies_ms(
    models: Iterable[nn.Module],
    example: Tensor,
    threads: int = 1,
    runs: int = 60,
    rounds: int = 3,
) -> list[float]:
    """Median ONNX Runtime latency of each model, all timed in turns
    (:func:`interleaved_p50`). ``models`` may be a generator: each is exported and dropped
    before the next is made."""
    from edgecompress.exporters.api import export_model_onnx

    # The TorchScript exporter is several times faster to run than dynamo and gives the
    # same graph for timing purposes; the shipped artifact uses the build's one. Dynamo
    # where TorchScript has no export (e.g. VGG's adaptive 7x7 pool of a map 7 does not
    # divide, as at any input but 224 px): the candidates share their operators, so the
    # rest go to dynamo straight away.
    exporter = "torchscript"
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, model in enumerate(models):
            paths.append(Path(tmp) / f"candidate{i}.onnx")
            if exporter == "torchscript":
                try:
                    export_model_onnx(
                        model, example, paths[-1], opset=17, exporter=exporter, simplify=False
                    )
                    continue
                except UnsupportedOpError:
                    exporter = "dynamo"
            export_model_onnx(model, example, paths[-1], exporter=exporter, simplify=False)
        return interleaved_p50(paths, rounds, threads=threads, warmup=10, runs=runs, min_time_s=0.0)


def interleaved_p50(
    paths: list[Path],
    rounds: int = 3,
    *,
    threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    min_time_s: float = 1.0,
) -> list[float]:
    """ONNX Runtime p50 (ms, batch 1) of each file, timed in turns (p50 over at least
    ``runs`` runs after ``warmup``), ``rounds`` rounds, the lowest round kept: a job beside
    this one slows whichever run it overlaps, not the comparison."""
    from edgecompress.runtime.onnxrt import bench_onnx

    best = [float("inf")] * len(paths)
    for _ in range(max(rounds, 1)):
        for i, path in enumerate(paths):
            res = bench_onnx(path, threads=threads, warmup=warmup, runs=runs, min_time_s=min_time_s)
            best[i] = min(best[i], float(res["latency"]["p50_ms"]))
    return best
