"""The CI gate: compare a report with budgets and list every broken one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.report.schema import value


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float | None = None  # top-1 points below the reference
    max_latency_ms: float | None = None  # p50 of every measured artifact
    max_size_mb: float | None = None  # every artifact


def check_budgets(report: dict[str, Any], budgets: Budgets) -> list[str]:
    """Return one message per broken budget (empty: all kept)."""
    broken: list[str] = []
    acc = report.get("accuracy", {})
    if budgets.max_accuracy_drop is not None:
        ref_name = report.get("reference")
        if not ref_name or ref_name not in acc:
            raise ConfigError("the report has no reference accuracy; was the evaluate stage run?")
        ref = value(acc[ref_name]["top1"])
        for name, m in acc.items():
            drop = ref - value(m["top1"])
            if drop > budgets.max_accuracy_drop:
                broken.append(
                    f"accuracy: {name} top-1 {value(m['top1']):.2f}% is {drop:.2f} points "
                    f"below {ref_name} ({ref:.2f}%), budget {budgets.max_accuracy_drop}"
                )
    if budgets.max_latency_ms is not None:
        measured = {k: v for k, v in report.get("latency", {}).items() if v.get("measured")}
        if not measured:
            raise ConfigError("the report has no measured latency; was the bench stage run?")
        for key, lat in measured.items():
            if lat["p50_ms"] > budgets.max_latency_ms:
                broken.append(
                    f"latency: {key} p50 {lat['p50_ms']:.3f} ms > {budgets.max_latency_ms} ms"
                )
    if budgets.max_size_mb is not None:
        for name, art in report.get("artifacts", {}).items():
            mb = art["size_bytes"] / 1e6
            if mb > budgets.max_size_mb:
                broken.append(f"size: {name} is {mb:.2f} MB > {budgets.max_size_mb} MB")
    return broken
