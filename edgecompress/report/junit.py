"""JUnit XML for the CI gate: one test case per budget and what it applies to, so a CI
system (GitHub Actions test reporters, GitLab's ``reports: junit``, Jenkins) lists each
budget; broken ones carry a ``<failure>``, entries that could not be measured ``<skipped>``,
and a budget with nothing in the report to apply to an ``<error>``."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from edgecompress.io import atomic_write_bytes
from edgecompress.report.budget import BudgetResult


def junit_xml(results: list[BudgetResult], suite: str, properties: dict[str, str]) -> bytes:
    """The common JUnit format: ``<testsuites><testsuite><testcase>...``."""
    failures = sum(r.kept is False for r in results)
    errors = sum(r.error for r in results)
    skipped = sum(r.kept is None and not r.error for r in results)
    counts = {"tests": str(len(results)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": "edgecompress check", **counts, "time": "0"})
    ts = ET.SubElement(
        root,
        "testsuite",
        {
            "name": suite,
            **counts,
            "skipped": str(skipped),
            "time": "0",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname() or "localhost",
        },
    )
    props = ET.SubElement(ts, "properties")
    for name, val in properties.items():
        ET.SubElement(props, "property", {"name": name, "value": val})
    for r in results:
        case = ET.SubElement(
            ts, "testcase", {"name": f"{r.budget}: {r.subject}", "classname": suite, "time": "0"}
        )
        if r.error:
            ET.SubElement(case, "error", {"message": r.reason, "type": r.budget})
        elif r.kept is None:
            ET.SubElement(case, "skipped", {"message": r.reason})
        elif r.kept is False:
            failure = ET.SubElement(case, "failure", {"message": r.message, "type": r.budget})
            failure.text = f"{r.message}\n{r.detail()}"
        else:
            out = ET.SubElement(case, "system-out")
            out.text = r.detail()
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(
    path: Path, results: list[BudgetResult], suite: str, properties: dict[str, str]
) -> None:
    """Written to a temporary name and renamed, like every artifact."""
    atomic_write_bytes(Path(path), junit_xml(results, suite, properties))
