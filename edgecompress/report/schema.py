"""report.json: a versioned schema where every number carries its unit and how it was
measured.

Layout (schema ``edgecompress.report/1``)::

    {"schema", "tool": {name, version}, "created", "model", "target", "preprocess", "data",
     "stages": [{name, status, seconds, metrics}],
     "accuracy": {RUNTIME: {top1, top5, loss, agreement, cosine, ...}},   # each a Metric
     "parity": {ARTIFACT: {...}}, "artifacts": {NAME: {path, size_bytes, sha256}},
     "latency": {KEY: {runtime, device, threads, p50_ms, ...}}}

``accuracy`` has one entry per runtime; ``reference`` names the one others are compared
with (the PyTorch model as given).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgecompress import __version__
from edgecompress.errors import ConfigError
from edgecompress.io import atomic_write_json, atomic_write_text
from edgecompress.report.values import UNITS, metric, value

__all__ = ["SCHEMA", "UNITS", "Report", "load_report", "metric", "value"]

SCHEMA = "edgecompress.report/1"


class Report:
    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data or {
            "schema": SCHEMA,
            "tool": {"name": "edgecompress", "version": __version__},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": [],
            "accuracy": {},
            "parity": {},
            "artifacts": {},
            "latency": {},
        }

    def set(self, section: str, content: Any) -> None:
        self.data[section] = content

    def add_accuracy(
        self, runtime: str, metrics: dict[str, float], method: str, artifact: str | None = None
    ) -> None:
        """Accuracy of one runtime (of ``artifact`` when it ran an exported file)."""
        entry = {k: metric(v, UNITS.get(k, ""), method) for k, v in metrics.items()}
        if artifact is not None:
            entry["artifact"] = metric(artifact, "", "artifact name")
        self.data["accuracy"][runtime] = entry
        self.data.setdefault("reference", runtime)

    def add_parity(self, artifact: str, entries: dict[str, dict[str, Any]]) -> None:
        self.data["parity"][artifact] = entries

    def add_artifact(self, name: str, info: dict[str, Any]) -> None:
        self.data["artifacts"][name] = info

    def add_latency(self, key: str, info: dict[str, Any]) -> None:
        self.data["latency"][key] = info

    def add_stage(self, entry: dict[str, Any]) -> None:
        self.data["stages"] = [s for s in self.data["stages"] if s["name"] != entry["name"]]
        self.data["stages"].append(entry)

    def save(self, out_dir: Path) -> None:
        from edgecompress.report.html import render_html
        from edgecompress.report.markdown import render_markdown

        atomic_write_json(out_dir / "report.json", self.data)
        atomic_write_text(out_dir / "report.md", render_markdown(self.data))
        atomic_write_text(out_dir / "report.html", render_html(self.data))


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such report; run `edgecompress build` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); is it a report.json?") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    return data
