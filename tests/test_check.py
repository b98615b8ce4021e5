"""`edgecompress check` exits 0 when budgets hold, 1 when one breaks, 2 on a bad report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
