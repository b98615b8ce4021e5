"""On-device benchmarking (issue 7): the agent harness against a bare ONNX Runtime loop
on the same model in the same run (overhead), the run-to-run spread over 5 repeats, and
the analytic energy per inference of the digits model on each target profile."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
import torchvision

from benchmarks.common import machine, write_section
from edgecompress.exporters.onnx import export_onnx
from edgecompress.report.markdown import table
from edgecompress.runtime.energy_model import estimate_energy
from edgecompress.runtime.harness import BenchOptions, bench_artifact
from edgecompress.runtime.latency import time_loop
from edgecompress.runtime.onnxrt import open_session, random_inputs
from edgecompress.targets import TARGETS
from edgecompress.testing.models import digits_resnet

REPEATS = 5


def _bare(path: Path, runs: int, min_time_s: float) -> float:
    """The loop anyone would write: one session, one thread, time session.run."""
    sess = open_session(path, 1, None)
    feeds = random_inputs(sess, 1, 0, path)
    return time_loop(
        lambda: sess.run(None, feeds), warmup=20, runs=runs, min_time_s=min_time_s
    ).p50_ms


def _harness(path: Path, runs: int, min_time_s: float) -> float:
    opts = BenchOptions(runs=runs, warmup=20, min_time_s=min_time_s, sensors=())
    return float(bench_artifact(path, "host", "local", opts)["latency"]["p50_ms"])


def _spread(xs: list[float]) -> str:
    return f"{(max(xs) - min(xs)) / statistics.median(xs) * 100:.1f}%"


def _overhead(models: dict[str, tuple[Path, int, float]]) -> str:
    rows, readings = [], []
    for name, (path, runs, min_time_s) in models.items():
        bare, harness = [], []
        for _ in range(REPEATS):  # interleaved, so drift hits both alike
            bare.append(_bare(path, runs, min_time_s))
            harness.append(_harness(path, runs, min_time_s))
        b, h = statistics.median(bare), statistics.median(harness)
        ratio = h / b
        rows.append([name, f"{b:.3f}", f"{h:.3f}", f"{ratio:.3f}", _spread(bare), _spread(harness)])
        within = "within" if abs(ratio - 1) <= 0.03 else "OUTSIDE"
        readings.append(f"{name}: harness/bare {ratio:.3f} ({within} the 3% target)")
    header = [
        "model",
        "bare ORT p50 ms",
        "harness p50 ms",
        "ratio",
        "bare spread",
        "harness spread",
    ]
    return (
        table(rows, header)
        + f"\n\nMedians of {REPEATS} interleaved repeats; spread = (max - min) / median of the "
        f"{REPEATS} p50s. Harness = `edgecompress bench` on `local`: the agent copied to a "
        "temporary folder and run in its own interpreter, streaming its samples.\n\n"
        "Reading: " + "; ".join(readings) + "."
    )


def _energy(path: Path) -> str:
    rows = []
    for target, profile in TARGETS.items():
        cells = [target]
        for precision in ("fp32", "fp16", "int8"):
            est = estimate_energy(path, target, precision)
            mark = "" if precision in profile.precisions else "*"
            cells.append(f"{est['energy_per_inference_j'] * 1e6:.2f}{mark}")
        rows.append(cells)
    est = estimate_energy(path, "host", "fp32")
    macs = sum(est["features"]["macs"].values())
    return (
        table(rows, ["target", "fp32 µJ", "fp16 µJ", "int8 µJ"])
        + f"\n\nThe digits ResNet (3x32x32 input, {macs / 1e6:.1f} M MACs, "
        f"{est['features']['bytes'] / 1e6:.2f} MB moved at fp32), analytic estimate: "
        "MACs x energy per MAC at the precision + bytes x energy per DRAM byte, from the "
        "per-target tables in `edgecompress/runtime/energy_tables.py` (sources cited "
        "there); * = a precision the target profile does not run natively (rk3588 runs FP32 "
        "models in FP16), shown for comparison. "
        "Kind: analytic, not measured; `edgecompress energy fit` replaces it with "
        "coefficients fitted to measured runs."
    )


def run() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digits = work / "digits.onnx"
        export_onnx(digits_resnet().eval(), torch.randn(1, 3, 32, 32), digits)
        resnet = work / "resnet18.onnx"
        model = torchvision.models.resnet18(weights=None).eval()
        export_onnx(model, torch.randn(1, 3, 224, 224), resnet)
        models = {
            "digits ResNet 3x32x32": (digits, 2000, 1.0),
            "resnet18 3x224x224": (resnet, 60, 2.0),
        }
        overhead = _overhead(models)
        energy = _energy(digits)
    write_section(
        "Device: harness overhead and spread",
        f"Machine: {machine()}; ONNX Runtime, 1 thread.\n\n{overhead}",
    )
    write_section("Device: analytic energy per inference", energy)
