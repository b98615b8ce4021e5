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
sensor specs, [] for none), idle_s, settle_s (pause before the idle window), host_meter
(a meter on the host needs the idle window too), sample_interval_s, progress_s, max_s
(the agent stops itself after this long), probe (only hello).

A job with a ``suite`` key times a set of small ONNX models in interleaved rounds for
``edgecompress probe`` (:mod:`edgecompress.runtime.suite`): ``hello`` -> ``suite_round``
(after each round) -> ``result`` (``suite``: per-model latencies, output comparisons).

A job with a ``stream`` key runs detection on real frames instead of timing one call
(:mod:`edgecompress.runtime.detect_stream`; rknnlite, ``options.parallel`` contexts):
``hello`` -> ``loaded`` -> ``frames`` (per-frame records so far, every ``progress_s``) ->
``stream_end`` -> ``result`` (``stream``: frames/s and per-stage times). Its keys: images
(a folder), input_size ([height, width]), frames, in_flight, strides, reg_max, post
(conf, iou, max_det, multi_label), detections (records carry the boxes too).
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
_events: Any = None  # the stream events go to: the original stdout, see _claim_stdout
_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One event line; flushed at once so a disconnect loses at most the current one."""
    out = _events or sys.stdout
    line = MARK + json.dumps({"event": event, **fields}, default=str) + "\n"
    with _lock:
        out.write(line)
        out.flush()


def _claim_stdout() -> None:
    """Keep file descriptor 1 for events alone: native runtimes print from C with their
    own buffering, which would split event lines; their output goes to stderr instead."""
    global _events
    sys.stdout.flush()
    _events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _deadline(seconds: float) -> None:
    """A device must not keep running a benchmark whose host has given up on it."""

    def stop() -> None:
        emit("error", type="DeviceError", message=f"agent stopped after {seconds:.0f} s",
             expected=True, traceback=None)  # fmt: skip
        os._exit(124)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()


def hello_info() -> dict[str, Any]:
    """What the ``hello`` event says: interpreter, platform, CPU, runtimes found."""
    from edgecompress.runtime.backends import available_runtimes

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "agent_file": str(Path(__file__).resolve()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu(),
        "hostname": platform.node(),
        "runtimes": available_runtimes(),
        "torch_imported": sys.modules.get("torch") is not None,
    }


def _cpu() -> dict[str, Any]:
    """The processor's model name and instruction-set flags (Linux ``/proc/cpuinfo``: x86
    ``model name``/``flags``, Arm ``Features``): what decides which kernels a runtime
    picks, so what a measured profile is keyed by."""
    model = ""
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": []}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = val.strip()
        elif key in ("flags", "features") and not flags:
            flags = val.split()
    return {"model": model or platform.machine(), "flags": sorted(flags)}


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
        for t in threads:
            while t.is_alive():
                t.join(self.progress_ns / 1e9)
                self._flush()
        if errors:
            raise errors[0]


def _memory(rss_before: int | None, was_reset: bool) -> dict[str, Any]:
    from edgecompress.runtime.memory import peak_rss_bytes

    peak = peak_rss_bytes()
    return {
        "peak_rss_bytes": peak,
        "rss_before_load_bytes": rss_before,
        "peak_rss_delta_bytes": (peak - rss_before if was_reset and peak and rss_before else None),
        "method": "VmHWM reset before load" if was_reset else "process VmHWM",
    }


class _FrameSink:
    """Receives the stream's frames in order; sends their records every ``progress_s``."""

    def __init__(self, progress_s: float, detections: bool) -> None:
        self.progress_ns, self.detections = int(progress_s * 1e9), detections
        self.batch: list[dict[str, Any]] = []
        self.next_emit = time.perf_counter_ns() + self.progress_ns

    def __call__(self, frame: Any) -> None:
        self.batch.append(frame.record(self.detections))
        now = time.perf_counter_ns()
        if now >= self.next_emit:
            self.flush()
            self.next_emit = now + self.progress_ns

    def flush(self) -> None:
        if self.batch:
            emit("frames", frames=self.batch)
            self.batch = []


def run_stream_job(job: dict[str, Any]) -> None:
    """Detection on real frames over ``options.parallel`` NPU contexts (module docstring)."""
    from edgecompress.errors import ConfigError
    from edgecompress.runtime.backends import load_backend
    from edgecompress.runtime.detect_post import PostConfig
    from edgecompress.runtime.detect_stream import StreamConfig, run_stream
    from edgecompress.runtime.images import list_images
    from edgecompress.runtime.memory import current_rss_bytes, reset_peak_rss

    spec = job["stream"]
    images = list_images(Path(spec["images"]))
    cfg = StreamConfig(
        input_size=(int(spec["input_size"][0]), int(spec["input_size"][1])),
        frames=int(spec.get("frames", 100)),
        in_flight=int(spec.get("in_flight") or 0),
        strides=tuple(int(s) for s in spec["strides"]) if spec.get("strides") else None,
        reg_max=int(spec["reg_max"]) if spec.get("reg_max") else None,
        post=PostConfig(**(spec.get("post") or {})),
        warmup=int(job.get("warmup", 2)),
    )
    rss_before, was_reset = current_rss_bytes(), reset_peak_rss()
    t0 = time.perf_counter_ns()
    backend = load_backend(job["runtime"], Path(job["artifact"]), job.get("options") or {})
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    info = backend.info()
    emit("loaded", load_ms=load_ms, info=info)
    if not hasattr(backend, "contexts"):
        raise ConfigError(
            f"the detection stream runs on rknnlite (an .rknn file), not {job['runtime']}"
        )
    sink = _FrameSink(float(job.get("progress_s", 0.5)), bool(spec.get("detections")))
    try:
        res = run_stream(backend.contexts(), images, cfg, sink)
    finally:
        sink.flush()  # what was delivered reaches the host, a failure or not
    emit("stream_end", frames=len(res.frames), seconds=res.stats["seconds"])
    emit(
        "result",
        **info,
        load_ms=load_ms,
        first_call_ms=res.warmup_ms[0] if res.warmup_ms else None,
        warmup_ms=sum(res.warmup_ms),
        stream=res.stats,
        strides=list(res.strides),
        images=len(images),
        memory=_memory(rss_before, was_reset),
        torch_imported=sys.modules.get("torch") is not None,
    )
    try:
        backend.close()
    except Exception as exc:
        emit("warning", message=f"releasing the runtime failed: {exc}")


def run_job(job: dict[str, Any]) -> None:
    from edgecompress.runtime.backends import load_backend
    from edgecompress.runtime.latency import LatencyStats
    from edgecompress.runtime.memory import current_rss_bytes, reset_peak_rss

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
    idle = _idle_window(job, recorder)
    emit("loop_start")
    w0, m0 = time.perf_counter_ns(), time.monotonic()
    if len(workers) == 1:
        loop.single(workers[0])
    else:
        loop.threaded(workers)
    wall_s, m1 = (time.perf_counter_ns() - w0) / 1e9, time.monotonic()
    loop._flush()
    emit("loop_end", calls=len(loop.samples), seconds=wall_s)
    info = backend.info()
    items = int(info.get("batch") or 1)  # what one call really processes
    energy = _energy(recorder, idle, (m0, m1), len(loop.samples) * items, sensor_notes)
    import numpy as np

    stats = LatencyStats.from_samples(
        np.asarray(loop.samples) / 1e6, int(job.get("warmup", 10)), items
    ).to_dict()
    stats["throughput_per_s"] = len(loop.samples) * items / wall_s  # true for threaded too
    emit(
        "result",
        **info,
        load_ms=load_ms,
        first_call_ms=warm[0] if warm else None,
        warmup_ms=sum(warm),
        latency=stats,
        calls=len(loop.samples),
        items_per_call=items,
        loop_s=wall_s,
        workers=len(workers),
        memory=_memory(rss_before, was_reset),
        power_sensors=sensors,
        power_notes=sensor_notes,
        energy=energy,
        torch_imported=sys.modules.get("torch") is not None,
    )
    try:  # after the result: a crash while releasing the runtime loses nothing
        backend.close()
    except Exception as exc:
        emit("warning", message=f"releasing the runtime failed: {exc}")


def _idle_window(job: dict[str, Any], recorder: Any) -> tuple[float, float]:
    """The idle baseline, for sensors here or a meter on the host; after a settle pause,
    so clocks and rails ramped up by the warm-up do not count as idle."""
    wanted = recorder is not None or bool(job.get("host_meter"))
    idle_s = float(job.get("idle_s", 1.0)) if wanted else 0.0
    if recorder is not None:
        recorder.start()
    if idle_s <= 0:
        return (0.0, 0.0)
    time.sleep(float(job.get("settle_s", 0.5)))
    emit("idle_start")
    i0 = time.monotonic()
    time.sleep(idle_s)
    idle = (i0, time.monotonic())
    emit("idle_end", seconds=idle[1] - idle[0])
    return idle


def _energy(
    recorder: Any, idle: tuple[float, float], loop: tuple[float, float], n: int, notes: list[str]
) -> list[dict[str, Any]]:
    """Per-sensor energy; a sensor problem becomes a note, never the loss of the latency."""
    if recorder is None:
        return []
    from edgecompress.errors import EdgeCompressError

    try:
        recorder.stop()
        if idle[1] <= idle[0]:
            notes.append("no idle window (idle_s = 0): energy per inference needs a baseline")
            return []
        return list(recorder.energy(idle=idle, loop=loop, n=n))
    except EdgeCompressError as exc:
        notes.append(f"energy not computed: {exc}")
        return []


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
        _claim_stdout()
        job = json.loads(Path(args[0]).read_text())
        if job.get("max_s"):
            _deadline(float(job["max_s"]))
        emit("hello", **hello_info())
        if job.get("probe"):
            return 0
        if job.get("suite"):
            from edgecompress.runtime.suite import run_suite

            threads = int((job.get("options") or {}).get("threads") or 1)
            emit("result", suite=run_suite(job["suite"], threads, emit))
        elif job.get("stream"):
            run_stream_job(job)
        else:
            run_job(job)
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
