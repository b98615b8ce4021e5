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


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `## name` in docs/BENCHMARKS.md."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"## {name}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def seed_stats(per_seed: dict[str, dict[str, Any]]) -> tuple[float, float, int, float]:
    """mean, sample standard deviation, number of seeds, mean 95% half-interval."""
    tops = [v["top1"] for v in per_seed.values()]
    half = float(np.mean([(v["ci"][1] - v["ci"][0]) / 2 for v in per_seed.values()]))
    sd = float(np.std(tops, ddof=1)) if len(tops) > 1 else float("nan")
    return float(np.mean(tops)), sd, len(tops), half


def seed_runs(runs: dict[str, Any], setting: str) -> dict[int, dict[str, Any]]:
    """The runs recorded as ``"<setting>/<seed>"``, by seed."""
    return {int(k.rsplit("/", 1)[1]): v for k, v in runs.items() if k.rsplit("/", 1)[0] == setting}
