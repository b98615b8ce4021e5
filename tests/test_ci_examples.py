"""examples/ci: the GitHub Actions workflow and the GitLab CI job parse, every
`edgecompress ...` command they run is accepted by the real CLI parser, they gate on
the example budget (which validates) and keep the report, artifacts and JUnit XML."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecompress.cli import _build_parser
from edgecompress.report.budget_config import load_budget

CI = Path(__file__).parent.parent / "examples" / "ci"
ROOT = CI.parent.parent


def _commands(script: str, env: dict[str, str]) -> list[list[str]]:
    """The argv of every `edgecompress` command in a shell script (continuations
    joined, the CI's variables substituted)."""
    text = script.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for part in re.split(r"\s*(?:&&|;)\s*", line.strip()):
            if part.startswith("edgecompress "):
                expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), part)
                found.append(shlex.split(expanded, comments=True))
    return found


def _parse(argv: list[str]) -> Any:
    try:
        return _build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"not a valid edgecompress command: {shlex.join(argv)}")


def _github() -> tuple[dict[str, Any], list[list[str]]]:
    wf = yaml.safe_load((CI / "github-actions.yml").read_text())
    (job,) = wf["jobs"].values()
    scripts = [s["run"] for s in job["steps"] if "run" in s]
    commands = [c for s in scripts for c in _commands(s, job.get("env", {}))]
    return wf, commands


def _gitlab() -> tuple[dict[str, Any], list[list[str]]]:
    ci = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    env = ci.get("variables", {})
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and "script" in v}
    lines = [line for job in jobs.values() for line in job["script"]]
    lines += ci.get("default", {}).get("before_script", [])
    commands = [c for line in lines for c in _commands(line, env)]
    return ci, commands


@pytest.mark.parametrize("load", [_github, _gitlab], ids=["github", "gitlab"])
def test_every_edgecompress_command_parses_and_gates_on_the_budget(load: Any) -> None:
    _, commands = load()
    args = {argv[1]: _parse(argv) for argv in commands}
    assert {"setup", "build", "compare", "check"} <= set(args), sorted(args)
    build, check = args["build"], args["check"]
    assert build.target == "rk3588" and build.device == ["ssh://ci@rock5b.local"]
    assert check.report == build.out / "report.json"
    assert (ROOT / check.budget).resolve() == (CI / "budget.yaml").resolve()
    assert check.junit is not None and check.baseline is not None
    assert args["compare"].new == build.out / "report.json"


def test_github_workflow_runs_on_the_board_runner_and_uploads_everything() -> None:
    wf, commands = _github()
    assert "push" in (wf.get("on") or wf.get(True))  # PyYAML reads a bare `on` as True
    (job,) = wf["jobs"].values()
    assert "self-hosted" in job["runs-on"]
    steps = {s.get("uses", "").split("@")[0]: s for s in job["steps"]}
    junit = next(a for a in commands if a[1] == "check")
    junit_path = junit[junit.index("--junit") + 1]
    assert steps["mikepenz/action-junit-report"]["with"]["report_paths"] == junit_path
    upload = steps["actions/upload-artifact"]
    assert upload["if"] == "always()"
    kept = upload["with"]["path"].split()
    assert {"out/report.json", junit_path, "out/model.rknn", "out/model.onnx"} <= set(kept)


def test_gitlab_job_runs_on_the_board_runner_and_keeps_everything() -> None:
    ci, commands = _gitlab()
    assert set(ci["stages"]) == {"build", "gate"}
    assert "rk3588-board" in ci["default"]["tags"]
    gate = ci["gate"]
    check = next(a for a in commands if a[1] == "check")
    assert gate["artifacts"]["reports"]["junit"] == check[check.index("--junit") + 1]
    assert gate["artifacts"]["when"] == "always"
    assert {"out/report.json", "out/model.rknn"} <= set(gate["artifacts"]["paths"])
    assert ci["build-on-board"]["artifacts"]["paths"] == ["out/"]


def test_the_example_budget_validates() -> None:
    budget = load_budget(CI / "budget.yaml")
    rk = budget.for_target("rk3588")
    assert rk.max_accuracy_drop == 2.0 and rk.min_parity_cosine == 0.999  # override + default
    assert rk.max_latency_increase_pct == 10 and rk.measured_on == "device"
    assert budget.for_target("host").max_latency_ms == 2
    assert budget.for_target("jetson-orin").checks() == {
        "max_accuracy_drop": 1.0, "min_parity_cosine": 0.999, "max_size_mb": 5.0
    }  # fmt: skip
