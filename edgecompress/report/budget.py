"""The CI gate: compare a report with its budget and say, for every limit and everything
it applies to, the value, the limit, the margin and whether it was kept.

A limit with nothing to read in the report (an accuracy budget without an exported
model's accuracy, a latency budget without a measured latency) is an error, not a pass:
a gate that checks nothing must not let a release through."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.report.budget_config import Limits, MeasuredOn
from edgecompress.report.schema import value


@dataclass(frozen=True)
class BudgetResult:
    """One limit applied to one thing (a runtime, artifact or latency entry).

    ``kept`` is None when it could not be checked (``reason`` says why); ``margin`` is
    how far inside the limit the value is, in ``unit`` (negative: broken by that much)."""

    budget: str
    subject: str
    value: float | None
    limit: float
    unit: str
    kept: bool | None
    margin: float | None
    message: str
    reason: str = ""
    error: bool = False  # the budget could not be applied at all (``reason``: why)

    def detail(self) -> str:
        """'value 0.800 ms, limit 0.500 ms, margin -0.300 ms'."""
        return (
            f"value {_num(self.value, self.unit)}, limit {_num(self.limit, self.unit)}, "
            f"margin {_num(self.margin, self.unit, signed=True)}"
        )


def check_report(
    report: dict[str, Any],
    limits: Limits,
    baseline: dict[str, Any] | None = None,
    *,
    keep_going: bool = False,
) -> list[BudgetResult]:
    """Every limit in ``limits`` applied to everything in ``report`` it covers. A budget
    with nothing to apply to (no device latency in the report, no baseline) raises, or
    with ``keep_going`` is one result with ``error`` set and the rest are still checked."""
    checks = limits.checks()
    if not checks:
        raise ConfigError("check: no budget given (a --budget file or a --max-... flag)")
    results: list[BudgetResult] = []
    for name, limit in checks.items():
        try:
            results += list(_CHECKS[name](report, limit, limits.measured_on, baseline))
        except ConfigError as exc:
            if not keep_going:
                raise
            results.append(BudgetResult(name, "-", None, limit, "", None, None, str(exc),
                                        str(exc), error=True))  # fmt: skip
    return results


def check_budgets(report: dict[str, Any], limits: Limits) -> list[str]:
    """One message per broken budget (empty: all kept)."""
    return [r.message for r in check_report(report, limits) if r.kept is False]


def results_table(results: list[BudgetResult]) -> str:
    """Every budget with its value, limit, margin and outcome, as a text table."""
    from edgecompress.report.markdown import table

    rows = [
        [
            r.budget,
            r.subject,
            _num(r.value, r.unit),
            _num(r.limit, r.unit),
            _num(r.margin, r.unit, signed=True),
            {True: "kept", False: "BROKEN", None: f"skipped ({r.reason})"}[r.kept],
        ]
        for r in results
    ]
    return table(rows, ["budget", "applies to", "value", "limit", "margin", "result"])


def _num(x: float | None, unit: str, *, signed: bool = False) -> str:
    if x is None:
        return "-"
    digits = {"ms": 3, "MB": 3, "mJ": 4, "": 6, "%": 1, "points": 2}.get(unit, 3)
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return f"{text} {unit}".rstrip()


def _result(
    budget: str, subject: str, val: float, limit: float, unit: str, message: str, *, upper: bool
) -> BudgetResult:
    margin = limit - val if upper else val - limit
    return BudgetResult(budget, subject, val, limit, unit, margin >= 0, margin, message)


def _accuracy(
    report: dict[str, Any], limit: float, _on: MeasuredOn, _b: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    acc = report.get("accuracy") or {}
    ref_name = report.get("reference")
    if not ref_name or ref_name not in acc or "top1" not in acc[ref_name]:
        raise ConfigError("the report has no reference accuracy; was the evaluate stage run?")
    ref = float(value(acc[ref_name]["top1"]))
    others = {k: m for k, m in acc.items() if k != ref_name and "top1" in m}
    if not others:
        raise ConfigError(
            "max_accuracy_drop: the report has no exported model's accuracy to compare with "
            f"{ref_name}; were the export stages run?"
        )
    for name, m in others.items():
        aside = _aside(report, value(m.get("artifact")))
        if aside:
            yield _skipped("max_accuracy_drop", name, limit, "points", aside)
            continue
        top1 = float(value(m["top1"]))
        drop = ref - top1
        yield _result(
            "max_accuracy_drop",
            name,
            drop,
            limit,
            "points",
            f"accuracy: {name} top-1 {top1:.2f}% is {drop:.2f} points below {ref_name} "
            f"({ref:.2f}%), budget {limit}",
            upper=True,
        )


def where(key: str, entry: dict[str, Any]) -> str:
    """'host', 'device' or 'estimate' (an artifact no device here could run)."""
    if entry.get("measured"):
        return "host" if entry.get("device") == "local" else "device"
    place = key.rpartition("@")[2]
    return "host" if place == "host" else "device" if "://" in place else "estimate"


def _entries(report: dict[str, Any], on: MeasuredOn) -> dict[str, dict[str, Any]]:
    lat = report.get("latency") or {}
    return {k: e for k, e in lat.items() if on == MeasuredOn.anywhere or where(k, e) == on.value}


def _latency(
    report: dict[str, Any], limit: float, on: MeasuredOn, _b: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    entries = _entries(report, on)
    if not any(e.get("measured") for e in entries.values()):
        raise ConfigError(
            f"max_latency_ms: the report has no measured latency ({_on_text(on)}); was the "
            "bench stage run" + (" with build --device URL?" if on == MeasuredOn.device else "?")
        )
    for key, e in entries.items():
        if not e.get("measured"):
            yield _skipped("max_latency_ms", key, limit, "ms", f"not measured: {e.get('reason')}")
            continue
        aside = _aside(report, e.get("artifact"))
        if aside:
            yield _skipped("max_latency_ms", key, limit, "ms", aside)
            continue
        p50 = float(e["p50_ms"])
        yield _result(
            "max_latency_ms",
            key,
            p50,
            limit,
            "ms",
            f"latency: {key} p50 {p50:.3f} ms > {limit} ms",
            upper=True,
        )


def _latency_increase(
    report: dict[str, Any], limit: float, on: MeasuredOn, baseline: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    if baseline is None:
        raise ConfigError(
            "max_latency_increase_pct is relative to the previous release: give its report "
            "with --baseline previous/report.json"
        )
    new_target, old_target = _target(report), _target(baseline)
    if new_target != old_target:
        raise ConfigError(
            f"--baseline is a {old_target} report and this one is for {new_target}; "
            "compare releases for the same target"
        )
    old = baseline.get("latency") or {}
    entries = {k: e for k, e in _entries(report, on).items() if e.get("measured")}
    matched = [k for k in entries if (old.get(k) or {}).get("measured")]
    if not matched:
        raise ConfigError(
            "max_latency_increase_pct: no measured latency entry of this report "
            f"({', '.join(entries) or 'none'}) is measured in the baseline "
            f"({', '.join(k for k, e in old.items() if e.get('measured')) or 'none'})"
        )
    for key, e in entries.items():
        if key not in matched:
            yield _skipped("max_latency_increase_pct", key, limit, "%", "not in the baseline")
            continue
        was, now = float(old[key]["p50_ms"]), float(e["p50_ms"])
        pct = (now / was - 1.0) * 100.0
        yield _result(
            "max_latency_increase_pct",
            key,
            pct,
            limit,
            "%",
            f"latency: {key} p50 {now:.3f} ms is {pct:+.1f}% vs the baseline's {was:.3f} ms, "
            f"budget {limit:+g}%",
            upper=True,
        )


def _size(
    report: dict[str, Any], limit: float, _on: MeasuredOn, _b: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    artifacts = report.get("artifacts") or {}
    if not artifacts:
        raise ConfigError("max_size_mb: the report has no artifacts; were the export stages run?")
    for name, art in artifacts.items():
        mb = art["size_bytes"] / 1e6
        yield _result(
            "max_size_mb", name, mb, limit, "MB", f"size: {name} is {mb:.2f} MB > {limit} MB",
            upper=True,
        )  # fmt: skip


def _energy(
    report: dict[str, Any], limit: float, on: MeasuredOn, _b: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    found = False
    for key, e in _entries(report, on).items():
        energy = e.get("energy") or {}
        joules = energy.get("energy_per_inference_j")
        if joules is None:
            continue
        found = True
        mj = float(joules) * 1e3
        subject = f"{key} ({energy.get('kind')})"
        yield _result(
            "max_energy_mj",
            subject,
            mj,
            limit,
            "mJ",
            f"energy: {subject} {mj:.4f} mJ/inference > {limit} mJ",
            upper=True,
        )
    if not found:
        raise ConfigError(
            f"max_energy_mj: the report has no energy figure ({_on_text(on)}); "
            "was the bench stage run?"
        )


def _parity(
    report: dict[str, Any], limit: float, _on: MeasuredOn, _b: dict[str, Any] | None
) -> Iterator[BudgetResult]:
    found = False
    for artifact, entries in (report.get("parity") or {}).items():
        for k, m in entries.items():
            if k != "cosine" and not k.startswith("cosine["):
                continue
            found = True
            cos = float(value(m))
            subject = artifact if k == "cosine" else f"{artifact} {k}"
            yield _result(
                "min_parity_cosine",
                subject,
                cos,
                limit,
                "",
                f"parity: {subject} cosine {cos:.6f} < {limit}",
                upper=False,
            )
    if not found:
        raise ConfigError(
            "min_parity_cosine: the report has no parity cosine; were the export stages run?"
        )


def _aside(report: dict[str, Any], artifact: Any) -> str | None:
    """Why a file's numbers are not budgeted: one the build kept only for comparison (the
    PTQ baseline, a form the deployed one replaced); None for a file it ships."""
    info = (report.get("artifacts") or {}).get(artifact) if isinstance(artifact, str) else None
    if info is None or info.get("deployed", True):
        return None
    return f"not deployed: {info.get('path', artifact)} was kept for comparison only"


def _skipped(budget: str, subject: str, limit: float, unit: str, reason: str) -> BudgetResult:
    return BudgetResult(budget, subject, None, limit, unit, None, None, "", reason)


def _on_text(on: MeasuredOn) -> str:
    return "anywhere" if on == MeasuredOn.anywhere else f"measured_on: {on.value}"


def _target(report: dict[str, Any]) -> str:
    return str((report.get("target") or {}).get("name", "?"))


_CHECKS: dict[
    str,
    Callable[[dict[str, Any], float, MeasuredOn, dict[str, Any] | None], Iterator[BudgetResult]],
] = {
    "max_accuracy_drop": _accuracy,
    "max_latency_ms": _latency,
    "max_latency_increase_pct": _latency_increase,
    "max_size_mb": _size,
    "max_energy_mj": _energy,
    "min_parity_cosine": _parity,
}
