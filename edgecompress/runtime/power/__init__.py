"""Energy per inference, measured on the device while the benchmark loop runs.

Each sensor is sampled in the background; energy per inference is
``(E_loop - P_idle * T_loop) / n``, where ``P_idle`` is the mean power over an idle
window before the loop. Times are ``time.monotonic()`` seconds. Standard library and
numpy only: this module is copied onto the board.

>>> sensors = open_sensors(["auto"])  # doctest: +SKIP
>>> with PowerRecorder(sensors) as rec:  # doctest: +SKIP
...     i0 = rec.mark(); time.sleep(2.0); i1 = rec.mark()
...     l0 = rec.mark(); run_model(n=500); l1 = rec.mark()
>>> rec.energy((i0, i1), (l0, l1), n=500)[0]["energy_per_inference_j"]  # doctest: +SKIP
0.0123
"""

from edgecompress.runtime.power.detect import detect_sensors, detect_sensors_report, open_sensors
from edgecompress.runtime.power.recorder import PowerRecorder
from edgecompress.runtime.power.sensors import (
    INPUT_RAILS,
    BatterySensor,
    CommandSensor,
    CsvSensor,
    PowerSensor,
    RaplSensor,
    SensorError,
    SysfsPowerSensor,
    TegrastatsSensor,
    board_power,
    parse_tegrastats,
    read_meter_csv,
)

__all__ = [
    "INPUT_RAILS",
    "BatterySensor",
    "CommandSensor",
    "CsvSensor",
    "PowerRecorder",
    "PowerSensor",
    "RaplSensor",
    "SensorError",
    "SysfsPowerSensor",
    "TegrastatsSensor",
    "board_power",
    "detect_sensors",
    "detect_sensors_report",
    "open_sensors",
    "parse_tegrastats",
    "read_meter_csv",
]
