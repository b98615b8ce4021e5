"""`edgecompress check` exits 0 when budgets hold, 1 when one breaks, 2 on a bad report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecompress.cli import main
from edgecompress.report.schema import Report


def _report(tmp_path: Path, ref: float = 98.0, deployed: float = 97.5, p50: float = 0.8) -> Path:
    r = Report()
    r.add_accuracy("pytorch", {"top1": ref, "top5": 100.0}, "test")
    r.add_accuracy("rknn-simulator", {"top1": deployed, "top5": 100.0}, "test")
    r.add_artifact("onnx", {"path": "model.onnx", "size_bytes": 2_500_000})
    r.add_latency(
        "onnx@host",
        {
            "artifact": "onnx",
            "measured": True,
            "p50_ms": p50,
            "p90_ms": p50,
            "p99_ms": p50,
            "mean_ms": p50,
            "std_ms": 0.0,
            "runs": 10,
            "warmup": 1,
        },
    )
    r.add_latency("rknn@rk3588", {"artifact": "rknn", "measured": False, "reason": "no device"})
    r.save(tmp_path)
    return tmp_path / "report.json"


def test_budgets_kept(tmp_path: Path) -> None:
    path = _report(tmp_path)
    assert (
        main(
            [
                "check",
                str(path),
                "--max-accuracy-drop",
                "1.0",
                "--max-latency-ms",
                "1",
                "--max-size-mb",
                "3",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        (
            ["--max-accuracy-drop", "1.0"],
            {"deployed": 96.5},
            "rknn-simulator top-1 96.50% is 1.50 points",
        ),
        (["--max-latency-ms", "0.5"], {}, "onnx@host p50 0.800 ms > 0.5 ms"),
        (["--max-size-mb", "2"], {}, "onnx is 2.50 MB > 2.0 MB"),
    ],
)
def test_each_broken_budget_exits_1_and_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], kwargs: dict, words: str
) -> None:
    path = _report(tmp_path, **kwargs)
    assert main(["check", str(path), *args]) == 1
    assert words in capsys.readouterr().out


def test_bad_reports_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "none.json"), "--max-accuracy-drop", "1"]) == 2
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert main(["check", str(junk), "--max-accuracy-drop", "1"]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/9"}))
    assert main(["check", str(other), "--max-accuracy-drop", "1"]) == 2
    assert "expected 'edgecompress.report/1'" in capsys.readouterr().err
    assert main(["check", str(_report(tmp_path))]) == 2  # no budget given


def test_console_script_exit_code(tmp_path: Path) -> None:
    path = _report(tmp_path, deployed=90.0)
    exe = Path(sys.executable).with_name("edgecompress")
    res = subprocess.run(
        [str(exe), "check", str(path), "--max-accuracy-drop", "1"], capture_output=True, text=True
    )
    assert res.returncode == 1, res.stderr
    assert "budgets broken" in res.stdout


# --- budget files -------------------------------------------------------------------

JUNIT_XSD = Path(__file__).parent / "junit.xsd"


def _lat(artifact: str, p50: float, p90: float, mj: float | None, device: str = "local") -> dict:
    entry = {
        "artifact": artifact,
        "measured": True,
        "device": device,
        "runtime": "onnxruntime 1.20.0",
        "threads": 1,
        "runs": 200,
        "warmup": 20,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p90 * 1.1,
        "mean_ms": p50,
        "std_ms": (p90 - p50) / 1.28,
    }
    if mj is not None:
        entry["energy"] = {"kind": "measured", "energy_per_inference_j": mj / 1e3}
    return entry


def _write_report(
    path: Path,
    *,
    target: str = "rk3588",
    deployed: float = 97.5,
    p50: float = 4.0,
    board_p50: float = 6.0,
    size: int = 2_500_000,
    cosine: float = 0.9995,
    board_mj: float = 2.0,
) -> Path:
    """A report as a build for rk3588 with a board writes it (see stages/*.py)."""
    r = Report()
    r.set("target", {"name": target})
    r.add_accuracy("pytorch", {"top1": 98.0, "top5": 100.0}, "test")
    r.add_accuracy("onnxruntime", {"top1": 98.0, "top5": 100.0}, "test")
    r.add_accuracy("rknn-simulator", {"top1": deployed, "top5": 100.0}, "test")
    r.add_parity("onnx", {"max_abs_diff": {"value": 1e-6}, "cosine": {"value": 0.999999}})
    r.add_parity("rknn", {"cosine[0]": {"value": cosine, "unit": "", "method": "test"}})
    r.add_artifact("onnx", {"path": "model.onnx", "size_bytes": 1_000_000})
    r.add_artifact("rknn", {"path": "model.rknn", "size_bytes": size})
    r.add_latency("onnx@host", _lat("onnx", p50, p50 * 1.05, 0.4))
    r.add_latency(
        "rknn@ssh://ci@rock5b",
        _lat("rknn", board_p50, board_p50 * 1.05, board_mj, "ssh://ci@rock5b"),
    )
    r.add_latency(
        "onnx@adb://R58M",
        {"artifact": "onnx", "measured": False, "reason": "unreachable: adb: device offline"},
    )
    path.mkdir(parents=True, exist_ok=True)
    r.save(path)
    return path / "report.json"


def _budget(tmp_path: Path, text: str, name: str = "budget.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


KEPT_BUDGET = """\
model: digits-resnet
default:
  max_accuracy_drop: 1.0
  min_parity_cosine: 0.999
targets:
  rk3588:
    max_latency_ms: 8
    max_size_mb: 3
    max_energy_mj: 3
"""


def test_a_budget_file_that_holds_prints_every_budget_with_value_limit_margin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _write_report(tmp_path / "new")
    assert main(["check", str(report), "--budget", str(_budget(tmp_path, KEPT_BUDGET))]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    rows = {(c[0], c[1]): c[2:] for c in cells if len(c) == 6}
    # Every runtime but the reference, every cosine, artifact and latency entry: one row each.
    assert rows[("max_accuracy_drop", "onnxruntime")] == [
        "0.00 points", "1.00 points", "+1.00 points", "kept"
    ]  # fmt: skip
    assert rows[("max_accuracy_drop", "rknn-simulator")][2] == "+0.50 points"
    assert rows[("min_parity_cosine", "onnx")][3] == "kept"
    assert rows[("min_parity_cosine", "rknn cosine[0]")] == [
        "0.999500", "0.999000", "+0.000500", "kept"
    ]  # fmt: skip
    assert rows[("max_latency_ms", "onnx@host")] == ["4.000 ms", "8.000 ms", "+4.000 ms", "kept"]
    assert rows[("max_latency_ms", "rknn@ssh://ci@rock5b")][2] == "+2.000 ms"
    assert rows[("max_size_mb", "rknn")] == ["2.500 MB", "3.000 MB", "+0.500 MB", "kept"]
    assert rows[("max_size_mb", "onnx")][2] == "+2.000 MB"
    assert rows[("max_energy_mj", "rknn@ssh://ci@rock5b (measured)")][:2] == [
        "2.0000 mJ", "3.0000 mJ"
    ]  # fmt: skip
    assert rows[("max_energy_mj", "onnx@host (measured)")][3] == "kept"
    assert rows[("max_latency_ms", "onnx@adb://R58M")] == [
        "-", "8.000 ms", "-", "skipped (not measured: unreachable: adb: device offline)"
    ]  # fmt: skip
    assert "all budgets kept (10 kept, 0 broken, 1 skipped)" in out


BUDGET_KINDS = [  # limit, a report that keeps it, one that breaks it, what is printed
    (
        "max_accuracy_drop: 1.0",
        {},
        {"deployed": 96.5},
        "rknn-simulator top-1 96.50% is 1.50 points",
    ),
    ("max_latency_ms: 5", {"board_p50": 4.5}, {}, "rknn@ssh://ci@rock5b p50 6.000 ms > 5.0 ms"),
    ("max_size_mb: 2", {"size": 1_500_000}, {}, "rknn is 2.50 MB > 2.0 MB"),
    ("max_energy_mj: 1.5", {"board_mj": 1.0}, {}, "rknn@ssh://ci@rock5b (measured) 2.0000 mJ"),
    (
        "min_parity_cosine: 0.9999",
        {"cosine": 0.99999},
        {},
        "rknn cosine[0] cosine 0.999500 < 0.9999",
    ),
]


@pytest.mark.parametrize(("limit", "good", "bad", "words"), BUDGET_KINDS)
def test_each_budget_kind_holds_with_exit_0_and_breaks_with_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    limit: str,
    good: dict,
    bad: dict,
    words: str,
) -> None:
    budget = _budget(tmp_path, f"targets:\n  rk3588:\n    {limit}\n")
    kept = _write_report(tmp_path / "kept", **good)
    assert main(["check", str(kept), "--budget", str(budget)]) == 0
    assert "BROKEN" not in capsys.readouterr().out
    broken = _write_report(tmp_path / "broken", **bad)
    assert main(["check", str(broken), "--budget", str(budget)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN {words.split(' ')[0]}" in out or words in out
    assert words in out and "budgets broken (" in out


def test_relative_latency_budget_against_the_previous_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = _budget(tmp_path, "targets:\n  rk3588:\n    max_latency_increase_pct: 10\n")
    old = _write_report(tmp_path / "v1", board_p50=6.0, p50=4.0)
    slower = _write_report(tmp_path / "v2", board_p50=6.9, p50=4.0)  # +15%
    same = _write_report(tmp_path / "v3", board_p50=6.3, p50=3.0)  # +5%, and faster on host
    args = ["--budget", str(budget), "--baseline", str(old)]
    assert main(["check", str(same), *args]) == 0
    assert main(["check", str(slower), *args]) == 1
    out = capsys.readouterr().out
    assert "rknn@ssh://ci@rock5b p50 6.900 ms is +15.0% vs the baseline's 6.000 ms" in out
    assert "| -5.0 %" in out  # the margin left by the 5% slower board run


def test_relative_budget_without_baseline_or_wrong_baseline_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = _budget(tmp_path, "default:\n  max_latency_increase_pct: 10\n")
    report = _write_report(tmp_path / "new")
    assert main(["check", str(report), "--budget", str(budget)]) == 2
    assert "--baseline previous/report.json" in capsys.readouterr().err
    host = _write_report(tmp_path / "host", target="host")
    assert main(["check", str(report), "--budget", str(budget), "--baseline", str(host)]) == 2
    assert "same target" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "report.json"
    assert main(["check", str(report), "--budget", str(budget), "--baseline", str(missing)]) == 2


def test_target_sections_override_the_default(tmp_path: Path) -> None:
    budget = _budget(
        tmp_path,
        "default: {max_latency_ms: 5}\ntargets:\n  rk3588: {max_latency_ms: 7}\n"
        "  host: {max_size_mb: 100}\n",
    )
    rk = _write_report(tmp_path / "rk", board_p50=6.0)
    host = _write_report(tmp_path / "host", target="host", board_p50=6.0)
    assert main(["check", str(rk), "--budget", str(budget)]) == 0  # 6 ms <= rk3588's 7
    assert main(["check", str(host), "--budget", str(budget)]) == 1  # 6 ms > default 5


def test_measured_on_device_reads_the_boards_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = _budget(tmp_path, "default: {max_latency_ms: 5, measured_on: device}\n")
    report = _write_report(tmp_path / "r", p50=9.0, board_p50=4.0)  # slow host, fast board
    assert main(["check", str(report), "--budget", str(budget)]) == 0
    assert "onnx@host" not in capsys.readouterr().out
    # A build whose board was not reached has nothing to gate: bad input, not a pass.
    r = json.loads(report.read_text())
    r["latency"]["rknn@ssh://ci@rock5b"] = {"artifact": "rknn", "measured": False, "reason": "x"}
    report.write_text(json.dumps(r))
    assert main(["check", str(report), "--budget", str(budget)]) == 2
    assert "no measured latency (measured_on: device)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "default:\n  max_latency: 5\n",
            "unknown key 'max_latency' (did you mean 'max_latency_ms'?)",
        ),
        (
            "targets:\n  rk3858: {max_size_mb: 1}\n",
            "unknown target 'rk3858' (did you mean 'rk3588'?)",
        ),
        ("defaults:\n  max_size_mb: 1\n", "unknown key 'defaults' (did you mean 'default'?)"),
        ("default:\n  max_size_mb: -1\n", "default: max_size_mb: Input should be greater than 0"),
        ("default:\n  measured_on: board\n", "measured_on: Input should be 'anywhere', 'host'"),
        ("default: {max_size_mb: [1}\n", "not valid YAML"),
        ("model: x\n", "no limits"),
        ("- max_size_mb: 1\n", "expected a mapping"),
        ("targets:\n  host: {max_size_mb: 1}\n", "no budget applies to target 'rk3588'"),
    ],
)
def test_a_bad_budget_file_exits_2_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    budget = _budget(tmp_path, text)
    assert main(["check", str(_write_report(tmp_path / "r")), "--budget", str(budget)]) == 2
    err = capsys.readouterr().err
    assert str(budget) in err and words in err


def test_missing_budget_file_and_nothing_to_check_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _write_report(tmp_path / "r")
    assert main(["check", str(report), "--budget", str(tmp_path / "none.yaml")]) == 2
    assert "no such budget file" in capsys.readouterr().err
    r = json.loads(report.read_text())
    r["parity"] = {}
    report.write_text(json.dumps(r))
    budget = _budget(tmp_path, "default: {min_parity_cosine: 0.99}\n")
    assert main(["check", str(report), "--budget", str(budget)]) == 2
    assert "no parity cosine" in capsys.readouterr().err


def test_flags_are_an_inline_budget_that_overrides_the_file(tmp_path: Path) -> None:
    budget = _budget(tmp_path, "default: {max_latency_ms: 5, max_size_mb: 3}\n")
    report = _write_report(tmp_path / "r", board_p50=6.0)
    assert main(["check", str(report), "--budget", str(budget)]) == 1
    assert main(["check", str(report), "--budget", str(budget), "--max-latency-ms", "7"]) == 0
    assert main(["check", str(report), "--budget", str(budget), "--max-size-mb", "2"]) == 1
    # A file with no section for this target still takes the flags' budget.
    host_only = _budget(tmp_path, "targets: {host: {max_latency_ms: 1}}\n", "host.yaml")
    assert main(["check", str(report), "--budget", str(host_only), "--max-size-mb", "3"]) == 0
    assert main(["check", str(report), "--max-size-mb", "-1"]) == 2


def _junit(path: Path) -> Any:
    """Validated against the JUnit schema in tests/junit.xsd, then parsed."""
    import xml.etree.ElementTree as ET

    try:
        import xmlschema
    except ImportError:  # the dev extra installs it; without it, check the structure only
        xmlschema = None
    if xmlschema is not None:
        xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(path))
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and [s.tag for s in root] == ["testsuite"]
    return root[0]


def test_junit_xml_has_one_case_per_budget_and_passes_the_schema(tmp_path: Path) -> None:
    budget = _budget(tmp_path, "default: {max_latency_ms: 5, max_size_mb: 3}\nmodel: digits\n")
    report = _write_report(tmp_path / "r", board_p50=6.0)
    junit = tmp_path / "ci" / "budgets.xml"
    junit.parent.mkdir()
    junit.write_text("stale")  # replaced whole
    assert main(["check", str(report), "--budget", str(budget), "--junit", str(junit)]) == 1
    suite = _junit(junit)
    assert suite.get("name") == "edgecompress budget: digits on rk3588"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {
        "max_latency_ms: onnx@host",
        "max_latency_ms: rknn@ssh://ci@rock5b",
        "max_latency_ms: onnx@adb://R58M",
        "max_size_mb: onnx",
        "max_size_mb: rknn",
    }
    failure = cases["max_latency_ms: rknn@ssh://ci@rock5b"].find("failure")
    assert failure is not None and "6.000 ms > 5.0 ms" in failure.get("message")
    assert "margin -1.000 ms" in failure.text
    assert cases["max_latency_ms: onnx@adb://R58M"].find("skipped") is not None
    assert cases["max_size_mb: onnx"].find("failure") is None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["report"] == str(report) and props["target"] == "rk3588"
    assert [p.name for p in junit.parent.iterdir()] == ["budgets.xml"], "no temporary files"


def test_junit_xml_escapes_and_validates_when_all_kept(tmp_path: Path) -> None:
    report = _write_report(tmp_path / "r")
    junit = tmp_path / "j.xml"
    assert main(["check", str(report), "--max-size-mb", "5", "--junit", str(junit)]) == 0
    suite = _junit(junit)
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")
    assert all(c.find("system-out") is not None for c in suite.iter("testcase"))


def test_check_runs_without_torch(tmp_path: Path) -> None:
    """A CI job gates a report without the compression stack: the budget modules and the
    check command never import torch."""
    report = _write_report(tmp_path / "r")
    budget = _budget(tmp_path, KEPT_BUDGET)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgecompress.report.budget_config, edgecompress.report.compare\n"
        "from edgecompress.cli import main\n"
        f"rc = main(['check', {str(report)!r}, '--budget', {str(budget)!r}, "
        f"'--junit', {str(tmp_path / 'j.xml')!r}])\n"
        f"rc2 = main(['compare', {str(report)!r}, {str(report)!r}])\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "sys.exit(rc or rc2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "all budgets kept" in res.stdout


@pytest.mark.slow
def test_budget_and_compare_on_a_real_build(
    digits_host_build: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report a host build writes has everything each budget kind reads."""
    out, _ = digits_host_build
    budget = _budget(
        tmp_path,
        "default: {max_accuracy_drop: 1.0, min_parity_cosine: 0.999, max_size_mb: 50,\n"
        "          max_latency_ms: 1000, max_energy_mj: 1000, max_latency_increase_pct: 10000}\n",
    )
    report, junit = out / "report.json", tmp_path / "budgets.xml"
    capsys.readouterr()
    args = ["check", str(report), "--budget", str(budget), "--baseline", str(report)]
    assert main([*args, "--junit", str(junit)]) == 0
    budgets = {c.get("name").split(":")[0] for c in _junit(junit).iter("testcase")}
    assert budgets == {
        "max_accuracy_drop", "min_parity_cosine", "max_size_mb",
        "max_latency_ms", "max_energy_mj", "max_latency_increase_pct",
    }  # fmt: skip
    assert main(["check", str(report), "--max-size-mb", "0.001"]) == 1
    capsys.readouterr()
    assert main(["compare", str(report), str(report), "--fail-on-regression"]) == 0
    assert "0 worse, 0 better, 0 noise" in capsys.readouterr().out


def test_a_file_kept_only_for_comparison_is_not_budgeted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The PTQ baseline a host build keeps beside its deployed file (slower and less
    accurate by design) broke latency and accuracy budgets it was never shipped under."""
    path = _report(tmp_path)
    report = json.loads(path.read_text())
    report["artifacts"]["onnx_ptq"] = {"path": "stages/05_quantize/model.ptq.onnx",
                                       "deployed": False}  # fmt: skip
    report["latency"]["onnx_ptq@host"] = {**report["latency"]["onnx@host"],
                                          "artifact": "onnx_ptq", "p50_ms": 50.0}  # fmt: skip
    report["accuracy"]["onnxruntime-ptq"] = {
        **report["accuracy"]["rknn-simulator"],
        "top1": {"value": 80.0, "unit": "%", "how": "test"},
        "artifact": {"value": "onnx_ptq", "unit": "", "how": "artifact name"},
    }
    path.write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["check", str(path), "--max-latency-ms", "10", "--max-accuracy-drop", "1"]) == 0
    out = capsys.readouterr().out
    assert "not deployed: stages/05_quantize/model.ptq.onnx was kept for comparison" in out
    report["artifacts"]["onnx_ptq"]["deployed"] = True  # shipped, it is judged
    path.write_text(json.dumps(report))
    assert main(["check", str(path), "--max-latency-ms", "10"]) == 1


def test_a_budget_with_nothing_to_check_still_writes_junit_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example budget's board-only latency, on a report built without a board: the
    other budgets are still checked and the JUnit file says which one could not be."""
    budget = _budget(
        tmp_path, "default: {max_size_mb: 3, max_latency_ms: 5, measured_on: device}\n"
    )
    report = _report(tmp_path)
    data = json.loads(report.read_text())
    data["latency"]["onnx@host"]["device"] = "local"  # host latency only
    report.write_text(json.dumps(data))
    junit = tmp_path / "budgets.xml"
    assert main(["check", str(report), "--budget", str(budget), "--junit", str(junit)]) == 2
    assert "max_latency_ms: the report has no measured latency" in capsys.readouterr().err
    suite = _junit(junit)
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    error = cases["max_latency_ms: -"].find("error")
    assert error is not None and "measured_on: device" in error.get("message")
    assert cases["max_size_mb: onnx"].find("failure") is None
