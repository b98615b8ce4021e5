"""report.html: one self-contained page rendered from report.json data.

No scripts, fonts or images are fetched: the plots are inline SVG generated here, so the
page opens offline, from a CI artifact store, and renders the same every time. Every
string taken from the report is escaped. Torch-free.

>>> from edgecompress.report.schema import load_report
>>> page = render_html(load_report(Path("out/report.json")))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

from edgecompress.report.summary import SummaryRow, summarize, summary_rows, summary_table
from edgecompress.report.values import value

MODEL_COLOR, ARTIFACT_COLOR, BASELINE_COLOR = "#2563eb", "#ea580c", "#6b7280"
W, H = 580, 340  # scatter plot size (SVG units)
LEFT, RIGHT, TOP, BOTTOM = 60, 24, 30, 48

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #111827; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
p.meta, p.caption, .missing { color: #4b5563; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d1d5db; padding: 4px 8px; text-align: right; }
th { background: #f3f4f6; } th, td { white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
td.text, th.text { text-align: left; white-space: normal; }
tr.artifact td:first-child { font-family: monospace; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #e5e7eb; padding: 8px; }
figcaption { font-weight: 600; } svg text { font: 11px system-ui, sans-serif; }
ul.notes li { color: #b45309; }
"""


def render_html(data: dict[str, Any]) -> str:
    """The whole page as a string (written by ``Report.save`` as report.html)."""
    model, target = data.get("model") or {}, data.get("target") or {}
    title = f"edgecompress report: {model.get('source', '?')} -> {target.get('name', '?')}"
    summary = data.get("summary") or summarize(data)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Created {_e(data.get("created"))} by edgecompress '
        f"{_e((data.get('tool') or {}).get('version'))}.</p>",
        _summary_section(data, summary),
        _plots_section(summary_rows({**data, "summary": summary})),
        _widths_section(data.get("pruning") or {}),
        _accuracy_section(data.get("accuracy") or {}),
        _parity_section(data.get("parity") or {}),
        _latency_section(data.get("latency") or {}),
        _stages_section(data.get("stages") or []),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # An empty icon: without it the browser asks for /favicon.ico.
        f'<link rel="icon" href="data:,">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in body if s)
        + "\n</body>\n</html>\n"
    )


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _num(v: Any, digits: int = 2) -> str:
    v = value(v)
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int | float):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return _e(v)


def _float(v: Any) -> float | None:
    v = value(v)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Cells are already escaped HTML; the last column is text when its header is "how"."""
    last = ' class="text"' if header[-1] == "how" else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header[:-1]) + f"<th{last}>{_e(header[-1])}</th>"
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if classes else ""
        cells = [f"<td>{c}</td>" for c in r[:-1]] + [f"<td{last}>{r[-1]}</td>"]
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary_section(data: dict[str, Any], summary: dict[str, Any]) -> str:
    header, rows = summary_table({**data, "summary": summary})
    kinds: list[str] = [r.kind for r in summary_rows({**data, "summary": summary})]
    notes = "".join(f"<li>note: {_e(n)}</li>" for n in summary.get("notes", []))
    return (
        '<h2 id="summary">What compression bought</h2>'
        + _table(header, [[_e(c) for c in r] for r in rows], kinds)
        + '<p class="caption">top-1 on the test split (PyTorch for model rows, the '
        "artifact's runtime for files); p50 latency measured in one run on this machine "
        "unless a device is named; speed-up against the original model's ONNX in the same "
        "run.</p>" + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


# -- scatter plots --------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str
    square: bool  # artifacts are squares, model states circles


PLOTS = (
    ("plot-latency", "Accuracy vs latency", "p50 latency (ms)", "p50_ms", 1.0),
    ("plot-size", "Accuracy vs size", "size (KiB)", "size_bytes", 1 / 1024),
    ("plot-energy", "Accuracy vs energy", "energy per inference (µJ)", "energy_j", 1e6),
)


def _plots_section(rows: list[SummaryRow]) -> str:
    figures = []
    for svg_id, title, x_label, key, scale in PLOTS:
        points, missing = _points(rows, key, scale)
        figures.append(_figure(svg_id, title, x_label, points, missing))
    return (
        '<h2 id="plots">Accuracy against cost</h2><p class="caption">Circles are the '
        "model after each stage (joined in build order); squares are exported files, grey "
        "when not deployed (a baseline). Hover a point for its values.</p>"
        f'<div class="plots">{"".join(figures)}</div>'
    )


def _points(rows: list[SummaryRow], key: str, scale: float) -> tuple[list[Point], list[str]]:
    points, missing = [], []
    for r in rows:
        x, y = _float(getattr(r, key)), _float(r.top1)
        if x is None or y is None:
            missing.append(r.row)
            continue
        artifact = r.kind == "artifact"
        color = MODEL_COLOR if not artifact else ARTIFACT_COLOR
        if r.deployed is False:
            color = BASELINE_COLOR
        points.append(Point(r.row, x * scale, y, color, artifact))
    return points, missing


def _figure(svg_id: str, title: str, x_label: str, points: list[Point], missing: list[str]) -> str:
    absent = ""
    if missing:
        absent = f'<div class="missing">not plotted (no value): {_e(", ".join(missing))}</div>'
    if not points:
        return f"<figure><figcaption>{_e(title)}</figcaption>{absent}</figure>"
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f"{_scatter(svg_id, x_label, points)}{absent}</figure>"
    )


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _axis(lo: float, hi: float, from_zero: bool) -> tuple[float, float, list[float]]:
    """A padded range and its ticks; ratio scales (ms, bytes, joules) start at zero."""
    lo = 0.0 if from_zero else lo
    if hi - lo <= 0:
        lo, hi = lo - 1, hi + 1
    step = _nice_step(hi - lo)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    ticks = [start + i * step for i in range(round((end - start) / step) + 1)]
    return start, end, ticks


def _tick_text(t: float) -> str:
    return f"{t:.6g}"


def _scatter(svg_id: str, x_label: str, points: list[Point]) -> str:
    x0, x1, xt = _axis(min(p.x for p in points), max(p.x for p in points), True)
    y0, y1, yt = _axis(min(p.y for p in points), min(100.0, max(p.y for p in points)), False)
    y1 = max(y1, max(p.y for p in points))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    parts = [_grid(xt, yt, sx, sy, x_label)]
    path = [p for p in points if not p.square]
    if len(path) > 1:
        coords = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in path)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{MODEL_COLOR}" '
                     'stroke-opacity="0.35" stroke-width="1.5"/>')  # fmt: skip
    parts += [_marker(p, sx(p.x), sy(p.y), x_label) for p in points]
    parts += _labels([(p.label, sx(p.x), sy(p.y)) for p in points])
    return (
        f'<svg id="{_e(svg_id)}" class="plot" viewBox="0 0 {W} {H}" width="{W}" '
        f'height="{H}" role="img">{"".join(parts)}</svg>'
    )


def _grid(xt: list[float], yt: list[float], sx: Any, sy: Any, x_label: str) -> str:
    out = []
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" '
                   f'stroke="#e5e7eb"/><text x="{x:.1f}" y="{H - BOTTOM + 16}" '
                   f'text-anchor="middle">{_tick_text(t)}</text>')  # fmt: skip
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" '
                   f'stroke="#e5e7eb"/><text x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_tick_text(t)}</text>')  # fmt: skip
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
        'fill="none" stroke="#9ca3af"/>'
        f'<text x="{LEFT + (W - LEFT - RIGHT) / 2}" y="{H - 10}" text-anchor="middle">'
        f"{_e(x_label)}</text>"
        f'<text transform="translate(16 {TOP + (H - TOP - BOTTOM) / 2}) rotate(-90)" '
        'text-anchor="middle">test top-1 (%)</text>'
    )
    return "".join(out)


def _marker(p: Point, x: float, y: float, x_label: str) -> str:
    tip = f"<title>{_e(p.label)}: {p.y:.2f}% top-1, {_tick_text(p.x)} {_e(x_label)}</title>"
    if p.square:
        return (f'<rect class="point" x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                f'fill="{p.color}" stroke="#fff">{tip}</rect>')  # fmt: skip
    return (f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{p.color}" '
            f'stroke="#fff">{tip}</circle>')  # fmt: skip


def _labels(items: list[tuple[str, float, float]]) -> list[str]:
    """Labels right of their points, moved down past labels already placed (points that
    coincide, like stages that did not change accuracy, stay readable)."""
    placed: list[tuple[float, float, float]] = []  # x, y, width of each label box
    out = []
    for label, px, py in sorted(items, key=lambda t: (t[2], t[1])):
        width = 6.2 * len(label)
        x = px + 9 if px + 9 + width <= W - RIGHT else px - 9 - width
        y = py + 4
        while any(abs(y - qy) < 12 and x < qx + qw and qx < x + width for qx, qy, qw in placed):
            y += 12
        placed.append((x, y, width))
        if abs(y - (py + 4)) > 1:
            out.append(f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{x:.1f}" y2="{y - 4:.1f}" '
                       'stroke="#9ca3af" stroke-width="0.8"/>')  # fmt: skip
        out.append(f'<text x="{x:.1f}" y="{y:.1f}">{_e(label)}</text>')
    return out


# -- pruning widths ------------------------------------------------------------------


def _widths_section(pruning: dict[str, Any]) -> str:
    rows: list[tuple[str, float, float]] = []
    for name, w in (pruning.get("layers") or {}).items():
        before, after = _float((w or {}).get("before")), _float((w or {}).get("after"))
        if before is not None and after is not None:
            rows.append((str(name), before, after))
    if not rows:
        return ""
    how = ", ".join(
        f"{k} {_e(pruning[k])}" for k in ("criterion", "allocation", "schedule", "round_to")
        if pruning.get(k) is not None
    )  # fmt: skip
    return (
        '<h2 id="pruning">Layer widths before and after pruning</h2>'
        f'<p class="caption">Output channels of each conv/linear layer ({how}).</p>' + _bars(rows)
    )


def _bars(rows: list[tuple[str, float, float]]) -> str:
    label_w = min(300.0, 12 + 6.4 * max(len(n) for n, _, _ in rows))
    width, row_h, top = 900, 18, 24
    plot_w = width - label_w - 90
    top_val = max(max(b, a) for _, b, a in rows) or 1.0
    height = top + row_h * len(rows) + 8
    out = [
        f'<rect x="{label_w:.0f}" y="4" width="12" height="10" fill="#d1d5db"/>'
        f'<text x="{label_w + 16:.0f}" y="13">before</text>'
        f'<rect x="{label_w + 70:.0f}" y="4" width="12" height="10" fill="{MODEL_COLOR}"/>'
        f'<text x="{label_w + 86:.0f}" y="13">after</text>'
    ]
    for i, (name, before, after) in enumerate(rows):
        y = top + i * row_h
        wb, wa = before / top_val * plot_w, after / top_val * plot_w
        out.append(
            f'<text x="{label_w - 6:.0f}" y="{y + 12}" text-anchor="end">{_e(name)}</text>'
            f'<rect class="bar-before" x="{label_w:.0f}" y="{y + 2}" width="{wb:.1f}" '
            f'height="{row_h - 4}" fill="#d1d5db"/>'
            f'<rect class="bar-after" x="{label_w:.0f}" y="{y + 5}" width="{wa:.1f}" '
            f'height="{row_h - 10}" fill="{MODEL_COLOR}"/>'
            f'<text x="{label_w + max(wb, wa) + 6:.0f}" y="{y + 12}">'
            f"{before:.0f} → {after:.0f}</text>"
        )
    return (
        f'<svg id="plot-widths" class="plot" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img">{"".join(out)}</svg>'
    )


# -- tables --------------------------------------------------------------------------


def _method(entry: dict[str, Any]) -> str:
    m = entry.get("top1")
    return _e(m.get("method", "")) if isinstance(m, dict) else ""


def _accuracy_section(accuracy: dict[str, Any]) -> str:
    if not accuracy:
        return ""
    header = ["runtime", "artifact", "top-1 %", "95% interval", "top-5 %", "agree %",
              "cosine", "loss", "images", "how"]  # fmt: skip
    rows = []
    for runtime, m in accuracy.items():
        if not isinstance(m, dict):
            continue
        lo, hi = m.get("top1_ci_low"), m.get("top1_ci_high")
        ci = "-" if value(lo) is None or value(hi) is None else f"{_num(lo)} – {_num(hi)}"
        rows.append([
            _e(runtime), _e(value(m.get("artifact")) or "-"), _num(m.get("top1")), ci,
            _num(m.get("top5")), _num(m.get("agreement")), _num(m.get("cosine"), 5),
            _num(m.get("loss"), 4), _num(m.get("samples"), 0),
            _method(m),
        ])  # fmt: skip
    return '<h2 id="accuracy">Accuracy by runtime</h2>' + _table(header, rows)


def _parity_section(parity: dict[str, Any]) -> str:
    rows = []
    for artifact, entries in parity.items():
        for output, m in (entries or {}).items():
            m = m if isinstance(m, dict) else {"value": m}
            rows.append([_e(artifact), _e(output), _num(m.get("value"), 6),
                         _e(m.get("unit", "")), _e(m.get("method", ""))])  # fmt: skip
    if not rows:
        return ""
    return '<h2 id="parity">Parity (exported model vs its reference, same inputs)</h2>' + _table(
        ["artifact", "output / metric", "value", "unit", "how"], rows
    )


def _latency_section(latency: dict[str, Any]) -> str:
    rows = []
    for key, lat in latency.items():
        if not isinstance(lat, dict):
            continue
        if not lat.get("measured"):
            why = _e(f"not measured: {lat.get('reason', '')}")
            rows.append([_e(key), "-", "-", "-", "-", "-", why])
            continue
        rows.append([_e(key), _num(lat.get("p50_ms"), 3), _num(lat.get("p90_ms"), 3),
                     _num(lat.get("p99_ms"), 3), _num(lat.get("runs"), 0),
                     _num(lat.get("threads"), 0),
                     _e(f"{lat.get('runtime', '')}; {lat.get('method', '')}")])  # fmt: skip
    if not rows:
        return ""
    header = ["artifact@device", "p50 ms", "p90 ms", "p99 ms", "runs", "threads", "how"]
    return '<h2 id="latency">Latency</h2>' + _table(header, rows)


def _stages_section(stages: list[dict[str, Any]]) -> str:
    rows = [[_e(s.get("name", "?")), _e(s.get("status", "?")), _num(_float(s.get("seconds")), 1)]
            for s in stages if isinstance(s, dict)]  # fmt: skip
    if not rows:
        return ""
    return '<h2 id="stages">Stages</h2>' + _table(["stage", "status", "seconds"], rows)
