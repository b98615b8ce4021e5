"""Finding the sensors a machine has (``detect_sensors``) and opening the ones a
benchmark asks for by name (``open_sensors``)."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.runtime.power.sensors import (
    _SPEC_HELP,
    _WHERE,
    INPUT_RAILS,
    BatterySensor,
    CommandSensor,
    CsvSensor,
    PowerSensor,
    RaplSensor,
    SensorError,
    SysfsPowerSensor,
    TegrastatsSensor,
    _attr,
    _read_float,
    _read_text,
)

if TYPE_CHECKING:  # aliases only in annotations: the agent also runs on Python 3.8
    Skipped = list[tuple[str, str]]


def _check(path: Path, skipped: Skipped) -> bool:
    """Whether a sensor file gives a number now; if not, why goes to ``skipped``."""
    try:
        _read_float(path)
        return True
    except PermissionError:
        why = "permission denied"
        if path.name == "energy_uj":
            why += (
                ": RAPL counters are readable only by root since Linux 5.10 (CVE-2020-8694);"
                f" run as root or `sudo chmod a+r {path}` (until reboot)"
            )
        skipped.append((str(path), why))
    except (OSError, ValueError) as e:
        skipped.append((str(path), f"unreadable: {e}"))
    return False


def _detect_rapl(root: Path, skipped: Skipped) -> list[PowerSensor]:
    # intel-rapl-mmio:* is the same package counter read over MMIO; the glob leaves it out.
    zones = sorted((root / "sys/class/powercap").glob("intel-rapl:*"))
    names = {}
    for zone in zones:
        try:
            names[zone.name] = _read_text(zone / "name")
        except OSError as e:
            skipped.append((str(zone / "name"), f"unreadable: {e}"))
    # psys is the whole platform and contains the packages: then only psys is primary.
    has_psys = "psys" in names.values()
    out: list[PowerSensor] = []
    for zone in zones:
        if zone.name not in names or not _check(zone / "energy_uj", skipped):
            continue
        parent = ":".join(zone.name.split(":")[:2])
        sub = parent != zone.name
        label = f"{names.get(parent, parent)}/{names[zone.name]}" if sub else names[zone.name]
        try:
            max_j: float | None = _read_float(zone / "max_energy_range_uj") * 1e-6
        except (OSError, ValueError):
            max_j = None
        primary = not sub and (names[zone.name] == "psys" or not has_psys)
        out.append(RaplSensor(zone, label, primary=primary, max_energy_j=max_j))
    return out


def _hwmon_channels(d: Path, chip: str, skipped: Skipped) -> list[SysfsPowerSensor]:
    out = []
    if chip == "ina3221":  # in1..3: bus mV, curr1..3: mA; in4..6 are shunt voltages
        for n in (1, 2, 3):
            volts, amps = d / f"in{n}_input", d / f"curr{n}_input"
            if not volts.exists() or _attr(d, f"in{n}_enable") == "0":
                continue  # no such channel, or no rail wired to it
            label = _attr(d, f"in{n}_label") or f"in{n}"
            if _check(volts, skipped) and _check(amps, skipped):
                out.append(
                    SysfsPowerSensor(
                        f"hwmon:{chip}:{label}", "hwmon", volts_amps=(volts, amps), label=label
                    )
                )
        return out
    channels: dict[str, Path] = {}
    for p in sorted(d.glob("power*_average")) + sorted(d.glob("power*_input")):
        channels[p.name.rsplit("_", 1)[0]] = p  # power{n}_input wins over _average
    for chan, path in sorted(channels.items()):
        label = _attr(d, f"{chan}_label") or chan
        if _check(path, skipped):
            out.append(SysfsPowerSensor(f"hwmon:{chip}:{label}", "hwmon", power=path, label=label))
    return out


def _detect_hwmon(root: Path, skipped: Skipped) -> list[SysfsPowerSensor]:
    out = []
    for d in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        try:
            chip = _read_text(d / "name")
        except OSError as e:
            skipped.append((str(d / "name"), f"unreadable: {e}"))
            continue
        out += _hwmon_channels(d, chip, skipped)
    return out


def _detect_iio(root: Path, skipped: Skipped) -> list[SysfsPowerSensor]:
    out = []
    for d in sorted((root / "sys/bus/i2c/devices").glob("*/iio:device*")):
        for path in sorted(d.glob("in_power*_input")):
            n = path.name[len("in_power") : -len("_input")]
            rail = _attr(d, f"rail_name_{n}") or f"power{n}"
            if _check(path, skipped):
                out.append(
                    SysfsPowerSensor(f"iio:{rail}", "iio", power=path, scale=1e-3, label=rail)
                )
    return out


def _mark_sub_rails(sensors: Sequence[SysfsPowerSensor]) -> None:
    """On a Jetson the input rail contains the CPU/GPU/SoC rails: then only it is primary."""
    rails = [r for r in sensors if r.kind == "iio" or r.name.startswith("hwmon:ina3221:")]
    if any(r.label in INPUT_RAILS for r in rails):
        for r in rails:
            r.primary = r.label in INPUT_RAILS


def _detect_battery(root: Path, skipped: Skipped) -> list[PowerSensor]:
    out: list[PowerSensor] = []
    for d in sorted((root / "sys/class/power_supply").glob("*")):
        try:
            if _read_text(d / "type") != "Battery":
                continue
        except OSError:
            continue
        name = "battery" if d.name == "battery" else f"battery:{d.name}"
        if (d / "power_now").exists():
            if _check(d / "power_now", skipped):
                out.append(BatterySensor(d, name))
        elif (d / "current_now").exists() and (d / "voltage_now").exists():
            if _check(d / "current_now", skipped) and _check(d / "voltage_now", skipped):
                out.append(BatterySensor(d, name))
        else:
            skipped.append((str(d), "battery without current_now/voltage_now or power_now"))
    return out


def detect_sensors_report(root: Path = Path("/")) -> tuple[list[PowerSensor], Skipped]:
    """Every readable RAPL, hwmon, iio and battery sensor under ``root``, and the
    (path, reason) of each one found but unreadable."""
    skipped: Skipped = []
    rails = _detect_hwmon(root, skipped) + _detect_iio(root, skipped)
    _mark_sub_rails(rails)
    found = [*_detect_rapl(root, skipped), *rails, *_detect_battery(root, skipped)]
    seen: dict[str, int] = {}
    for s in found:  # two chips can both have an unlabelled power1
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name += f"#{seen[s.name]}"
    return found, skipped


def detect_sensors(root: Path = Path("/")) -> list[PowerSensor]:
    """Every readable RAPL, hwmon, iio and battery sensor under ``root``."""
    return detect_sensors_report(root)[0]


def _executable(program: str, spec: str) -> str:
    path = shutil.which(program)
    if path is None:
        hint = (
            "tegrastats ships with L4T on Jetson boards; give its path as tegrastats:/PATH"
            if spec.startswith("tegrastats")
            else "give an executable path or a program on PATH"
        )
        raise SensorError(f"power sensor {spec!r}: {program!r} is not an executable; {hint}")
    return path


def _open_one(
    spec: str, root: Path, report: tuple[list[PowerSensor], Skipped]
) -> list[PowerSensor]:
    kind, _, arg = spec.partition(":")
    if kind == "auto" and not arg:
        return report[0]
    if kind in _WHERE and not arg:
        found = [s for s in report[0] if s.kind == kind]
        if not found:
            marker = {"rapl": "powercap", "iio": "iio:", "battery": "power_supply"}.get(kind, kind)
            why = "; ".join(f"{p}: {r}" for p, r in report[1] if marker in p)
            raise SensorError(
                f"no {kind} power sensor: looked for {root / _WHERE[kind]}"
                + (f" ({why})" if why else "")
                + f"; pick another of {_SPEC_HELP}"
            )
        return found
    if kind == "tegrastats":
        return [TegrastatsSensor(_executable(arg or "tegrastats", spec))]
    if kind == "command" and arg.strip():
        argv = shlex.split(arg)
        return [CommandSensor([_executable(argv[0], spec), *argv[1:]])]
    if kind == "csv" and arg:
        return [CsvSensor(Path(arg))]
    raise SensorError(f"unknown power sensor {spec!r}; expected one of {_SPEC_HELP}")


def open_sensors(specs: Sequence[str], root: Path = Path("/")) -> list[PowerSensor]:
    """The sensors the specs name (see ``_SPEC_HELP``); ``auto`` is whatever
    :func:`detect_sensors` finds, possibly nothing. A named kind that finds nothing, or
    two different sensors with one name, is a :class:`SensorError`."""
    report: tuple[list[PowerSensor], Skipped] | None = None
    out: dict[str, PowerSensor] = {}
    for spec in specs:
        if report is None and spec.partition(":")[0] in ("auto", *_WHERE):
            report = detect_sensors_report(root)
        for sensor in _open_one(spec, root, report or ([], [])):
            other = out.setdefault(sensor.name, sensor)
            if other is not sensor and other.source != sensor.source:
                raise SensorError(
                    f"two power sensors named {sensor.name!r} ({other.source}, "
                    f"{sensor.source}); give each meter once"
                )
    return list(out.values())
