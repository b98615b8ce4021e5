"""A report's numbers: each a Metric (value, unit, how it was measured). The lowest layer
of report/: the schema and every renderer read these, nothing here reads them."""

from __future__ import annotations

from typing import Any

UNITS = {
    "top1": "%",
    "top5": "%",
    "agreement": "%",
    "loss": "nats",
    "cosine": "",
    "samples": "images",
    "top1_ci_low": "%",
    "top1_ci_high": "%",
}


def metric(value: float | int | str | None, unit: str, method: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "method": method}


def value(entry: Any) -> Any:
    """The bare number of a Metric dict (or the thing itself)."""
    return entry["value"] if isinstance(entry, dict) and "value" in entry else entry
