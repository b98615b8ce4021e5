"""Shared helpers: machine description and the section writer for docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench`. Each section is one run: ratios inside a section were measured\n"
    "in that same run on the machine it names. Latency: median over many runs after warm-up.\n"
)
SUMMARY_START, SUMMARY_END = "<!-- summary: start -->", "<!-- summary: end -->"
STAMP = re.compile(r"^_Written at commit (\S+) \(([^)]*)\)", re.M)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def cpu_flags() -> str:
    """The instruction-set flags that decide which kernels ONNX Runtime runs here."""
    from edgecompress.probe.api import local_identity

    return " ".join(local_identity(1)["isa"]) or "none read"


def stamp() -> dict[str, str]:
    """What a published figure names: the commit it ran at (``+dirty`` with uncommitted
    changes), when, the machine and its CPU flags."""
    import subprocess
    import time

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=DOC.parent)
        return out.stdout.rstrip("\n")  # porcelain lines start with a status column

    # what the benchmarks write themselves (this file, their results) is not a code change
    written = ("docs/BENCHMARKS.md", "benchmarks/results/", "README.md")
    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if not line[3:].startswith(written)
    ]
    dirty = "+dirty" if changed else ""
    return {
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown") + dirty,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpu_flags": cpu_flags(),
    }


def write_section(
    name: str, body: str, headline: str | None = None, at: dict[str, str] | None = None
) -> None:
    """Replace (or append) the section `## name` in docs/BENCHMARKS.md, stamped with the
    commit and machine it ran on; ``headline``: its one line for the summary on top.
    ``at``: the stamp of the oldest measurement in it, where the section is rendered from
    results made earlier (so the summary counts the code changes since those)."""
    text = DOC.read_text() if DOC.exists() else HEADER
    s = at or stamp()
    lines = [body.strip()]
    if headline:
        lines.append(f"Headline: {headline}")
    lines.append(
        f"_Written at commit {s['commit']} ({s['when']}) on {s['machine']}; CPU flags "
        f"{s['cpu_flags']}._"
    )
    block = f"## {name}\n\n" + "\n\n".join(lines) + "\n\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(with_summary(text))


def _git(*args: str) -> str:
    import subprocess

    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=DOC.parent)
    return out.stdout.strip()


def _written_at(title: str, body: str, blame: dict[int, str], first_line: int) -> str:
    """When a section was written: its stamp, else the newest commit among its lines."""
    found = STAMP.search(body)
    if found:
        return found.group(1)
    shas = {blame.get(first_line + i) for i in range(body.count("\n") + 1)} - {None}
    if not shas:
        return "unknown"
    dated = [(_git("show", "-s", "--format=%ct", sha), sha) for sha in shas if sha]
    return max(dated)[1][:7] if dated else "unknown"


def _blame() -> dict[int, str]:
    """Line number (0-based) -> the commit that last wrote it, for the committed file."""
    out, line_of = {}, 0
    for row in _git("blame", "--porcelain", "HEAD", "--", str(DOC)).splitlines():
        head = row.split()
        if len(head) >= 3 and len(head[0]) == 40 and head[2].isdigit():
            line_of = int(head[2]) - 1
            out[line_of] = head[0]
    return out


def with_summary(text: str) -> str:
    """``text`` with its summary block (after the header) rewritten: one line per section,
    linking it, with its headline and the commit it was written at, and how many later
    commits changed the package (a section older than the code it describes says so)."""
    body = re.sub(
        rf"{re.escape(SUMMARY_START)}.*?{re.escape(SUMMARY_END)}\n*", "", text, flags=re.S
    )
    blame = _blame()
    committed = _git("show", "HEAD:docs/BENCHMARKS.md").splitlines()
    lines = []
    for found in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", body, re.S | re.M):
        title, section = found.group(1), found.group(2)
        first = next((i for i, line in enumerate(committed) if line == f"## {title}"), None)
        sha = _written_at(title, section, blame, first + 1 if first is not None else -(10**9))
        head = re.search(r"^Headline: (.+)$", section, re.M)
        clean = sha.replace("+dirty", "")
        later = (
            _git("rev-list", "--count", f"{clean}..HEAD", "--", "../edgecompress")
            if clean != "unknown"
            else ""
        )
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        age = f"written at {sha}" + (
            f"; {later} later commit(s) changed `edgecompress/`" if later not in ("", "0") else ""
        )
        lines.append(
            f"- [{title}](#{anchor}): " + (f"{head.group(1)} " if head else "") + f"({age})"
        )
    block = f"{SUMMARY_START}\n## Summary\n\n" + "\n".join(lines) + f"\n{SUMMARY_END}\n\n"
    at = body.find("\n## ")
    return body[: at + 1] + block + body[at + 1 :] if at >= 0 else body + block


def seed_stats(per_seed: dict[str, dict[str, Any]]) -> tuple[float, float, int, float]:
    """mean, sample standard deviation, number of seeds, mean 95% half-interval."""
    tops = [v["top1"] for v in per_seed.values()]
    half = float(np.mean([(v["ci"][1] - v["ci"][0]) / 2 for v in per_seed.values()]))
    sd = float(np.std(tops, ddof=1)) if len(tops) > 1 else float("nan")
    return float(np.mean(tops)), sd, len(tops), half


def seed_runs(runs: dict[str, Any], setting: str) -> dict[int, dict[str, Any]]:
    """The runs recorded as ``"<setting>/<seed>"``, by seed."""
    return {int(k.rsplit("/", 1)[1]): v for k, v in runs.items() if k.rsplit("/", 1)[0] == setting}
