"""What compression bought, as one table: a row for the original model, one after each
stage that changed it, and one per artifact, with test top-1 (and its change), MACs,
parameters, file size, p50 latency measured in the same run, speed-up against the
original, and energy per inference with its kind. Torch-free: built from report data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from edgecompress.report.values import value

HEADER = [
    "model",
    "precision",
    "top-1 % (change)",
    "95% CI",
    "MACs",
    "params",
    "size",
    "p50 ms",
    "speed-up",
    "energy µJ",
]


@dataclass(frozen=True)
class SummaryRow:
    """One row of the table: the model after a stage (``kind`` "model") or an exported
    file ("artifact"). ``report.json`` keeps it as a JSON object (``to_json``); every
    reader takes it back as this type (:func:`summary_rows`)."""

    row: str  # the model's label, or the file's path in out/
    kind: Literal["model", "artifact"]
    precision: str  # fp32, fake-int (a QAT model), int8, fp16
    top1: float | None = None  # test split, %
    top1_ci: list[float] | None = None  # its 95% Wilson interval
    top1_change: float | None = None  # points against the original
    macs: float | None = None
    params: float | None = None
    size_bytes: int | None = None
    p50_ms: float | None = None
    where: str | None = None  # "host", or the device that timed it
    speedup: float | None = None  # the original's p50 over this one's, same run
    energy_j: float | None = None
    energy_kind: str | None = None  # measured, fitted, analytic
    # Artifact rows only: the record's name, whether the build hands the file over (False
    # for one kept only to compare: the PTQ baseline), how it was made (QAT, PTQ, FP32).
    artifact: str | None = None
    deployed: bool | None = None
    form: str | None = None

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        if self.kind == "model":
            for key in ARTIFACT_ONLY:
                del raw[key]
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SummaryRow:
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


ARTIFACT_ONLY = ("artifact", "deployed", "form")


def summary_rows(data: dict[str, Any]) -> list[SummaryRow]:
    """The rows of ``data["summary"]`` (made from ``data`` where it has none yet)."""
    rows = (data.get("summary") or summarize(data))["rows"]
    return [SummaryRow.from_json(r) for r in rows]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Rows (as JSON) and notes for ``data["summary"]``."""
    models = data.get("models", [])
    base = models[0] if models else {}
    base_top1, base_p50 = value(base.get("top1")), base.get("p50_ms")
    rows = [_model_row(m, base_top1, base_p50) for m in models]
    rows += [_artifact_row(data, name, info, base_top1, base_p50) for name, info in
             data.get("artifacts", {}).items()]  # fmt: skip
    return {"rows": [r.to_json() for r in rows], "notes": _notes(data, rows)}


def _model_row(m: dict[str, Any], base_top1: Any, base_p50: Any) -> SummaryRow:
    top1 = value(m.get("top1"))
    return SummaryRow(
        row=m["label"],
        kind="model",
        precision="fake-int" if m.get("quantized") else "fp32",
        top1=top1,
        top1_ci=_ci(m),
        top1_change=_diff(top1, base_top1),
        macs=m.get("macs"),
        params=m.get("params"),
        size_bytes=m.get("onnx_bytes"),
        p50_ms=m.get("p50_ms"),
        where="host" if m.get("p50_ms") is not None else None,
        speedup=_ratio(base_p50, m.get("p50_ms")),
        energy_j=m.get("energy_j"),
        energy_kind=m.get("energy_kind"),
    )


def _artifact_row(
    data: dict[str, Any], name: str, info: dict[str, Any], base_top1: Any, base_p50: Any
) -> SummaryRow:
    acc: dict[str, Any] = next(
        (a for a in data.get("accuracy", {}).values() if value(a.get("artifact")) == name), {}
    )
    lat = _latency_of(data, name)
    model = _model_before(data.get("models", []), str(info.get("stage", "")))
    top1 = value(acc.get("top1"))
    energy = (lat or {}).get("energy") or {}
    p50 = lat.get("p50_ms") if lat and lat.get("measured") else None
    where = _where(lat) if p50 is not None and lat else None
    return SummaryRow(
        row=f"{info.get('path', name)}",
        kind="artifact",
        artifact=name,
        deployed=bool(info.get("deployed", True)),
        form=info.get("form"),
        precision=info.get("precision", "-"),
        top1=top1,
        top1_ci=_ci(acc),
        top1_change=_diff(top1, base_top1),
        macs=model.get("macs"),
        params=model.get("params"),
        size_bytes=info.get("size_bytes"),
        p50_ms=p50,
        where=where,
        speedup=_ratio(base_p50, p50) if where == "host" else None,
        energy_j=energy.get("energy_per_inference_j"),
        energy_kind=energy.get("kind"),
    )


def _where(lat: dict[str, Any]) -> str:
    """ "host" for this machine (the agent calls it "local"), else the device URL."""
    device = str(lat.get("device"))
    return "host" if device in ("local", "host") else device


def _latency_of(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    entries = [v for v in data.get("latency", {}).values() if v.get("artifact") == name]
    measured = [v for v in entries if v.get("measured")]
    return (measured or entries or [None])[0]


def _model_before(models: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    """The model an artifact was made from: the last model row before its stage."""
    before = [m for m in models if m["label"] == "original" or m["label"] < stage]
    return before[-1] if before else {}


def _notes(data: dict[str, Any], rows: list[SummaryRow]) -> list[str]:
    """What a user must not miss: accuracy over a subset of the model's classes, an
    artifact slower than the float form of its model."""
    notes = list(data.get("warnings") or [])
    folders = data.get("data") or {}
    if folders.get("outputs", 0) > folders.get("classes", 0):
        notes.append(
            f"{folders['classes']} of {folders['outputs']} model outputs have images (class "
            "folders mapped by data.classes): top-1 is over those images, and a prediction "
            "of any other output counts as wrong"
        )
    if folders.get("skipped"):
        shown = "; ".join(folders.get("skipped_examples") or [])
        notes.append(
            f"{folders['skipped']} file(s) in the data folder were skipped (not images, or "
            f"unreadable), e.g. {shown}: every one is in report.json's data.skipped_files"
        )
    final = next((r for r in reversed(rows) if r.kind == "model"), None)
    ref = (data.get("models") or [{}])[-1].get("float_p50_ms")
    for r in rows:
        if r.kind != "artifact" or r.p50_ms is None or r.precision == "fp32":
            continue
        if not r.row.endswith(".onnx"):  # an engine on its GPU: no CPU float form
            continue
        if ref is not None and r.p50_ms > ref:
            notes.append(
                f"{r.row} ({r.precision}) runs {r.p50_ms / ref:.2f}x slower than the "
                f"FP32 form of the same model on {r.where} ({r.p50_ms:.3f} vs {ref:.3f} "
                "ms p50, same run): on this runtime the float model is the faster one"
            )
    if final is not None and final.top1_change is not None and final.top1_change < -1:
        notes.append(f"the final model lost {-final.top1_change:.2f} points of test top-1")
    deployment = data.get("deployment")
    if deployment:
        notes.append(f"deployed: {deployment['file']} ({deployment['form']}): {deployment['why']}")
    trt = data.get("tensorrt") or {}
    if trt.get("built") is False:
        notes.append(f"tensorrt: {trt['how']}")
    return notes


def _ci(entry: dict[str, Any]) -> list[float] | None:
    """The 95% (Wilson) interval of a top-1, when the entry carries one."""
    low, high = value(entry.get("top1_ci_low")), value(entry.get("top1_ci_high"))
    return None if low is None or high is None else [float(low), float(high)]


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _ratio(base: Any, p50: Any) -> float | None:
    return None if base is None or p50 in (None, 0) else float(base) / float(p50)


def summary_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of strings for the terminal and report.md."""
    return HEADER, [_cells(r) for r in summary_rows(data)]


def _cells(r: SummaryRow) -> list[str]:
    top1 = "-" if r.top1 is None else f"{r.top1:.2f}"
    if r.top1_change is not None and r.row != "original":
        top1 += f" ({r.top1_change:+.2f})"
    where = f" ({r.where})" if r.where not in (None, "host") else ""
    energy = "-" if r.energy_j is None else f"{r.energy_j * 1e6:.1f} ({r.energy_kind})"
    form = f" ({r.form})" if r.form else ""
    name = r.row + form + (", not deployed" if r.deployed is False else "")
    return [
        name,
        r.precision,
        top1,
        "-" if not r.top1_ci else f"{r.top1_ci[0]:.1f}-{r.top1_ci[1]:.1f}",
        si(r.macs),
        si(r.params),
        "-" if r.size_bytes is None else f"{r.size_bytes / 1024:.1f} KiB",
        "-" if r.p50_ms is None else f"{r.p50_ms:.3f}{where}",
        "-" if r.speedup is None else f"{r.speedup:.2f}x",
        energy,
    ]


def si(n: Any) -> str:
    """A count with an SI suffix: 49.62M."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
