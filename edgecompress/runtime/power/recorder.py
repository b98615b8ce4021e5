"""Sampling sensors in the background during a benchmark, and the energy arithmetic:
``(E_loop - P_idle * T_loop) / n``."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import ConfigError
from edgecompress.runtime.power.sensors import PowerSensor, SensorError

if TYPE_CHECKING:
    from edgecompress.runtime.power.sensors import Push, Sample


def _window_energy(t: np.ndarray, v: np.ndarray, a: float, b: float, cumulative: bool) -> float:
    """Energy in [a, b] from sorted samples: a counter difference or a trapezoid, with the
    values at the edges interpolated. Where no sample lies beyond an edge, the part of the
    window past the last sample is filled at the nearest power (constant extrapolation)."""
    lo, hi = max(a, float(t[0])), min(b, float(t[-1]))
    if cumulative:
        e = float(np.interp(hi, t, v) - np.interp(lo, t, v))
        return e * (b - a) / (hi - lo)
    keep = (t > lo) & (t < hi)
    tt = np.concatenate(([lo], t[keep], [hi]))
    pp = np.concatenate(([np.interp(lo, t, v)], v[keep], [np.interp(hi, t, v)]))
    inner = float(np.sum((pp[1:] + pp[:-1]) * np.diff(tt)) / 2)
    return inner + float(pp[0]) * (lo - a) + float(pp[-1]) * (b - hi)


def _unwrap(v: np.ndarray, max_j: float | None) -> tuple[np.ndarray, int]:
    """The counter made monotonic: each step back is one wrap at ``max_j``."""
    d = np.diff(v)
    wraps = int(np.sum(d < 0))
    if wraps and max_j is None:
        raise ValueError("the energy counter went backwards and its range is unknown")
    d = np.where(d < 0, d + (max_j or 0.0), d)
    return np.concatenate((v[:1], v[0] + np.cumsum(d))), wraps


class PowerRecorder:
    """Samples sensors while a benchmark runs: polled sensors in one background thread every
    ``interval_s``, streaming sensors in their own reader threads, log files after the run.
    The thread is light (a few sysfs reads a tick) but does take the GIL briefly."""

    def __init__(self, sensors: Sequence[PowerSensor], interval_s: float = 0.01) -> None:
        if interval_s <= 0:
            raise ConfigError(f"power sampling interval_s must be > 0, got {interval_s}")
        names = [s.name for s in sensors]
        if len(set(names)) != len(names):
            raise ConfigError(f"power sensor names repeat: {names}; give each sensor once")
        self.sensors = list(sensors)
        self.interval_s = interval_s
        self.epoch_offset = time.time() - time.monotonic()
        self._samples: dict[str, list[Sample]] = {s.name: [] for s in sensors}
        self._notes: dict[str, list[str]] = {s.name: [] for s in sensors}
        self._errors: dict[str, list[str]] = {s.name: [] for s in sensors}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._state = "new"

    def __enter__(self) -> PowerRecorder:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the streaming meters and the polling thread."""
        if self._state != "new":
            raise SensorError("a PowerRecorder records one run; make a new one")
        self._state = "running"
        self.epoch_offset = time.time() - time.monotonic()
        self._note_warnings()
        started: list[PowerSensor] = []
        try:
            for s in self.sensors:
                if s.mode == "stream":
                    s.start(self._pusher(self._samples[s.name]))
                    started.append(s)
        except BaseException:
            for s in started:
                s.stop()
            self._state = "stopped"
            raise
        polled = [s for s in self.sensors if s.mode == "poll"]
        if polled:
            self._thread = threading.Thread(target=self._poll, args=(polled,), daemon=True)
            self._thread.start()

    @staticmethod
    def _pusher(out: list[Sample]) -> Push:
        def push(t: float, watts: float) -> None:
            out.append((t, watts))

        return push

    def mark(self) -> float:
        """The time now on the recorder's clock (``time.monotonic()``)."""
        return time.monotonic()

    def _poll(self, polled: list[PowerSensor]) -> None:
        try:
            tick = time.monotonic()
            while not self._halt.is_set():
                for s in polled:
                    t0 = time.monotonic()
                    try:
                        value = s.read()
                    except (OSError, ValueError) as e:
                        self._errors[s.name].append(str(e))
                        continue
                    self._samples[s.name].append(((t0 + time.monotonic()) / 2, value))
                # After slow reads (I2C gauges) skip the missed ticks rather than burst.
                tick = max(tick + self.interval_s, time.monotonic())
                self._halt.wait(tick - time.monotonic())
        except BaseException as e:  # re-raised by stop()
            self._failure = e

    def stop(self) -> None:
        """Stops every thread and meter; safe to call more than once."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
        for s in self.sensors:
            s.stop()
        self._note_warnings()
        if self._failure is not None:
            raise SensorError(f"the power sampling thread failed: {self._failure!r}") from (
                self._failure
            )

    def _note_warnings(self) -> None:
        for s in self.sensors:
            notes = self._notes[s.name]
            notes += [w for w in s.warnings() if w not in notes]

    def energy(
        self, idle: tuple[float, float], loop: tuple[float, float], n: int
    ) -> list[dict[str, Any]]:
        """Per sensor: idle and loop power, loop energy and energy per inference over ``n``
        inferences in ``loop`` (marks from :meth:`mark`). Stops the recorder first."""
        for what, (a, b) in (("idle", idle), ("loop", loop)):
            if not b > a:
                raise ConfigError(f"the {what} window {a}..{b} is empty; mark its end after start")
        if n < 1:
            raise ConfigError(f"energy per inference needs n >= 1 inferences, got {n}")
        self.stop()
        return [self._sensor_energy(s, idle, loop, n) for s in self.sensors]

    def _sensor_energy(
        self, s: PowerSensor, idle: tuple[float, float], loop: tuple[float, float], n: int
    ) -> dict[str, Any]:
        raw = s.samples(self.epoch_offset) if s.mode == "file" else self._samples[s.name]
        data = np.asarray(sorted(raw), dtype=np.float64).reshape(-1, 2)
        t, v = data[:, 0], data[:, 1]
        warnings = list(self._notes[s.name])
        errors = self._errors[s.name]
        if errors:
            warnings.append(f"{len(errors)} failed reads, first: {errors[0]}")
        wraps = 0
        if s.cumulative:
            try:
                v, wraps = _unwrap(v, s.max_energy_j)
            except ValueError as e:
                warnings.append(f"{e}: no energy reported")
                t, v = t[:0], v[:0]
        energies: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for what, (a, b) in (("idle", idle), ("loop", loop)):
            counts[what] = len(np.unique(t[(t >= a) & (t <= b)]))
            energies[what] = None
            if counts[what] < 2:
                warnings.append(
                    f"{counts[what]} samples in the {b - a:.3f} s {what} window, need at least 2:"
                    " lengthen the window or sample more often"
                    + (" (CSV times must be Unix epoch seconds)" if s.kind == "csv" else "")
                )
                continue
            energies[what] = _window_energy(t, v, a, b, s.cumulative)
            covered = (min(b, t[-1]) - max(a, t[0])) / (b - a)
            if covered < 0.9:
                warnings.append(f"samples cover only {covered:.0%} of the {what} window")
        idle_s, loop_s = idle[1] - idle[0], loop[1] - loop[0]
        e_idle, e_loop = energies["idle"], energies["loop"]
        p_idle = None if e_idle is None else e_idle / idle_s
        per_inf = None
        if e_loop is not None and p_idle is not None:
            per_inf = (e_loop - p_idle * loop_s) / n
            if e_loop < p_idle * loop_s * (1 - 1e-9):  # beyond rounding
                warnings.append(
                    f"loop power {e_loop / loop_s:.3f} W is below idle {p_idle:.3f} W: the idle "
                    "window was not idle or the sensor is too coarse for this loop"
                )
        in_loop = t[(t >= loop[0]) & (t <= loop[1])]
        step_ms = float(np.median(np.diff(in_loop))) * 1e3 if len(in_loop) > 1 else float("nan")
        if s.kind == "battery" and len(in_loop) >= 10:
            changes = int(np.sum(np.diff(v[(t >= loop[0]) & (t <= loop[1])]) != 0))
            if changes < 3:
                warnings.append(
                    f"the gauge reading changed {changes} times in {len(in_loop)} samples: it "
                    "updates slower than it is polled; lengthen the loop to several seconds"
                )
        if s.cumulative:
            method = (
                f"RAPL energy counter difference over {counts['loop']} reads at {step_ms:.1f} ms"
            )
            method += f", {wraps} counter wrap(s) undone" if wraps else ""
        else:
            method = f"trapezoid over {counts['loop']} {s.kind} samples at {step_ms:.1f} ms"
            method += f" of {s.detail}" if s.detail else ""
        return {
            "sensor": s.name,
            "kind": s.kind,
            "source": s.source,
            "primary": s.primary,
            "samples_idle": counts["idle"],
            "samples_loop": counts["loop"],
            "interval_ms": step_ms,
            "idle_power_w": p_idle,
            "loop_power_w": None if e_loop is None else e_loop / loop_s,
            "loop_s": loop_s,
            "loop_energy_j": e_loop,
            "energy_per_inference_j": per_inf,
            "method": method,
            "warnings": warnings,
        }
