"""The host side of a device benchmark: stage the agent and the artifact on the device,
run it, follow its event stream, and turn it into one JSON-able result.

>>> res = bench_artifact(Path("model.onnx"), "host", "local", BenchOptions())  # doctest: +SKIP
>>> res["latency"]["p50_ms"], res["energy"]["kind"]  # doctest: +SKIP
(0.31, 'analytic')
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgecompress
from edgecompress import errors
from edgecompress.errors import DeviceError, EdgeCompressError
from edgecompress.io import external_data_path
from edgecompress.runtime.agent import MARK
from edgecompress.runtime.backends import backend_for
from edgecompress.runtime.latency import LatencyStats
from edgecompress.runtime.transports import Transport, parse_device

PACKAGE = Path(edgecompress.__file__).parent
# What the device needs: the torch-free runtime and nothing that runs only on the host.
# What the on-device agent runs from (an allow-list: nothing host-side travels to a board).
AGENT_FILES = (
    "__init__.py", "agent.py", "latency.py", "memory.py", "onnxrt.py",
    "detect_post.py", "detect_stream.py", "images.py", "suite.py",
)  # fmt: skip
AGENT_PACKAGES = ("backends", "power")


@dataclass(frozen=True)
class BenchOptions:
    """How to time one artifact on one device (the CLI's ``bench`` flags)."""

    runs: int = 200
    warmup: int = 20
    min_time_s: float = 1.0
    threads: int = 1
    batch: int = 1
    inputs: tuple[tuple[int, ...], ...] = ()  # shapes, for runtimes that cannot tell
    # (input name or "" for a model's one input, shape): fixes an ONNX model's dynamic
    # dimensions; checked against its static ones.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    input_dtype: str = "uint8"
    core_mask: str = "auto"
    parallel: int = 1
    sensors: tuple[str, ...] = ("auto",)
    host_sensors: tuple[str, ...] = ()
    idle_s: float = 1.0
    python: str | None = None
    ssh_options: tuple[str, ...] = ()
    timeout_s: float = 600.0
    onnx: Path | None = None  # the ONNX graph behind an .rknn/.engine, for the estimate
    precision: str | None = None
    level: str = "all"  # ONNX Runtime's graph optimisation level (a probe may choose another)


class RunStopped(DeviceError):
    """A device run stopped before its result; ``partial`` holds what was measured."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


class DeviceDisconnected(RunStopped):
    """The connection to a device was lost mid-run; ``partial`` holds what was measured."""


@dataclass
class AgentRun:
    hello: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    samples_ms: list[float] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)  # a stream's frame records
    stream: dict[str, Any] | None = None  # the job's stream spec, for a stream job
    marks: dict[str, float] = field(default_factory=dict)  # host monotonic at receipt
    log: list[str] = field(default_factory=list)

    def partial(self) -> dict[str, Any]:
        part: dict[str, Any] = {"complete": False, "device_info": self.hello, **self.loaded}
        if self.samples_ms:
            stats = LatencyStats.from_samples(np.asarray(self.samples_ms), 0).to_dict()
            part["latency"] = stats
        part["calls_received"] = len(self.samples_ms)
        if self.stream is not None:
            from edgecompress.runtime.detect_stream import stream_stats

            contexts = int(self.loaded.get("parallel") or 1)
            slots = int(self.stream.get("in_flight") or 2 * contexts)
            part["stream"] = stream_stats(self.frames, contexts, slots)
            part["frames"] = self.frames
        return part


def make_bundle(dest: Path) -> None:
    """The files the agent runs from, laid out as the ``edgecompress`` package."""
    (dest / "edgecompress").mkdir(parents=True)
    for name in ("__init__.py", "errors.py"):
        shutil.copy2(PACKAGE / name, dest / "edgecompress" / name)
    runtime = PACKAGE / "runtime"
    paths = [runtime / f for f in AGENT_FILES]
    paths += [p for pkg in AGENT_PACKAGES for p in sorted((runtime / pkg).rglob("*.py"))]
    for path in paths:
        out = dest / "edgecompress" / "runtime" / path.relative_to(runtime)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)


def bench_job(artifact: Path, runtime: str, opts: BenchOptions, probe: bool) -> dict[str, Any]:
    """The agent's job for timing ``artifact`` (its keys: the agent's docstring)."""
    inputs = [{"shape": list(s), "dtype": opts.input_dtype} for s in opts.inputs]
    return {
        "artifact": f"artifact/{artifact.name}",
        "runtime": runtime,
        "options": {
            "threads": opts.threads,
            "batch": opts.batch,
            "inputs": inputs,
            "input_shapes": [{"name": n, "shape": list(s)} for n, s in opts.input_shapes],
            "core_mask": opts.core_mask,
            "parallel": opts.parallel,
            "level": opts.level,
        },
        "warmup": opts.warmup,
        "runs": opts.runs,
        "min_time_s": opts.min_time_s,
        "sensors": list(opts.sensors),
        "idle_s": opts.idle_s,
        "host_meter": bool(opts.host_sensors),
        "max_s": opts.timeout_s,
        "probe": probe,
    }


def run_agent(
    transport: Transport,
    artifact: Path | None,
    job: dict[str, Any],
    opts: BenchOptions,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    files: Sequence[tuple[str, Path]] = (),
) -> AgentRun:
    """Stage, run and follow the agent (``files``: (path in the staged folder, local file)
    pairs it needs too); raises on a lost device or, once a stream has delivered frames, on
    an error there, keeping the partial run."""
    run = AgentRun(stream=job.get("stream"))
    with tempfile.TemporaryDirectory(prefix="edgecompress-stage-") as tmp:
        staged = Path(tmp)
        make_bundle(staged)
        if artifact is not None:
            (staged / "artifact").mkdir()
            shutil.copy2(artifact, staged / "artifact" / artifact.name)
            data = external_data_path(artifact)
            if data.exists():  # an ONNX model past 2 GiB: its weights go with it
                shutil.copy2(data, staged / "artifact" / data.name)
        for rel, local in files:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, staged / rel)
        (staged / "job.json").write_text(json.dumps(job, indent=2))
        remote = transport.stage(staged, timeout_s=min(opts.timeout_s, 300))
    try:
        code, stderr, timed_out = _follow(transport, remote, opts.timeout_s, run, on_event)
    finally:
        # A device that went away keeps its temporary folder; nothing else to do.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            transport.cleanup(remote, timeout_s=30)
    if run.result is not None or (job.get("probe") and run.hello and code == 0):
        return run
    where = f"{transport.url}"
    if run.error is not None:
        cls = getattr(errors, str(run.error.get("type")), None)
        cls = cls if isinstance(cls, type) and issubclass(cls, EdgeCompressError) else DeviceError
        tail = "" if run.error.get("expected") else f"\n{run.error.get('traceback') or ''}"
        if run.frames:  # a stream that delivered frames keeps them
            raise RunStopped(
                f"on {where}: {run.error.get('message')} (complete: false){tail}", run.partial()
            )
        raise cls(f"on {where}: {run.error.get('message')}{tail}")
    lost = "timed out" if timed_out else transport.lost(code, stderr)
    partial = run.partial()
    if lost is not None or not run.hello:
        why = lost or (stderr.strip().splitlines() or [f"exit status {code}"])[-1]
        raise DeviceDisconnected(
            f"{where}: lost the device after {len(run.samples_ms)} timed runs ({why}); "
            "what was measured is kept (complete: false); check the device and run again",
            partial,
        )
    raise DeviceDisconnected(
        f"{where}: the agent ({transport.python}) stopped with exit status {code} without a "
        f"result: {(stderr.strip().splitlines() or ['no message'])[-1]}",
        partial,
    )


def _follow(
    transport: Transport,
    remote: str,
    timeout_s: float,
    run: AgentRun,
    on_event: Callable[[dict[str, Any]], None] | None,
) -> tuple[int, str, bool]:
    argv, cwd = transport.command(
        [transport.python, "-u", "-m", "edgecompress.runtime.agent", "job.json"], remote
    )
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # never the user's terminal or a script's input
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",  # a stray byte from a runtime's log must not stop the reading
        bufsize=1,
    )
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    # The agent stops itself at timeout_s (job max_s); this is for a device that hangs.
    watchdog = threading.Timer(timeout_s + 30, kill)
    watchdog.start()
    try:
        for line in proc.stdout or []:
            event = _parse(line, run.log)
            if event is None:
                continue
            _record(run, event)
            if on_event is not None:
                on_event(event)
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # an exception above: do not leave ssh/adb running
            proc.kill()
            proc.wait()
    reader.join(5)
    return code, "".join(err_lines), timed_out.is_set()


def _parse(line: str, log: list[str]) -> dict[str, Any] | None:
    """An event from one line of the agent's stdout; anything else goes to the log (a
    line cut off by a lost connection included)."""
    at = line.find(MARK)
    if at < 0:
        log.append(line.rstrip("\n"))
        return None
    if at > 0:
        log.append(line[:at])
    try:
        event = json.loads(line[at + len(MARK) :])
    except ValueError:
        log.append(f"(unreadable event, cut off?) {line[at : at + 200]}")
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _record(run: AgentRun, event: dict[str, Any]) -> None:
    event = dict(event)
    kind = event.pop("event")
    run.marks[kind] = time.monotonic()
    if kind == "hello":
        run.hello = event
    elif kind == "loaded":
        run.loaded = {"load_ms": event["load_ms"], **event["info"]}
    elif kind == "samples":
        run.samples_ms.extend(event["ms"])
    elif kind == "frames":
        run.frames.extend(event["frames"])
    elif kind == "result":
        run.result = event
    elif kind == "error":
        run.error = event


def probe_device(device: str, opts: BenchOptions) -> dict[str, Any]:
    """What the device runs: interpreter, platform, runtimes with versions."""
    transport = parse_device(device, python=opts.python, ssh_options=opts.ssh_options)
    return run_agent(transport, None, {"probe": True}, opts).hello


def bench_artifact(
    artifact: Path,
    target: str,
    device: str,
    opts: BenchOptions,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Latency, memory and energy of ``artifact`` on ``device``; one JSON-able dict.

    Energy is measured where a sensor exists (on the device, or a meter on the host),
    and always also estimated from the ONNX graph; ``energy.kind`` says which number
    ``energy.energy_per_inference_j`` is. A run longer than ``ProgressLines.interval_s``
    prints how far it got on stderr unless ``progress`` is false.
    """
    artifact = Path(artifact)
    if not artifact.is_file():
        raise errors.ModelLoadError(f"{artifact}: no such file to benchmark")
    runtime = backend_for(artifact)
    transport = parse_device(device, python=opts.python, ssh_options=opts.ssh_options)
    job = bench_job(artifact, runtime, opts, probe=False)
    meter = _host_meter(opts)
    if progress:
        on_event = ProgressLines(f"bench: {artifact.name} on {device}", on_event)
    try:
        run = run_agent(transport, artifact, job, opts, on_event)
    except DeviceDisconnected as exc:
        exc.partial.update(run_identity(artifact, target, device, opts))
        raise
    finally:
        if meter is not None:
            meter.stop()
    assert run.result is not None
    result = {**run_identity(artifact, target, device, opts), "complete": True}
    result["device_info"] = run.hello
    result.update(run.result)
    measured = list(result.pop("energy"))
    if meter is not None:
        measured += _host_energy(meter, run, result["calls"] * result["items_per_call"])
    result["energy"] = energy_summary(artifact, target, opts, measured)
    return result


class ProgressLines:
    """An event callback that prints "bench: m.onnx on local: 5200 timed runs, 10 s elapsed"
    (or "... 300 frames ..." for a stream) every ``interval_s`` seconds, then hands the
    event on. Plain lines, not a bar: this package keeps to the standard library and numpy
    (see the agent)."""

    interval_s = 10.0

    def __init__(self, desc: str, then: Callable[[dict[str, Any]], None] | None) -> None:
        self.desc, self.then, self.runs = desc, then, 0
        self.start = self.last = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        kind = event.get("event")
        if kind in ("samples", "frames"):
            self.runs += len(event.get("ms") or event.get("frames") or ())
            if now - self.last >= self.interval_s:
                self.last = now
                what = "timed runs" if kind == "samples" else "frames"
                print(
                    f"{self.desc}: {self.runs} {what}, {now - self.start:.0f} s elapsed",
                    file=sys.stderr,
                    flush=True,
                )
        if self.then is not None:
            self.then(event)


def run_identity(artifact: Path, target: str, device: str, opts: BenchOptions) -> dict[str, Any]:
    """What a result says about what ran where: the artifact (and its hash), target,
    device, options and this version."""
    from edgecompress.io import sha256_file

    return {
        "artifact": str(artifact),
        "artifact_sha256": sha256_file(artifact),
        "target": target,
        "device": device,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("python",)},
        "edgecompress_version": edgecompress.__version__,
    }


def _host_meter(opts: BenchOptions) -> Any:
    if not opts.host_sensors:
        return None
    from edgecompress.runtime.power import PowerRecorder, open_sensors

    recorder = PowerRecorder(open_sensors(list(opts.host_sensors)), interval_s=0.05)
    recorder.start()
    return recorder


def _host_energy(meter: Any, run: AgentRun, n: int) -> list[dict[str, Any]]:
    """A meter on the host lines up with the device's loop by when events arrived."""
    m = run.marks
    if not {"idle_start", "idle_end", "loop_start", "loop_end"} <= m.keys():
        return []
    found: list[dict[str, Any]] = meter.energy(
        idle=(m["idle_start"], m["idle_end"]), loop=(m["loop_start"], m["loop_end"]), n=n
    )
    for entry in found:
        entry["where"] = "host (windows from event arrival times, transport delay included)"
    return found


# A meter on the board's input beats rails and counters that see only part of it.
_PREFERENCE = ("command", "csv", "tegrastats", "iio", "hwmon", "rapl", "battery")


def best_measurement(measured: list[dict[str, Any]]) -> dict[str, Any] | None:
    usable = [m for m in measured if m.get("energy_per_inference_j") is not None]

    def rank(m: dict[str, Any]) -> tuple[int, int, int]:
        # The power module marks sub-rails and RAPL subzones (counted inside another
        # sensor) as not primary; names only break ties among the rest.
        sub = 0 if m.get("primary", True) else 1
        kind = _PREFERENCE.index(m["kind"]) if m.get("kind") in _PREFERENCE else len(_PREFERENCE)
        name = str(m.get("sensor", "")).upper()
        whole = any(k in name for k in ("VDD_IN", "POM_5V_IN", "PSYS", "PACKAGE", "TOTAL"))
        return sub, kind, 0 if whole else 1

    return min(usable, key=rank) if usable else None


def estimate_for(
    artifact: Path, target: str, opts: BenchOptions
) -> tuple[dict[str, Any] | None, str | None]:
    """The analytic estimate for an artifact (its own graph, or ``opts.onnx`` behind an
    RKNN/TensorRT file at the target's default precision), or why there is none."""
    onnx = artifact if artifact.suffix == ".onnx" else opts.onnx
    if onnx is None:
        return None, f"no ONNX graph for {artifact.name} (pass --onnx) so no analytic estimate"
    from edgecompress.runtime.energy_model import estimate_energy

    precision = opts.precision
    if precision is None and artifact.suffix != ".onnx":
        from edgecompress.targets import get_target

        precision = get_target(target).default_precision.value
    try:
        return estimate_energy(Path(onnx), target, precision), None
    except EdgeCompressError as exc:
        return None, f"no analytic estimate: {exc}"


def energy_summary(
    artifact: Path, target: str, opts: BenchOptions, measured: list[dict[str, Any]]
) -> dict[str, Any]:
    """The headline energy figure and its kind: the best measurement, else the estimate."""
    estimate, note = estimate_for(artifact, target, opts)
    best = best_measurement(measured)
    if best is not None:
        kind, value = "measured", best["energy_per_inference_j"]
    elif estimate is not None:
        kind, value = estimate["kind"], estimate["energy_per_inference_j"]
    else:
        kind, value = "none", None
    return {
        "kind": kind,
        "energy_per_inference_j": value,
        "measured": best,
        "sensors": measured,
        "analytic": estimate,
        "note": note,
    }
