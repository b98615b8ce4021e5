"""report.md and the terminal summary table, rendered from report.json data."""

from __future__ import annotations

from typing import Any

from edgecompress.report.values import value


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per runtime: top-1, top-5, agreement, artifact size, host latency p50."""
    rows = []
    sizes = {k: a.get("size_bytes") for k, a in data.get("artifacts", {}).items()}
    lat = data.get("latency", {})
    for runtime, m in data.get("accuracy", {}).items():
        artifact = (
            m.get("artifact", {}).get("value") if isinstance(m.get("artifact"), dict) else None
        )
        size = sizes.get(artifact) if artifact else None
        p50 = next(
            (
                v["p50_ms"]
                for v in lat.values()
                if v.get("artifact") == artifact and v.get("measured")
            ),
            None,
        )
        rows.append(
            [
                runtime,
                _fmt(value(m.get("top1"))),
                _fmt(value(m.get("top5"))),
                _fmt(value(m.get("agreement"))),
                f"{size / 1024:.1f} KiB" if size else "-",
                _fmt(p50, 3) if p50 is not None else "-",
            ]
        )
    return rows


def _energy_text(energy: dict[str, Any] | None) -> str:
    """'; energy 0.0123 mJ/inference (measured: hwmon:ina3221:VDD_IN)' or ''."""
    if not energy or energy.get("energy_per_inference_j") is None:
        return ""
    how = energy["kind"] + (f": {energy['sensor']}" if energy.get("sensor") else "")
    return f"; energy {energy['energy_per_inference_j'] * 1e3:.4f} mJ/inference ({how})"


HEADER = ["runtime", "top-1 %", "top-5 %", "agree %", "artifact size", "host p50 ms"]


def table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render_markdown(data: dict[str, Any]) -> str:
    from edgecompress.report.summary import summary_table

    model, target = data.get("model", {}), data.get("target", {})
    header, rows = summary_table(data)
    out = [
        f"# edgecompress report: {model.get('source', '?')} -> {target.get('name', '?')}",
        "",
        f"Created {data.get('created')} by edgecompress {data.get('tool', {}).get('version')}.",
        "",
        "## What compression bought",
        "",
        table(rows, header),
        "",
        "top-1 on the test split (PyTorch for model rows, the artifact's runtime for files); "
        "p50 latency measured on this machine in one run unless a device is named; speed-up "
        "against the original model's ONNX in the same run.",
        "",
        *(f"- note: {n}" for n in (data.get("summary") or {}).get("notes", [])),
        "",
        "## Accuracy by runtime",
        "",
        table(summary_rows(data)),
        "",
    ]
    if data.get("parity"):
        out += ["## Parity (exported model vs its reference, same inputs)", ""]
        for name, entries in data["parity"].items():
            for k, m in entries.items():
                out.append(
                    f"- {name} {k}: {_fmt(value(m), 6)} {m.get('unit', '')} ({m.get('method', '')})"
                )
        out.append("")
    if data.get("latency"):
        out += ["## Latency", ""]
        for key, lat in data["latency"].items():
            energy = _energy_text(lat.get("energy"))
            if not lat.get("measured"):
                out.append(f"- {key}: not measured ({lat.get('reason', '')}){energy}")
                continue
            g = lat.get
            runs = f" over {g('runs')} runs after {g('warmup')} warm-up" if g("runs") else ""
            out.append(
                f"- {key}: p50 {lat['p50_ms']:.3f} ms, p90 {_fmt(g('p90_ms'), 3)}, p99 "
                f"{_fmt(g('p99_ms'), 3)}, mean {_fmt(g('mean_ms'), 3)} ± "
                f"{_fmt(g('std_ms'), 3)}{runs}; {g('method', '')}{energy}"
            )
        out.append("")
    out += ["## Stages", ""]
    for s in data.get("stages", []):
        out.append(f"- {s['name']}: {s.get('status', '?')} in {s.get('seconds', 0):.1f} s")
    data_info = data.get("data", {})
    if data_info:
        out += [
            "",
            "## Data",
            "",
            f"{data_info.get('root')}: {data_info.get('classes')} classes, "
            f"{data_info.get('train')} train / {data_info.get('val')} val / "
            f"{data_info.get('test')} test images (every accuracy above is on "
            f"{data_info.get('test_images')} test images), {data_info.get('skipped')} "
            "files skipped.",
        ]
        if data_info.get("labels") == "data.classes":
            mapping = ", ".join(f"{c} -> {i}" for c, i in data_info["class_outputs"].items())
            out += ["", f"Class folder -> model output (data.classes): {mapping}."]
    return "\n".join(out) + "\n"
