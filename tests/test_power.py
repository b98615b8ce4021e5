"""Power sensors and energy per inference: fake sysfs trees laid out as on real boards,
real tegrastats lines, real meter subprocesses, and the energy arithmetic done exactly."""

from __future__ import annotations

import builtins
import itertools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecompress.errors import ConfigError
from edgecompress.runtime.power import (
    CsvSensor,
    PowerRecorder,
    PowerSensor,
    SensorError,
    TegrastatsSensor,
    board_power,
    detect_sensors,
    detect_sensors_report,
    open_sensors,
    parse_tegrastats,
    read_meter_csv,
)

ORIN_LINE = (
    "11-22-2026 10:15:02 RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [12%@1510,3%@1510,0%@1510,0%@1510,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[624] "
    "VIC_FREQ 115 APE 174 CV0@46.718C CPU@48.281C SOC2@46.093C SOC0@46.781C CV1@46.531C "
    "GPU@46.156C tj@48.281C SOC1@45.968C CV2@46.437C VDD_IN 4736mW/4736mW "
    "VDD_CPU_GPU_CV 553mW/553mW VDD_SOC 1423mW/1423mW"
)
L4T32_LINE = (
    "RAM 1903/3956MB (lfb 74x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [9%@1479,5%@1479,3%@1479,2%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 PLL@32C "
    "CPU@35.5C PMIC@100C GPU@33.5C AO@41.5C thermal@34.75C POM_5V_IN 2914/2914 "
    "POM_5V_GPU 81/81 POM_5V_CPU 611/611"
)


def _put(root: Path, rel: str, value: object) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")  # sysfs values end in a newline
    return path


def _rapl_tree(root: Path) -> None:
    # As on a real kernel: the zones live under devices/virtual, the class has symlinks,
    # and intel-rapl-mmio:0 is a second view of package-0.
    dev = root / "sys/devices/virtual/powercap"
    pkg = dev / "intel-rapl/intel-rapl:0"
    for zone, name, uj in ((pkg, "package-0", 123456789), (pkg / "intel-rapl:0:0", "core", 45678)):
        _put(zone, "name", name)
        _put(zone, "energy_uj", uj)
        _put(zone, "max_energy_range_uj", 262143328850)
        _put(zone, "enabled", 1)
    _put(dev / "intel-rapl-mmio/intel-rapl-mmio:0", "name", "package-0")
    _put(dev / "intel-rapl-mmio/intel-rapl-mmio:0", "energy_uj", 999)
    cls = root / "sys/class/powercap"
    cls.mkdir(parents=True)
    (cls / "intel-rapl:0").symlink_to(pkg)
    (cls / "intel-rapl:0:0").symlink_to(pkg / "intel-rapl:0:0")
    (cls / "intel-rapl-mmio:0").symlink_to(dev / "intel-rapl-mmio/intel-rapl-mmio:0")


def _board_tree(root: Path) -> None:
    _put(root, "sys/class/hwmon/hwmon0/name", "coretemp")
    _put(root, "sys/class/hwmon/hwmon0/temp1_input", 45000)
    orin = "sys/class/hwmon/hwmon1"  # Jetson Orin Nano, L4T 35+
    _put(root, f"{orin}/name", "ina3221")
    for n, (label, mv, ma) in enumerate(
        (("VDD_IN", 5000, 960), ("VDD_CPU_GPU_CV", 4992, 112), ("VDD_SOC", 4992, 288)), start=1
    ):
        _put(root, f"{orin}/in{n}_label", label)
        _put(root, f"{orin}/in{n}_input", mv)
        _put(root, f"{orin}/curr{n}_input", ma)
        _put(root, f"{orin}/in{n}_enable", 1)
        _put(root, f"{orin}/in{n + 3}_input", 8)  # shunt voltages: not power
    _put(root, f"{orin}/in7_label", "sum of shunt voltages")
    _put(root, f"{orin}/in7_input", 24)
    _put(root, f"{orin}/curr4_input", 1360)
    ina226 = "sys/class/hwmon/hwmon2"
    _put(root, f"{ina226}/name", "ina226")
    _put(root, f"{ina226}/in0_input", 2)
    _put(root, f"{ina226}/in1_input", 12000)
    _put(root, f"{ina226}/curr1_input", 208)
    _put(root, f"{ina226}/power1_input", 2500000)
    bat = "sys/class/power_supply/battery"  # Android fuel gauge
    _put(root, f"{bat}/type", "Battery")
    _put(root, f"{bat}/status", "Discharging")
    _put(root, f"{bat}/current_now", -850000)
    _put(root, f"{bat}/voltage_now", 3850000)
    _put(root, "sys/class/power_supply/usb/type", "USB")
    _put(root, "sys/class/power_supply/usb/current_now", 500000)


def test_detect_reads_every_sensor_in_watts_or_joules(tmp_path: Path) -> None:
    _rapl_tree(tmp_path)
    _board_tree(tmp_path)
    sensors = {s.name: s for s in detect_sensors(tmp_path)}
    assert set(sensors) == {
        "rapl:package-0",
        "rapl:package-0/core",
        "hwmon:ina3221:VDD_IN",
        "hwmon:ina3221:VDD_CPU_GPU_CV",
        "hwmon:ina3221:VDD_SOC",
        "hwmon:ina226:power1",
        "battery",
    }
    pkg = sensors["rapl:package-0"]
    assert pkg.cumulative and pkg.read() == pytest.approx(123.456789)
    assert pkg.max_energy_j == pytest.approx(262143.32885)
    assert sensors["hwmon:ina3221:VDD_IN"].read() == pytest.approx(5.0 * 0.96)
    assert sensors["hwmon:ina3221:VDD_SOC"].read() == pytest.approx(4.992 * 0.288)
    assert sensors["hwmon:ina226:power1"].read() == pytest.approx(2.5)
    assert sensors["battery"].read() == pytest.approx(0.85 * 3.85)
    assert sensors["battery"].warnings() == []
    # Only the package and the input rail count toward a total: no double counting.
    primary = {name for name, s in sensors.items() if s.primary}
    assert primary == {"rapl:package-0", "hwmon:ina3221:VDD_IN", "hwmon:ina226:power1", "battery"}


def test_ina3221_channel_without_a_rail_is_left_out(tmp_path: Path) -> None:
    _board_tree(tmp_path)
    _put(tmp_path, "sys/class/hwmon/hwmon1/in3_enable", 0)
    names = {s.name for s in open_sensors(["hwmon"], tmp_path)}
    assert names == {"hwmon:ina3221:VDD_IN", "hwmon:ina3221:VDD_CPU_GPU_CV", "hwmon:ina226:power1"}


def test_old_jetson_iio_rails(tmp_path: Path) -> None:
    dev = "sys/bus/i2c/devices/6-0040/iio:device0"  # Jetson Nano, L4T 32
    for n, (rail, mw) in enumerate((("POM_5V_IN", 2914), ("POM_5V_GPU", 81), ("POM_5V_CPU", 611))):
        _put(tmp_path, f"{dev}/rail_name_{n}", rail)
        _put(tmp_path, f"{dev}/in_power{n}_input", mw)
    sensors = {s.name: s for s in open_sensors(["iio"], tmp_path)}
    assert sensors["iio:POM_5V_IN"].read() == pytest.approx(2.914)
    assert sensors["iio:POM_5V_CPU"].read() == pytest.approx(0.611)
    assert [n for n, s in sensors.items() if s.primary] == ["iio:POM_5V_IN"]


@pytest.mark.parametrize("status", ["Charging", "Full"])
def test_battery_on_charger_warns(tmp_path: Path, status: str) -> None:
    _board_tree(tmp_path)
    _put(tmp_path, "sys/class/power_supply/battery/status", status)
    (battery,) = open_sensors(["battery"], tmp_path)
    assert any(status in w and "charger" in w for w in battery.warnings())


def _deny_energy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_open = builtins.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def _energy_is_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for zone in ("intel-rapl:0", "intel-rapl:0/intel-rapl:0:0"):
        path = tmp_path / "sys/devices/virtual/powercap/intel-rapl" / zone / "energy_uj"
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize(
    ("make_unreadable", "reason"),
    [
        (_deny_energy, "permission denied: RAPL counters are readable only by root"),
        (_energy_is_directory, "unreadable"),
    ],
)
def test_unreadable_rapl_is_skipped_with_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_unreadable: Callable[..., None],
    reason: str,
) -> None:
    _rapl_tree(tmp_path)
    _board_tree(tmp_path)
    make_unreadable(monkeypatch, tmp_path)
    found, skipped = detect_sensors_report(tmp_path)
    assert not [s for s in found if s.kind == "rapl"]
    assert [s for s in found if s.kind == "hwmon"]  # the rest is still found
    assert len(skipped) == 2
    assert all(p.endswith("energy_uj") and reason in why for p, why in skipped)
    with pytest.raises(SensorError, match=r"no rapl power sensor.*powercap.*energy_uj") as info:
        open_sensors(["rapl"], tmp_path)
    assert reason in str(info.value)


def test_missing_kind_names_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(SensorError) as info:
        open_sensors(["hwmon"], tmp_path)
    assert "no hwmon power sensor" in str(info.value)
    assert str(tmp_path / "sys/class/hwmon") in str(info.value)
    assert open_sensors(["auto"], tmp_path) == []


def test_bad_specs_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SensorError, match="unknown power sensor 'watts'"):
        open_sensors(["watts"], tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SensorError, match=r"tegrastats.*ships with L4T"):
        open_sensors(["tegrastats"], tmp_path)
    with pytest.raises(SensorError, match="two power sensors named 'csv'"):
        open_sensors(["csv:a.csv", "csv:b.csv"], tmp_path)
    _board_tree(tmp_path)  # auto plus a kind it already covers is not a duplicate
    assert len(open_sensors(["auto", "hwmon"], tmp_path)) == len(detect_sensors(tmp_path))


def test_parse_real_tegrastats_lines() -> None:
    orin = parse_tegrastats(ORIN_LINE)
    assert orin == pytest.approx({"VDD_IN": 4.736, "VDD_CPU_GPU_CV": 0.553, "VDD_SOC": 1.423})
    old = parse_tegrastats(L4T32_LINE)
    assert old == pytest.approx({"POM_5V_IN": 2.914, "POM_5V_GPU": 0.081, "POM_5V_CPU": 0.611})
    assert board_power(orin) == ("VDD_IN", pytest.approx(4.736))
    assert board_power(old) == ("POM_5V_IN", pytest.approx(2.914))
    rail, watts = board_power(parse_tegrastats("GPU 0/0 CPU 311/311 SOC 1245/1245"))
    assert rail == "sum of GPU+CPU+SOC" and watts == pytest.approx(1.556)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "meter.py"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}")
    path.chmod(0o755)
    return path


def _wait_for(ready: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait for a condition instead of a fixed sleep: a meter process starts late on a
    loaded machine, and a fixed warm-up would then cut into the measured windows."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout_s} s")
        time.sleep(0.01)


def _has_samples(rec: PowerRecorder) -> Callable[[], bool]:
    return lambda: all(rec._samples.values())  # every meter has delivered a reading


def _record(
    rec: PowerRecorder,
    ready: Callable[[PowerRecorder], Callable[[], bool]] = _has_samples,
    window: float = 0.3,
) -> list[dict[str, Any]]:
    """Idle then loop window, once ``ready`` says the meters are running."""
    with rec:
        _wait_for(ready(rec), "no meter reading")
        i0 = rec.mark()
        time.sleep(window)
        i1 = l0 = rec.mark()
        time.sleep(window)
        l1 = rec.mark()
    return rec.energy((i0, i1), (l0, l1), n=10)


@pytest.mark.parametrize(
    ("line", "rail", "watts"), [(ORIN_LINE, "VDD_IN", 4.736), (L4T32_LINE, "POM_5V_IN", 2.914)]
)
def test_tegrastats_stream_from_a_process(
    tmp_path: Path, line: str, rail: str, watts: float
) -> None:
    fake = _script(
        tmp_path,
        'if sys.argv[1:] != ["--interval", "100"]:\n    sys.exit(f"bad args {sys.argv}")\n'
        f"while True:\n    print({line!r}, flush=True)\n    time.sleep(0.005)\n",
    )
    (sensor,) = open_sensors([f"tegrastats:{fake}"])
    assert isinstance(sensor, TegrastatsSensor) and sensor.source.endswith("--interval 100")
    (res,) = _record(PowerRecorder([sensor]))
    assert res["warnings"] == []
    assert res["samples_loop"] >= 5
    assert res["loop_power_w"] == pytest.approx(watts)
    assert res["energy_per_inference_j"] == pytest.approx(0.0, abs=1e-9)
    assert res["method"].endswith(f"tegrastats samples at {res['interval_ms']:.1f} ms of {rail}")


def test_command_meter_watts_and_epoch_lines(tmp_path: Path) -> None:
    fake = _script(
        tmp_path,
        'print("not a number", flush=True)\n'
        "i = 0\n"
        "while True:\n"
        '    print("3.0" if i % 2 else f"{time.time()},4.0", flush=True)\n'
        "    i += 1\n"
        "    time.sleep(0.005)\n",
    )
    (sensor,) = open_sensors([f"command:{shlex.quote(sys.executable)} {fake}"])
    assert sensor.kind == "command"
    (res,) = _record(PowerRecorder([sensor]))
    # Alternating plain (3 W, arrival time) and epoch-stamped (4 W) readings average 3.5 W
    # only if the epoch times were moved onto the monotonic clock.
    assert res["loop_power_w"] == pytest.approx(3.5, rel=0.05)
    assert res["idle_power_w"] == pytest.approx(3.5, rel=0.05)
    assert "1 unparseable meter lines, first: 'not a number'" in res["warnings"]


def test_command_meter_failure_is_reported(tmp_path: Path) -> None:
    fake = _script(tmp_path, 'sys.stderr.write("no meter on /dev/ttyUSB0\\n")\nsys.exit(3)\n')
    (sensor,) = open_sensors([f"command:{fake}"])
    # Wait for the meter to have exited (status 3), however long it takes to start.
    exited = lambda rec: lambda: sensor._proc is not None and sensor._proc.poll() is not None  # noqa: E731
    (res,) = _record(PowerRecorder([sensor]), exited, window=0.02)
    assert res["energy_per_inference_j"] is None
    assert any("status 3" in w and "no meter on /dev/ttyUSB0" in w for w in res["warnings"])


def _flat(samples: list[tuple[float, float]]) -> list[float]:
    return [x for sample in samples for x in sample]


def test_meter_csv_columns_and_units(tmp_path: Path) -> None:
    log = tmp_path / "meter.csv"
    log.write_text("time,volts,amps\n1000.0,5.0,0.4\n1000.5,5.0,0.6\n")
    assert _flat(CsvSensor(log).samples(epoch_offset=999.0)) == pytest.approx([1.0, 2.0, 1.5, 3.0])
    log.write_text("timestamp;power_mW\n1000.0;2500\n")
    assert _flat(read_meter_csv(log)) == pytest.approx([1000.0, 2.5])
    log.write_text("1000.0,4.0\n1001.0,4.5\n")
    assert _flat(read_meter_csv(log)) == pytest.approx([1000.0, 4.0, 1001.0, 4.5])
    log.write_text("time,watts\n1000.0,4.0\n1001.0,oops\n")
    with pytest.raises(SensorError, match="data row 2"):
        read_meter_csv(log)
    log.write_text("time,temperature\n1000.0,40\n")
    with pytest.raises(SensorError, match="expected columns time"):
        read_meter_csv(log)


def test_csv_energy_uses_the_recorder_epoch(tmp_path: Path) -> None:
    rec = PowerRecorder([CsvSensor(tmp_path / "meter.csv")])
    rows = [f"{rec.epoch_offset + i * 0.01:.6f},{2.0 if i < 100 else 5.0}" for i in range(200)]
    (tmp_path / "meter.csv").write_text("\n".join(rows) + "\n")
    (res,) = rec.energy((0.1, 0.9), (1.0, 1.9), n=9)
    assert res["energy_per_inference_j"] == pytest.approx(0.3, rel=1e-6)


class Replay(PowerSensor):
    """Fixed samples handed to the recorder as a meter log would be."""

    mode = "file"

    def __init__(
        self,
        samples: list[tuple[float, float]],
        cumulative: bool = False,
        max_j: float | None = None,
    ) -> None:
        super().__init__("replay", "rapl" if cumulative else "hwmon", "test")
        self.data, self.cumulative, self.max_energy_j = samples, cumulative, max_j

    def samples(self, epoch_offset: float) -> list[tuple[float, float]]:
        return self.data


TIMES = [i / 100 for i in range(201)]


def _step_watts(t: float) -> float:
    return 2.0 if t < 1.0 else 5.0


def _step_joules(t: float) -> float:
    return 2.0 * t if t < 1.0 else 2.0 + 5.0 * (t - 1.0)


def test_energy_per_inference_exact_for_power_samples() -> None:
    rec = PowerRecorder([Replay([(t, _step_watts(t)) for t in TIMES])])
    (res,) = rec.energy((0.1, 0.9), (1.0, 1.9), n=9)
    assert res["idle_power_w"] == pytest.approx(2.0)
    assert res["loop_power_w"] == pytest.approx(5.0)
    assert res["loop_energy_j"] == pytest.approx(4.5)
    assert res["energy_per_inference_j"] == pytest.approx((4.5 - 2.0 * 0.9) / 9)
    assert res["samples_idle"] == 81 and res["samples_loop"] == 91
    assert res["method"] == "trapezoid over 91 hwmon samples at 10.0 ms"
    assert res["warnings"] == []


def test_trapezoid_interpolates_at_window_edges() -> None:
    coarse = [(i / 10, i / 10) for i in range(21)]  # P = t: trapezoids are exact
    (res,) = PowerRecorder([Replay(coarse)]).energy((0.15, 0.87), (1.05, 1.93), n=1)
    assert res["idle_power_w"] == pytest.approx((0.87**2 - 0.15**2) / 2 / 0.72)
    assert res["loop_energy_j"] == pytest.approx((1.93**2 - 1.05**2) / 2)


def test_rapl_counter_difference_across_a_wrap() -> None:
    max_j = 105.0  # the counter starts at 100 J and wraps 5 J later, inside the loop
    counter = [(t, (100.0 + _step_joules(t)) % max_j) for t in TIMES]
    assert any(b < a for (_, a), (_, b) in itertools.pairwise(counter))
    (res,) = PowerRecorder([Replay(counter, True, max_j)]).energy((0.1, 0.9), (1.05, 1.95), n=9)
    assert res["idle_power_w"] == pytest.approx(2.0)
    assert res["loop_energy_j"] == pytest.approx(4.5)
    assert res["energy_per_inference_j"] == pytest.approx(0.3)
    assert res["method"].startswith("RAPL energy counter difference over 91 reads")
    assert res["method"].endswith("1 counter wrap(s) undone")
    (res,) = PowerRecorder([Replay(counter, True, None)]).energy((0.1, 0.9), (1.05, 1.95), n=9)
    assert res["energy_per_inference_j"] is None
    assert any("range is unknown" in w for w in res["warnings"])


def test_too_few_samples_gives_none_and_says_why() -> None:
    sparse = [(t, 3.0) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    (res,) = PowerRecorder([Replay(sparse)]).energy((0.1, 0.4), (0.9, 1.2), n=5)
    assert (res["samples_idle"], res["samples_loop"]) == (0, 1)
    assert res["idle_power_w"] is None and res["loop_power_w"] is None
    assert res["energy_per_inference_j"] is None
    assert res["warnings"] == [
        f"{k} samples in the {s} s {w} window, need at least 2: lengthen the window or "
        "sample more often"
        for k, s, w in ((0, "0.300", "idle"), (1, "0.300", "loop"))
    ]
    (res,) = PowerRecorder([Replay(sparse)]).energy((0.0, 0.5), (0.5, 1.5), n=5)
    assert res["energy_per_inference_j"] == pytest.approx(0.0)  # two samples are enough


def test_partial_coverage_and_bad_windows() -> None:
    rec = PowerRecorder([Replay([(t, 3.0) for t in TIMES if t >= 0.5])])
    (res,) = rec.energy((0.0, 1.0), (1.0, 2.0), n=1)
    assert res["idle_power_w"] == pytest.approx(3.0)  # the uncovered half at the nearest power
    assert res["warnings"] == ["samples cover only 50% of the idle window"]
    with pytest.raises(ConfigError, match="loop window"):
        rec.energy((0.0, 1.0), (2.0, 1.0), n=1)
    with pytest.raises(ConfigError, match="n >= 1"):
        rec.energy((0.0, 1.0), (1.0, 2.0), n=0)


class Clocked(PowerSensor):
    """A polled sensor whose power is a function of time; every ``fail_every``-th read fails."""

    def __init__(self, watts: Callable[[float], float], fail_every: int = 0) -> None:
        super().__init__("synthetic", "hwmon", "test")
        self.watts, self.fail_every, self.reads = watts, fail_every, 0

    def read(self) -> float:
        self.reads += 1
        if self.fail_every and self.reads % self.fail_every == 0:
            raise OSError(5, "Input/output error")
        return self.watts(time.monotonic())


def test_recorder_thread_measures_idle_and_loop_power() -> None:
    t0 = time.monotonic()
    # A 1 s loop: a poll delayed on a loaded machine smears the power step at each edge
    # by the delay, and the longer window keeps that well inside the 5% asked below.
    idle, loop, n = (t0 + 0.02, t0 + 0.22), (t0 + 0.25, t0 + 1.25), 100
    sensor = Clocked(lambda t: 5.0 if loop[0] <= t < loop[1] else 2.0)
    rec = PowerRecorder([sensor], interval_s=0.005)
    rec.start()
    time.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
    rec.stop()
    rec.stop()  # idempotent
    (res,) = rec.energy(idle, loop, n)
    assert res["idle_power_w"] == pytest.approx(2.0, rel=1e-6)
    assert res["energy_per_inference_j"] == pytest.approx(3.0 * 1.0 / n, rel=0.05)
    assert res["samples_loop"] >= 20
    assert res["method"].startswith(f"trapezoid over {res['samples_loop']} hwmon samples at")
    with pytest.raises(SensorError, match="one run"):
        rec.start()


def test_failed_reads_are_reported_not_fatal() -> None:
    rec = PowerRecorder([Clocked(lambda t: 1.0, fail_every=2)], interval_s=0.002)
    (res,) = _record(rec, window=0.05)
    assert res["loop_power_w"] == pytest.approx(1.0)
    assert any("failed reads, first: [Errno 5] Input/output error" in w for w in res["warnings"])


def test_loop_below_idle_warns() -> None:
    samples = [(t, 5.0 if t < 1.0 else 2.0) for t in TIMES]
    (res,) = PowerRecorder([Replay(samples)]).energy((0.1, 0.9), (1.0, 1.9), n=9)
    assert res["energy_per_inference_j"] == pytest.approx(-0.3)
    assert res["warnings"] == [
        "loop power 2.000 W is below idle 5.000 W: the idle window was not idle or the sensor "
        "is too coarse for this loop"
    ]
