"""report.html: self-contained, escaped, and rendered by a real headless Chromium (Debian's
package) with its plots on screen and nothing on the console."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompress.report.html import ARTIFACT_COLOR, MODEL_COLOR, render_html
from edgecompress.report.schema import Report
from edgecompress.report.summary import summarize

HOSTILE = '<script>alert("x")</script>'
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLOT_IDS = ("plot-latency", "plot-size", "plot-energy", "plot-widths")


def _m(v: float | int | str, unit: str = "%", method: str = "PyTorch, 359 test images") -> dict:
    return {"value": v, "unit": unit, "method": method}


def _acc(top1: float, lo: float, hi: float, artifact: str | None = None) -> dict[str, Any]:
    entry = {
        "top1": _m(top1),
        "top1_ci_low": _m(lo),
        "top1_ci_high": _m(hi),
        "top5": _m(100.0),
        "agreement": _m(98.6),
        "cosine": _m(0.9992, ""),
        "loss": _m(0.1, "nats"),
        "samples": _m(359, "images"),
    }
    if artifact:
        entry["artifact"] = _m(artifact, "", "artifact name")
    return entry


def _model(label: str, top1: float, macs: float, p50: float, size: int, energy: float) -> dict:
    return {
        "label": label,
        "quantized": label.endswith("quantize"),
        "macs": macs,
        "params": macs / 160,
        "top1": _m(top1),
        "p50_ms": p50,
        "onnx_bytes": size,
        "energy_j": energy,
        "energy_kind": "analytic",
    }


def _latency(artifact: str, p50: float | None) -> dict[str, Any]:
    energy = {"kind": "analytic", "energy_per_inference_j": 7.3e-05}
    if p50 is None:
        return {
            "artifact": artifact,
            "measured": False,
            "energy": energy,
            "reason": "needs a rk3588 device: build --device URL",
        }
    return {
        "artifact": artifact,
        "measured": True,
        "device": "local",
        "runtime": "onnxruntime",
        "threads": 1,
        "runs": 5000,
        "warmup": 20,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 3,
        "mean_ms": p50,
        "std_ms": 0.01,
        "energy": energy,
        "method": "median of 5000 timed runs",
    }


def report_data() -> dict[str, Any]:
    """Shaped like out/demo/rk3588/report.json (a digits ResNet built for rk3588), with a
    hostile model path and layer name to prove that everything is escaped."""
    layers = {
        "stem.0": (32, 16),
        "layer1.conv1": (32, 16),
        "layer2.conv1": (64, 48),
        "layer3.conv1": (128, 112),
        f"odd{HOSTILE}": (16, 8),
        "fc": (10, 10),
    }
    data: dict[str, Any] = {
        "schema": "edgecompress.report/1",
        "tool": {"name": "edgecompress", "version": "0.1.0"},
        "created": "2026-11-23T10:32:07+00:00",
        "model": {"source": f"/models/{HOSTILE}.pt"},
        "target": {"name": "rk3588"},
        "stages": [
            {"name": n, "status": "done", "seconds": s}
            for n, s in [
                ("evaluate", 2.2),
                ("prune", 31.8),
                ("distill", 37.9),
                ("quantize", 26.3),
                ("export_onnx", 6.3),
                ("export_rknn", 7.1),
                ("bench", 15.8),
            ]
        ],
        "models": [
            _model("original", 97.49, 49.6e6, 0.429, 1236847, 6.6e-4),
            _model("02_prune", 13.09, 23.4e6, 0.230, 811981, 3.9e-4),
            _model("03_distill", 96.66, 23.4e6, 0.235, 811981, 3.9e-4),
            _model("05_quantize", 96.66, 23.3e6, 0.112, 225455, 7.3e-5),
        ],
        "artifacts": {
            "onnx_ptq": {
                "path": "stages/05_quantize/model.ptq.onnx",
                "size_bytes": 225455,
                "deployed": False,
            },
            "onnx": {
                "path": "model.int8.onnx",
                "size_bytes": 225455,
                "precision": "int8",
                "stage": "06_export_onnx",
            },
            "rknn": {
                "path": "model.rknn",
                "size_bytes": 311175,
                "precision": "int8",
                "stage": "07_export_rknn",
            },
        },
        "accuracy": {
            "pytorch": _acc(97.49, 95.30, 98.68),
            "onnxruntime-int8-ptq": _acc(96.66, 94.25, 98.08, "onnx_ptq"),
            "onnxruntime-int8": _acc(96.66, 94.25, 98.08, "onnx"),
            "rknn-simulator": _acc(96.66, 94.25, 98.08, "rknn"),
        },
        "parity": {
            "onnx": {
                "max_abs_diff": _m(1.56, "", "ORT vs PyTorch"),
                "cosine": _m(0.99992, "", "ORT vs PyTorch, worst output"),
            },
            "rknn": {"cosine[0]": _m(0.99942, "", "RKNN simulator vs ONNX Runtime")},
        },
        "latency": {
            "onnx_ptq@host": _latency("onnx_ptq", 0.116),
            "onnx@host": _latency("onnx", 0.115),
            "rknn@rk3588": _latency("rknn", None),
        },
        "pruning": {
            "criterion": "l1",
            "allocation": "global",
            "round_to": 16,
            "layers": {k: {"before": b, "after": a} for k, (b, a) in layers.items()},
        },
    }
    data["summary"] = summarize(data)
    return data


def test_html_escapes_report_strings_and_fetches_nothing() -> None:
    page = render_html(report_data())
    assert HOSTILE not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # Self-contained: no remote reference at all (scripts, styles, fonts, images, xmlns).
    assert not re.search(r"https?://", page)
    refs = re.findall(r"""\b(?:src|href)\s*=\s*(["']?)([^"'\s>]*)""", page)
    assert refs and all(ref.startswith("data:") for _, ref in refs)
    assert "@import" not in page and "url(" not in page


def test_html_has_summary_plots_widths_parity_and_intervals() -> None:
    data = report_data()
    page = render_html(data)
    for svg_id in PLOT_IDS:
        assert f'id="{svg_id}"' in page
    for row in data["summary"]["rows"]:  # the summary table: every model state and file
        assert f">{row['row']}" in page
    # the rknn file has no measured latency: it is listed as not plotted, not drawn at 0
    latency_plot = page.split('id="plot-latency"')[1].split("</svg>")[0]
    assert latency_plot.count('class="point"') == 6
    assert "not plotted (no value): model.rknn" in page
    assert "94.25 – 98.08" in page  # 95% interval of the int8 runtimes
    assert "cosine[0]" in page and "0.999420" in page  # parity per output
    assert "128 → 112" in page  # widths before -> after


def test_html_without_pruning_or_latency_still_renders() -> None:
    data = copy.deepcopy(report_data())
    for key in ("pruning", "latency", "parity", "summary"):
        data.pop(key)
    for m in data["models"]:
        m["p50_ms"] = None
    page = render_html(data)
    assert 'id="plot-widths"' not in page and 'id="plot-latency"' not in page
    assert 'id="plot-size"' in page and page.rstrip().endswith("</html>")


def test_report_save_writes_html_next_to_json(tmp_path: Path) -> None:
    Report(report_data()).save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["report.html", "report.json", "report.md"]  # no temporary left
    assert 'id="plot-latency"' in (tmp_path / "report.html").read_text()


# -- a real browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("EDGECOMPRESS_REQUIRE_CHROMIUM"):
        pytest.fail("EDGECOMPRESS_REQUIRE_CHROMIUM is set but chromium is not installed")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")


def _browse(chromium: str, page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium,
        *FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.absolute().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _console(stderr: str) -> list[str]:
    """Console messages and uncaught errors Chromium logged for the page."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(render_html(report_data()))
    return path


def test_chromium_screenshot_shows_the_plots(chromium: str, page: Path, tmp_path: Path) -> None:
    from PIL import Image  # pillow comes with torchvision

    shot = tmp_path / "shot.png"
    res = _browse(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert _console(res.stderr) == []
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    pixels = np.asarray(img).reshape(-1, 3).astype(int)
    ink = (pixels != 255).any(axis=1).sum()
    assert ink > 0.03 * len(pixels)  # not a blank page

    def painted(color: str) -> int:
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=1) < 30).sum())

    # the plot markers are painted: model circles (blue) and artifact squares (orange,
    # 10x10 each, partly covered where points coincide)
    assert painted(MODEL_COLOR) > 500 and painted(ARTIFACT_COLOR) > 100


def test_chromium_dom_has_plots_and_no_console_errors(
    chromium: str, page: Path, tmp_path: Path
) -> None:
    res = _browse(chromium, page, tmp_path, "--dump-dom")
    dom = res.stdout
    assert dom.count("<svg") == 4
    for svg_id in PLOT_IDS:
        assert f'id="{svg_id}"' in dom
    assert "<script" not in dom  # the hostile model path stayed text
    assert HOSTILE.replace("<", "&lt;").replace(">", "&gt;") in dom
    assert _console(res.stderr) == []


def test_console_check_catches_a_page_error(chromium: str, tmp_path: Path) -> None:
    """The console check is not vacuous: a page that throws is caught by it."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>notDefined()</script></body></html>")
    res = _browse(chromium, bad, tmp_path, "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in _console(res.stderr))
