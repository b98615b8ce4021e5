"""`edgecompress compare old new`: what got better and worse per target and artifact; a
latency change inside the spread the benchmark recorded is noise, not a regression."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edgecompress.cli import main
from edgecompress.errors import ConfigError
from edgecompress.report.compare import compare_reports
from edgecompress.report.schema import Report


def _lat(p50: float, p90: float, mj: float, kind: str = "measured") -> dict[str, Any]:
    """A latency entry as stages/bench.py: _entry writes it."""
    return {
        "artifact": "rknn",
        "measured": True,
        "device": "ssh://ci@rock5b",
        "runtime": "rknnlite 2.3.0",
        "threads": 1,
        "runs": 200,
        "warmup": 20,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p90 * 1.2,
        "mean_ms": p50,
        "std_ms": (p90 - p50) / 1.28,
        "energy": {"kind": kind, "energy_per_inference_j": mj / 1e3},
    }


def _report(top1: float = 97.5, p50: float = 6.0, p90: float = 6.3, size: int = 2_500_000,
            mj: float = 2.0, kind: str = "measured") -> dict[str, Any]:  # fmt: skip
    r = Report()
    r.set("target", {"name": "rk3588"})
    r.add_accuracy("pytorch", {"top1": 98.0}, "test")
    r.add_accuracy("rknn-simulator", {"top1": top1}, "test")
    r.data["accuracy"]["rknn-simulator"]["artifact"] = {"value": "rknn", "unit": "", "method": ""}
    r.add_artifact("rknn", {"path": "model.rknn", "size_bytes": size})
    r.add_latency("rknn@ssh://ci@rock5b", _lat(p50, p90, mj, kind))
    return r.data


def _verdicts(old: dict[str, Any], new: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c.quantity, c.subject): c.verdict for c in compare_reports(old, new)}


def test_latency_change_inside_the_recorded_spread_is_noise() -> None:
    old = _report(p50=6.0, p90=6.3)  # calls already vary by 0.3 ms
    new = _report(p50=6.25, p90=6.5)
    v = _verdicts(old, new)
    assert v[("latency p50", "model.rknn@ssh://ci@rock5b")] == "noise"
    assert v[("energy", "model.rknn@ssh://ci@rock5b")] == "same"
    assert not [c for c in compare_reports(old, new) if c.regression]


def test_latency_change_beyond_the_spread_is_worse_or_better() -> None:
    old, key = _report(p50=6.0, p90=6.3), ("latency p50", "model.rknn@ssh://ci@rock5b")
    assert _verdicts(old, _report(p50=6.8, p90=7.0))[key] == "worse"
    assert _verdicts(old, _report(p50=5.0, p90=5.2))[key] == "better"


def test_measured_energy_gets_the_latency_spread_analytic_does_not() -> None:
    # 5% relative spread (0.3 / 6.0): a 3% energy change is noise when measured...
    v = _verdicts(_report(mj=2.0), _report(mj=2.06))
    assert v[("energy", "model.rknn@ssh://ci@rock5b")] == "noise"
    # ...and real when both figures are the deterministic analytic estimate.
    v = _verdicts(_report(mj=2.0, kind="analytic"), _report(mj=2.06, kind="analytic"))
    assert v[("energy", "model.rknn@ssh://ci@rock5b")] == "worse"
    # A measured figure against an estimate is not a regression either way.
    v = _verdicts(_report(mj=2.0, kind="analytic"), _report(mj=9.0))
    assert v[("energy", "model.rknn@ssh://ci@rock5b")] == "not comparable"


def test_accuracy_and_size_changes_are_real() -> None:
    v = _verdicts(_report(top1=97.5, size=2_500_000), _report(top1=97.0, size=2_400_000))
    assert v[("top-1", "rknn-simulator (model.rknn)")] == "worse"
    assert v[("size", "model.rknn")] == "better"
    assert v[("top-1", "pytorch")] == "same"


def test_entries_in_one_report_only_are_new_or_gone() -> None:
    old, new = _report(), _report()
    new["artifacts"]["onnx"] = {"path": "model.onnx", "size_bytes": 1000}
    del new["latency"]["rknn@ssh://ci@rock5b"]
    v = _verdicts(old, new)
    assert v[("size", "model.onnx")] == "new"
    assert v[("latency p50", "model.rknn@ssh://ci@rock5b")] == "gone"
    assert v[("energy", "model.rknn@ssh://ci@rock5b")] == "gone"


def test_the_same_file_from_convert_and_build_is_compared_by_its_name() -> None:
    """convert records the INT8 file as ``onnx_int8``, build as ``onnx``: both ship
    ``model.int8.onnx``, so its size, latency and top-1 are compared, not listed as gone
    and new."""
    old, new = Report(), Report()
    for r, name, p50 in ((old, "onnx_int8", 0.5), (new, "onnx", 0.3)):
        r.set("target", {"name": "host"})
        r.add_accuracy("onnxruntime-int8", {"top1": 97.0}, "test", artifact=name)
        r.add_artifact(name, {"path": "model.int8.onnx", "size_bytes": 200_000})
        r.add_latency(f"{name}@host", {**_lat(p50, p50 * 1.01, 1.0), "artifact": name})
    v = _verdicts(old.data, new.data)
    assert v[("latency p50", "model.int8.onnx@host")] == "better"
    assert v[("size", "model.int8.onnx")] == "same"
    assert v[("top-1", "onnxruntime-int8 (model.int8.onnx)")] == "same"
    assert "new" not in v.values() and "gone" not in v.values()


def test_reports_of_models_with_different_classes_are_refused() -> None:
    old, new = _report(), _report()
    old["data"] = {"class_outputs": {"cat": 0, "dog": 1}}
    new["data"] = {"class_outputs": {"0": 0, "90": 1, "180": 2, "270": 3}}
    with pytest.raises(ConfigError, match=r"different classes \(cat, dog vs 0, 90, 180, 270\)"):
        compare_reports(old, new)


def _save(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / name / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_cli_exit_codes_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _save(tmp_path, "v1", _report(p50=6.0, p90=6.3))
    noisy = _save(tmp_path, "v2", _report(p50=6.2, p90=6.4))
    slower = _save(tmp_path, "v3", _report(p50=7.0, p90=7.2, top1=98.0))
    assert main(["compare", str(old), str(noisy), "--fail-on-regression"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "latency p50" in x)
    assert "6.000 ms" in line and "6.200 ms" in line and "+0.200 ms (+3.3%)" in line
    assert "| noise" in line and "spread (p90-p50) 0.300 ms" in line
    assert "0 worse, 0 better, 1 noise" in out
    assert main(["compare", str(old), str(slower)]) == 0  # reported, not failed, by default
    assert main(["compare", str(old), str(slower), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "WORSE" in out and "+0.50 points" in out and "1 worse, 1 better" in out


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _save(tmp_path, "v1", _report())
    host = copy.deepcopy(_report())
    host["target"] = {"name": "host"}
    other = _save(tmp_path, "v2", host)
    assert main(["compare", str(old), str(other)]) == 2
    assert "compare releases of the same target" in capsys.readouterr().err
    assert main(["compare", str(old), str(tmp_path / "missing.json")]) == 2
    assert "no such report" in capsys.readouterr().err
