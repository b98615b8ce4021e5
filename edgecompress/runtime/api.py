"""``ec.bench``: latency, memory and energy of an artifact on a device, from Python.

    result = ec.bench("out/model.int8.onnx")                    # this machine
    result = ec.bench(arts[-1], device="ssh://radxa@rock5b", npu_cores=3)

Torch-free, like the rest of ``edgecompress.runtime``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.runtime.harness import BenchOptions, bench_artifact


def bench(
    artifact: Any, device: str = "local", *, target: str | None = None, **options: Any
) -> dict[str, Any]:
    """Benchmark ``artifact`` (a path or an ``Artifact`` record) on ``device``
    (``local``, ``ssh://user@host`` or ``adb://SERIAL``); ``options`` are
    ``BenchOptions`` fields (runs, warmup, min_time_s, threads, parallel, sensors, ...)."""
    from edgecompress.targets import target_for_file  # pydantic: not on a board's agent

    path = Path(getattr(artifact, "path", artifact))
    opts = BenchOptions(**options)
    return bench_artifact(path, target or target_for_file(path), device, opts)
