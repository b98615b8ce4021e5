"""What got better and worse between two releases' reports, per target and artifact:
top-1 accuracy, latency p50, artifact size and energy per inference.

Latency is measured, so it moves between runs of the same model. A p50 change no larger
than the spread the benchmark itself recorded (p90 - p50 of either run: how far a
single run's calls already vary) is *noise*, not a regression. Measured energy inherits
that spread in relative terms (it integrates power over the call time). Accuracy on the
fixed validation split, artifact sizes and analytic or fitted energy estimates are
deterministic: any change in them is real."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.report.schema import value

BETTER, WORSE, NOISE, SAME = "better", "worse", "noise", "same"
ADDED, GONE, INCOMPARABLE = "new", "gone", "not comparable"


@dataclass(frozen=True)
class Change:
    """One quantity of one runtime, artifact or latency entry in the two reports."""

    target: str
    quantity: str  # "top-1", "latency p50", "size", "energy"
    subject: str
    old: float | None
    new: float | None
    unit: str
    verdict: str
    note: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict == WORSE


def compare_reports(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every comparable quantity of ``old`` and ``new`` (reports of the same target and
    classes; ``convert``'s and ``build``'s alike: files are matched by name)."""
    target, old_target = _target(new), _target(old)
    if target != old_target:
        raise ConfigError(
            f"compare: the old report is for {old_target} and the new one for {target}; "
            "compare releases of the same target"
        )
    classes = [(r.get("data") or {}).get("class_outputs") for r in (old, new)]
    if None not in classes and classes[0] != classes[1]:
        raise ConfigError(
            f"compare: the reports score different classes ({_names(classes[0])} vs "
            f"{_names(classes[1])}): they are of different models; compare releases of one "
            "model, scored on the same classes"
        )
    old, new = _by_file(old), _by_file(new)
    return [
        *_accuracy(target, old, new),
        *_latency(target, old, new),
        *_size(target, old, new),
        *_energy(target, old, new),
    ]


def _names(classes: Any) -> str:
    shown = list(classes)[:5]
    return ", ".join(shown) + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")


def _by_file(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with artifacts and latency entries keyed by the file a user ships
    (``model.int8.onnx``, ``model.int8.onnx@host``), not by the record's name, which
    differs between convert and build for the same file."""
    arts = report.get("artifacts") or {}

    def file(name: Any) -> str:
        return str(Path(str((arts.get(name) or {}).get("path", name))).name)

    latency = {}
    for key, entry in (report.get("latency") or {}).items():
        name, _, where = key.partition("@")
        latency[f"{file(entry.get('artifact', name))}@{where}" if where else key] = entry
    accuracy = {}
    for runtime, acc in (report.get("accuracy") or {}).items():
        artifact = value(acc.get("artifact"))
        accuracy[runtime] = {**acc, "artifact": file(artifact)} if artifact else acc
    files = {file(name): info for name, info in arts.items()}
    return {**report, "artifacts": files, "latency": latency, "accuracy": accuracy}


def _verdict(old: float, new: float, higher_is_better: bool, noise: float = 0.0) -> str:
    delta = new - old
    if delta == 0:
        return SAME
    if abs(delta) <= noise:
        return NOISE
    return BETTER if (delta > 0) == higher_is_better else WORSE


def _pairs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [*new, *(k for k in old if k not in new)]


def _presence(target: str, quantity: str, key: str, unit: str, o: Any, n: Any) -> Change | None:
    """The change for an entry only one report has (None when both have it)."""
    if o is None and n is not None:
        return Change(target, quantity, key, None, n, unit, ADDED)
    if n is None and o is not None:
        return Change(target, quantity, key, o, None, unit, GONE)
    return None


def _accuracy(target: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out = []
    acc_old, acc_new = old.get("accuracy") or {}, new.get("accuracy") or {}
    for runtime in _pairs(acc_old, acc_new):
        o, n = _top1(acc_old.get(runtime)), _top1(acc_new.get(runtime))
        artifact = value((acc_new.get(runtime) or acc_old.get(runtime) or {}).get("artifact"))
        subject = f"{runtime} ({artifact})" if artifact else runtime
        missing = _presence(target, "top-1", subject, "%", o, n)
        if missing or o is None or n is None:
            out += [missing] if missing else []
            continue
        out.append(Change(target, "top-1", subject, o, n, "%", _verdict(o, n, True)))
    return out


def _top1(metrics: dict[str, Any] | None) -> float | None:
    return float(value(metrics["top1"])) if metrics and "top1" in metrics else None


def _spread(entry: dict[str, Any]) -> float:
    return max(0.0, float(entry.get("p90_ms", entry["p50_ms"])) - float(entry["p50_ms"]))


def _latency(target: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out = []
    lat_old, lat_new = old.get("latency") or {}, new.get("latency") or {}
    for key in _pairs(lat_old, lat_new):
        eo, en = lat_old.get(key) or {}, lat_new.get(key) or {}
        o = float(eo["p50_ms"]) if eo.get("measured") else None
        n = float(en["p50_ms"]) if en.get("measured") else None
        missing = _presence(target, "latency p50", key, "ms", o, n)
        if missing or o is None or n is None:
            out += [missing] if missing else []
            continue
        noise = max(_spread(eo), _spread(en))
        note = f"spread (p90-p50) {noise:.3f} ms"
        differs = [
            f"{k} {eo.get(k)} -> {en.get(k)}"
            for k in ("runtime", "threads", "cpu")
            if eo.get(k) != en.get(k)
        ]
        if differs:
            note += "; " + ", ".join(differs)
        out.append(
            Change(target, "latency p50", key, o, n, "ms", _verdict(o, n, False, noise), note)
        )
    return out


def _size(target: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out = []
    art_old, art_new = old.get("artifacts") or {}, new.get("artifacts") or {}
    for name in _pairs(art_old, art_new):
        o = art_old[name]["size_bytes"] / 1e6 if name in art_old else None
        n = art_new[name]["size_bytes"] / 1e6 if name in art_new else None
        missing = _presence(target, "size", name, "MB", o, n)
        if missing or o is None or n is None:
            out += [missing] if missing else []
            continue
        out.append(Change(target, "size", name, o, n, "MB", _verdict(o, n, False)))
    return out


def _energy(target: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out = []
    lat_old, lat_new = old.get("latency") or {}, new.get("latency") or {}
    for key in _pairs(lat_old, lat_new):
        eo, en = lat_old.get(key) or {}, lat_new.get(key) or {}
        o, n = _mj(eo), _mj(en)
        missing = _presence(target, "energy", key, "mJ", o, n)
        if missing or o is None or n is None:
            out += [missing] if missing else []
            continue
        ko, kn = eo["energy"].get("kind"), en["energy"].get("kind")
        if ko != kn:
            note = f"{ko} -> {kn}: different kinds of figure"
            out.append(Change(target, "energy", key, o, n, "mJ", INCOMPARABLE, note))
            continue
        noise, note = 0.0, str(kn)
        if kn == "measured" and eo.get("measured") and en.get("measured"):
            rel = max(_spread(eo) / float(eo["p50_ms"]), _spread(en) / float(en["p50_ms"]))
            noise = rel * max(o, n)
            note += f", spread {rel * 100:.1f}% from latency"
        out.append(Change(target, "energy", key, o, n, "mJ", _verdict(o, n, False, noise), note))
    return out


def _mj(entry: dict[str, Any]) -> float | None:
    joules = (entry.get("energy") or {}).get("energy_per_inference_j")
    return float(joules) * 1e3 if joules is not None else None


def _target(report: dict[str, Any]) -> str:
    return str((report.get("target") or {}).get("name", "?"))


def changes_table(changes: list[Change]) -> str:
    """target | quantity | subject | old | new | change | verdict | note."""
    from edgecompress.report.markdown import table

    digits = {"%": 2, "ms": 3, "MB": 3, "mJ": 4}
    rows = []
    for c in changes:
        d = digits.get(c.unit, 3)
        fmt = lambda x, d=d, u=c.unit: "-" if x is None else f"{x:.{d}f} {u}"  # noqa: E731
        if c.old is not None and c.new is not None and c.unit == "%":
            delta = f"{c.new - c.old:+.{d}f} points"
        elif c.old is not None and c.new is not None:
            pct = f" ({(c.new / c.old - 1) * 100:+.1f}%)" if c.old else ""
            delta = f"{c.new - c.old:+.{d}f} {c.unit}{pct}"
        else:
            delta = "-"
        verdict = c.verdict.upper() if c.regression else c.verdict
        rows.append(
            [c.target, c.quantity, c.subject, fmt(c.old), fmt(c.new), delta, verdict, c.note]
        )
    header = ["target", "quantity", "runtime / artifact", "old", "new", "change", "verdict", "note"]
    return table(rows, header)
