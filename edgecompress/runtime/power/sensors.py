"""Power sensors, one class per kind of source: RAPL counters, hwmon/iio rails, the
battery fuel gauge, tegrastats, an external meter (command or CSV)."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import DeviceError

if TYPE_CHECKING:  # aliases only in annotations: the agent also runs on Python 3.8
    Push = Callable[[float, float], None]
    Sample = tuple[float, float]

# Rails that carry the whole board's input power (Jetson Orin/Xavier NX/Nano, TX2, AGX Orin).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
_SPEC_HELP = "auto, rapl, hwmon, iio, battery, tegrastats[:PATH], command:ARGV, csv:PATH"
# Where detection looks, and a piece of those paths to pick a kind's skip reasons by.
_WHERE = {
    "rapl": "sys/class/powercap/intel-rapl:*/energy_uj",
    "hwmon": "sys/class/hwmon/hwmon*/power*_input (or in*_input x curr*_input on ina3221)",
    "iio": "sys/bus/i2c/devices/*/iio:device*/in_power*_input",
    "battery": "sys/class/power_supply/*/ with type Battery",
}


class SensorError(DeviceError):
    """A power sensor cannot be found, read or started."""


def _read_text(path: Path) -> str:
    # Every sysfs read goes through here, with the builtin open (one small syscall set).
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace").strip()


def _read_float(path: Path) -> float:
    return float(_read_text(path))


def _attr(d: Path, name: str) -> str:
    """A sysfs attribute's text, "" where absent or unreadable."""
    try:
        return _read_text(d / name)
    except OSError:
        return ""


class PowerSensor:
    """One power source, in one of three modes (``mode``):

    * ``"poll"``: :meth:`read` returns watts now, or with ``cumulative`` an energy counter
      in joules that wraps at ``max_energy_j``; the recorder calls it every interval.
    * ``"stream"``: :meth:`start` runs a meter that calls ``push(t_monotonic, watts)``
      for each reading until :meth:`stop`.
    * ``"file"``: :meth:`samples` reads a meter's log after the run.

    ``primary`` is False where the power is already part of another sensor of the same
    kind (a RAPL core subzone inside its package, a Jetson CPU rail inside VDD_IN): summing
    the primary sensors of one kind does not count anything twice.
    """

    mode = "poll"
    cumulative = False
    max_energy_j: float | None = None

    def __init__(self, name: str, kind: str, source: str, *, primary: bool = True) -> None:
        self.name = name
        self.kind = kind
        self.source = source
        self.primary = primary

    def read(self) -> float:
        raise SensorError(f"{self.name} is a {self.mode} sensor; it cannot be polled")

    def start(self, push: Push) -> None:
        raise SensorError(f"{self.name} is a {self.mode} sensor; it does not stream")

    def stop(self) -> None:
        """Ends a streaming meter; nothing to do for the other modes."""

    def samples(self, epoch_offset: float) -> list[Sample]:
        raise SensorError(f"{self.name} is a {self.mode} sensor; it has no log to read")

    def warnings(self) -> list[str]:
        """Conditions that make the readings doubtful; the recorder asks at start and stop."""
        return []

    @property
    def detail(self) -> str:
        """What exactly was measured, when the name does not say (e.g. the tegrastats rail)."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} from {self.source}>"


class RaplSensor(PowerSensor):
    """An Intel/AMD RAPL powercap zone: ``energy_uj`` is a counter that wraps at
    ``max_energy_range_uj``."""

    cumulative = True

    def __init__(self, zone: Path, label: str, *, primary: bool, max_energy_j: float | None):
        super().__init__(f"rapl:{label}", "rapl", str(zone / "energy_uj"), primary=primary)
        self.path = zone / "energy_uj"
        self.max_energy_j = max_energy_j

    def read(self) -> float:
        return _read_float(self.path) * 1e-6


class SysfsPowerSensor(PowerSensor):
    """A power channel: ``power`` read and scaled to watts (hwmon uW, iio mW), or bus
    voltage in mV times current in mA (INA3221 hwmon channels)."""

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        power: Path | None = None,
        scale: float = 1e-6,
        volts_amps: tuple[Path, Path] | None = None,
        label: str = "",
    ) -> None:
        paths = [power] if power is not None else list(volts_amps or ())
        super().__init__(name, kind, " x ".join(str(p) for p in paths))
        self.power, self.scale, self.volts_amps, self.label = power, scale, volts_amps, label

    def read(self) -> float:
        if self.power is not None:
            return _read_float(self.power) * self.scale
        volts, amps = self.volts_amps or (Path(), Path())
        return _read_float(volts) * _read_float(amps) * 1e-6


class BatterySensor(PowerSensor):
    """The fuel gauge: |current_now| (uA) x voltage_now (uV), or |power_now| (uW). The sign
    of the current differs by vendor, so only its size is used."""

    def __init__(self, supply: Path, name: str) -> None:
        self.supply = supply
        self.has_power = (supply / "power_now").exists()
        files = ["power_now"] if self.has_power else ["current_now", "voltage_now"]
        super().__init__(name, "battery", " x ".join(str(supply / f) for f in files))

    def read(self) -> float:
        if self.has_power:
            return abs(_read_float(self.supply / "power_now")) * 1e-6
        amps = abs(_read_float(self.supply / "current_now"))
        return amps * _read_float(self.supply / "voltage_now") * 1e-12

    def warnings(self) -> list[str]:
        status = _attr(self.supply, "status")
        if status in ("Charging", "Full"):
            return [
                f"battery status is {status}: the charger, not the gauge, supplies the load; "
                "unplug the charger and run again"
            ]
        return []


class _ProcessSensor(PowerSensor):
    """A meter program whose stdout lines are parsed by :meth:`parse` in a reader thread."""

    mode = "stream"

    def __init__(self, name: str, kind: str, argv: list[str]) -> None:
        super().__init__(name, kind, shlex.join(argv))
        self.argv = argv
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stderr: Any = None
        self._notes: list[str] = []
        self._bad: list[str] = []

    def parse(self, line: str, now: float) -> Sample | None:
        """(t_monotonic, watts) of one line, None to skip it; ValueError if malformed."""
        raise NotImplementedError

    def start(self, push: Push) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        # A Python meter block-buffers a pipe unless told not to.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                errors="replace",
                env=env,
            )
        except OSError as e:
            raise SensorError(f"cannot start the {self.kind} meter `{self.source}`: {e}") from e
        self._thread = threading.Thread(target=self._pump, args=(self._proc, push), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str], push: Push) -> None:
        for line in proc.stdout or ():
            now = time.monotonic()
            try:
                sample = self.parse(line, now)
            except ValueError:
                self._bad.append(line.strip())
                continue
            if sample is not None:
                push(*sample)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        code = proc.poll()
        if code is None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if proc.stdout is not None:
            proc.stdout.close()
        if code:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace").strip()[-300:]
            self._notes.append(f"`{self.source}` exited early with status {code}: {tail}")
        self._stderr.close()

    def warnings(self) -> list[str]:
        notes = list(self._notes)
        if self._bad:
            notes.append(f"{len(self._bad)} unparseable meter lines, first: {self._bad[0]!r}")
        return notes


_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


def parse_tegrastats(line: str) -> dict[str, float]:
    """Power now of every rail in one tegrastats line, in watts. Rails print as
    ``NAME now/average`` in mW: ``VDD_IN 4736mW/4736mW`` (L4T 34+), ``POM_5V_IN 2914/2914``
    (L4T 32); the unit suffixes of ``RAM 1903/3956MB`` keep memory out."""
    return {m[1]: int(m[2]) * 1e-3 for m in _RAIL.finditer(line) if m[1] not in _NOT_RAILS}


def board_power(rails: dict[str, float]) -> tuple[str, float]:
    """(rail, watts) of the board: its input rail when present, else the sum of the rails."""
    for rail in INPUT_RAILS:
        if rail in rails:
            return rail, rails[rail]
    return "sum of " + "+".join(rails), sum(rails.values())


class TegrastatsSensor(_ProcessSensor):
    """Jetson board power from ``tegrastats --interval MS``: the input rail, else all rails."""

    def __init__(self, executable: str = "tegrastats", interval_ms: int = 100) -> None:
        super().__init__("tegrastats", "tegrastats", [executable, "--interval", str(interval_ms)])
        self.rail = ""

    def parse(self, line: str, now: float) -> Sample | None:
        rails = parse_tegrastats(line)
        if not rails:
            raise ValueError(line)
        self.rail, watts = board_power(rails)
        return now, watts

    @property
    def detail(self) -> str:
        return self.rail


class CommandSensor(_ProcessSensor):
    """An external meter program printing ``<watts>`` or ``<epoch_seconds>,<watts>`` lines."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__("command", "command", argv)
        self._epoch_offset = 0.0

    def start(self, push: Push) -> None:
        self._epoch_offset = time.time() - time.monotonic()
        super().start(push)

    def parse(self, line: str, now: float) -> Sample | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        parts = text.split(",")
        if len(parts) == 1:
            return now, float(parts[0])
        if len(parts) == 2:
            return float(parts[0]) - self._epoch_offset, float(parts[1])
        raise ValueError(text)


def _unit_scale(column: str, unit: str) -> float:
    """1e-3 for a milli column (``power_mW``, ``mA``), 1e-6 for micro, else 1."""
    if re.search(rf"(^|[^a-z])m{unit}($|[^a-z])", column) or "milli" in column:
        return 1e-3
    if re.search(rf"(^|[^a-z])[uµ]{unit}($|[^a-z])", column) or "micro" in column:
        return 1e-6
    return 1.0


def _column(header: list[str], words: tuple[str, ...], unit: str) -> int | None:
    for i, name in enumerate(header):
        if any(w in name for w in words) or re.search(rf"(^|[^a-z])[muµ]?{unit}($|[^a-z])", name):
            return i
    return None


def _header_columns(header: list[str], path: Path) -> tuple[list[int], list[float]]:
    t = _column(header, ("time", "epoch"), "s")
    w = _column(header, ("watt", "power"), "w")
    if t is not None and w is not None:
        return [t, w], [1.0, _unit_scale(header[w], "w")]
    v, a = _column(header, ("volt",), "v"), _column(header, ("amp", "current"), "a")
    if t is not None and v is not None and a is not None:
        return [t, v, a], [1.0, _unit_scale(header[v], "v"), _unit_scale(header[a], "a")]
    raise SensorError(
        f"the meter log {path} has header {header}: expected columns time (epoch s) and "
        "watts, or time, volts and amps"
    )


def read_meter_csv(path: Path) -> list[Sample]:
    """(epoch seconds, watts) rows of an external meter's log. The header is optional;
    columns are time + watts, or time + volts + amps (``mW``/``mV``/``mA`` headers scaled)."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    except OSError as e:
        raise SensorError(f"cannot read the meter log {path}: {e}") from e
    delim = next((d for d in ",;\t" if lines and d in lines[0]), " ")
    rows = [[c.strip() for c in row if c.strip()] for row in csv.reader(lines, delimiter=delim)]
    if not rows:
        raise SensorError(f"the meter log {path} has no rows")
    try:
        [float(c) for c in rows[0]]
        cols, scales = [0, 1, 2][: len(rows[0])] if len(rows[0]) <= 3 else [], [1.0] * 3
    except ValueError:
        cols, scales = _header_columns([c.lower() for c in rows.pop(0)], path)
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            if len(cols) < 2 or len(row) < len(cols):
                raise ValueError
            vals = [float(row[c]) * s for c, s in zip(cols, scales)]  # noqa: B905 (3.8 boards)
        except ValueError as e:
            raise SensorError(
                f"{path} data row {i}: {row} is not epoch seconds and watts (or volts, amps)"
            ) from e
        out.append((vals[0], vals[1] if len(vals) == 2 else vals[1] * vals[2]))
    return out


class CsvSensor(PowerSensor):
    """An external meter's log, read after the run; times are Unix epoch seconds."""

    mode = "file"

    def __init__(self, path: Path) -> None:
        super().__init__("csv", "csv", str(path))
        self.path = path

    def samples(self, epoch_offset: float) -> list[Sample]:
        return [(t - epoch_offset, w) for t, w in read_meter_csv(self.path)]
