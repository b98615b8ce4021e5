"""The on-device benchmark agent: ``python3 -m edgecompress.runtime.agent JOB.json``.

The host copies this package's torch-free part (``edgecompress/__init__.py``,
``errors.py`` and ``runtime/``) to the device and runs it with the device's own Python
and runtime. Everything it has to say goes to stdout as one JSON object per line behind
:data:`MARK` (runtimes print their own logs on stdout too), as it happens:

``hello`` (interpreter, platform, runtimes found) -> ``loaded`` (load time, backend
info) -> ``idle_start``/``idle_end`` (the idle power window) -> ``loop_start`` -> ``samples``
(latencies so far, every ``progress_s``) -> ``loop_end`` -> ``result``; or ``error``.

Streaming is what lets the host keep what was measured when a device disconnects
mid-run, and lets a meter on the host side line its samples up with the loop.

Job keys: artifact, runtime (onnxruntime | rknnlite | tensorrt), options (backend:
threads, batch, inputs, core_mask, parallel), warmup, runs, min_time_s, sensors (power
sensor specs, [] for none), idle_s, host_meter (a meter on the host needs the idle
window too), sample_interval_s, progress_s, probe (only hello).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

MARK = "@@edgecompress "


def emit(event: str, **fields: Any) -> None:
    """One event line; flushed at once so a disconnect loses at most the current one."""
    sys.stdout.write(MARK + json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


def _hello() -> dict[str, Any]:
    from edgecompress.runtime.backends import available_runtimes

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "agent_file": str(Path(__file__).resolve()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "runtimes": available_runtimes(),
        "torch_imported": sys.modules.get("torch") is not None,
    }


class _Loop:
    """Times calls one at a time (or one thread per worker) and streams the samples."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.runs = int(job.get("runs", 100))
        self.min_time_s = float(job.get("min_time_s", 1.0))
        self.progress_ns = int(float(job.get("progress_s", 0.5)) * 1e9)
        self.samples: list[int] = []
        self.sent = 0
        self.lock = threading.Lock()

    def _flush(self) -> None:
        with self.lock:
            new, self.sent = self.samples[self.sent :], len(self.samples)
        if new:
            emit("samples", ms=[round(ns / 1e6, 5) for ns in new])

    def single(self, fn: Any) -> None:
        samples, clock = self.samples, time.perf_counter_ns
        start = clock()
        deadline, next_emit = start + int(self.min_time_s * 1e9), start + self.progress_ns
        while len(samples) < self.runs or clock() < deadline:
            t0 = clock()
            fn()
            t1 = clock()
            samples.append(t1 - t0)
            if t1 >= next_emit:
                self._flush()
                next_emit = t1 + self.progress_ns

    def threaded(self, workers: list[Any]) -> None:
        """Every worker (an NPU core's runtime) busy for the same window."""
        clock = time.perf_counter_ns
        deadline = clock() + int(self.min_time_s * 1e9)
        errors: list[BaseException] = []

        def work(fn: Any) -> None:
            try:
                while (len(self.samples) < self.runs or clock() < deadline) and not errors:
                    t0 = clock()
                    fn()
                    dt = clock() - t0
                    with self.lock:
                        self.samples.append(dt)
            except BaseException as exc:  # re-raised in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            threads[0].join(self.progress_ns / 1e9)
            self._flush()
        if errors:
            raise errors[0]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from edgecompress.runtime.backends import load_backend
    from edgecompress.runtime.latency import LatencyStats
    from edgecompress.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    recorder, sensors, sensor_notes = _sensors(job)
    rss_before = current_rss_bytes()
    was_reset = reset_peak_rss()
    t0 = time.perf_counter_ns()
    backend = load_backend(job["runtime"], Path(job["artifact"]), job.get("options") or {})
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    emit("loaded", load_ms=load_ms, info=backend.info())
    workers = backend.workers() if hasattr(backend, "workers") else [backend.run]
    warm: list[float] = []  # the first call pays for lazy allocation and kernel choice
    for _ in range(int(job.get("warmup", 10))):
        for w in workers:
            t = time.perf_counter_ns()
            w()
            warm.append((time.perf_counter_ns() - t) / 1e6)
    loop = _Loop(job)
    idle = (0.0, 0.0)
    # The idle baseline, for sensors here or a meter on the host; nobody needs it otherwise.
    wanted = recorder is not None or bool(job.get("host_meter"))
    idle_s = float(job.get("idle_s", 1.0)) if wanted else 0.0
    if recorder is not None:
        recorder.start()
    if idle_s > 0:
        emit("idle_start")
        i0 = time.monotonic()
        time.sleep(idle_s)
        idle = (i0, time.monotonic())
        emit("idle_end", seconds=idle[1] - idle[0])
    emit("loop_start")
    w0, m0 = time.perf_counter_ns(), time.monotonic()
    if len(workers) == 1:
        loop.single(workers[0])
    else:
        loop.threaded(workers)
    wall_s, m1 = (time.perf_counter_ns() - w0) / 1e9, time.monotonic()
    loop._flush()
    emit("loop_end", calls=len(loop.samples), seconds=wall_s)
    batch = int((job.get("options") or {}).get("batch", 1))
    energy: list[dict[str, Any]] = []
    if recorder is not None:
        recorder.stop()
        energy = recorder.energy(idle=idle, loop=(m0, m1), n=len(loop.samples) * batch)
    import numpy as np

    stats = LatencyStats.from_samples(
        np.asarray(loop.samples) / 1e6, int(job.get("warmup", 10)), batch
    ).to_dict()
    stats["throughput_per_s"] = len(loop.samples) * batch / wall_s  # true for threaded too
    info = backend.info()
    backend.close()
    peak = peak_rss_bytes()
    return {
        **info,
        "load_ms": load_ms,
        "first_call_ms": warm[0] if warm else None,
        "warmup_ms": sum(warm),
        "latency": stats,
        "calls": len(loop.samples),
        "loop_s": wall_s,
        "workers": len(workers),
        "memory": {
            "peak_rss_bytes": peak,
            "rss_before_load_bytes": rss_before,
            "peak_rss_delta_bytes": (
                peak - rss_before if was_reset and peak and rss_before else None
            ),
            "method": "VmHWM reset before load" if was_reset else "process VmHWM",
        },
        "power_sensors": sensors,
        "power_notes": sensor_notes,
        "energy": energy,
    }


def _sensors(job: dict[str, Any]) -> tuple[Any, list[str], list[str]]:
    specs = job.get("sensors") or []
    if not specs:
        return None, [], []
    from edgecompress.runtime.power import PowerRecorder, SensorError, open_sensors

    notes: list[str] = []
    try:
        sensors = open_sensors(specs)
    except SensorError as exc:
        if specs != ["auto"]:
            raise
        sensors, notes = [], [str(exc)]
    if not sensors:
        return None, [], notes or ["no power sensor found on this device"]
    interval = float(job.get("sample_interval_s", 0.01))
    return PowerRecorder(sensors, interval_s=interval), [s.name for s in sensors], notes


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgecompress.runtime.agent JOB.json", file=sys.stderr)
        return 2
    try:
        job = json.loads(Path(args[0]).read_text())
        emit("hello", **_hello())
        if job.get("probe"):
            return 0
        result = run_job(job)
        result["torch_imported"] = sys.modules.get("torch") is not None
        emit("result", **result)
        return 0
    except Exception as exc:
        from edgecompress.errors import EdgeCompressError

        emit(
            "error",
            type=type(exc).__name__,
            message=str(exc),
            expected=isinstance(exc, EdgeCompressError),
            traceback=None if isinstance(exc, EdgeCompressError) else traceback.format_exc(),
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
