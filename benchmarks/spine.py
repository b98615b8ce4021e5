"""The spine: the digits example built for host and rk3588 (accuracy per runtime, sizes),
and host FP32 latency of ONNX Runtime against PyTorch eager on the same models, same run,
at the example's input size and at deployment size (224x224)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from benchmarks.common import machine, write_section
from edgecompress.cli import main as cli
from edgecompress.example import ARCH, cache_dir, prepare_digits_example
from edgecompress.exporters.onnx import export_onnx
from edgecompress.report.markdown import HEADER, summary_rows, table
from edgecompress.runtime.latency import time_loop
from edgecompress.runtime.onnxrt import bench_onnx

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"


def _builds(work: Path) -> str:
    model, data = prepare_digits_example(progress=False)
    rows = []
    for target in ("host", "rk3588"):
        out = work / target
        start = time.perf_counter()
        code = cli(
            [
                "build",
                str(model),
                "--arch",
                ARCH,
                "--recipe",
                str(RECIPE),
                "--target",
                target,
                "--data",
                str(data),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        if code != 0:
            raise SystemExit(f"build for {target} failed ({code})")
        seconds = time.perf_counter() - start
        report = json.loads((out / "report.json").read_text())
        rows += [[target, *r] for r in summary_rows(report)]
        rows[-1][0] += f" ({seconds:.0f} s build)"
    return table(rows, ["target", *HEADER])


def _latency_rows() -> list[list[str]]:
    torch.set_num_threads(1)
    models = [
        ("digits_resnet", 32, _digits()),
        ("digits_resnet", 224, _digits()),
        ("resnet18", 224, torchvision.models.resnet18(num_classes=1000).eval()),
        ("mobilenet_v2", 224, torchvision.models.mobilenet_v2(num_classes=1000).eval()),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, net in models:
            x = torch.randn(1, 3, size, size)
            path = Path(tmp) / f"{name}_{size}.onnx"
            export_onnx(net, x, path)
            ort = bench_onnx(path, threads=1, warmup=20, runs=100, min_time_s=2.0)["latency"]
            with torch.inference_mode():
                eager = time_loop(lambda net=net, x=x: net(x), warmup=10, runs=50, min_time_s=2.0)
            rows.append(
                [
                    name,
                    f"{size}x{size}",
                    f"{eager.p50_ms:.3f}",
                    f"{ort['p50_ms']:.3f}",
                    f"{ort['p90_ms']:.3f}",
                    f"{eager.p50_ms / ort['p50_ms']:.2f}x",
                ]
            )
    return rows


def _digits() -> torch.nn.Module:
    from edgecompress.testing.models import digits_resnet

    return digits_resnet().eval()


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        builds = _builds(Path(tmp))
    lat = table(
        _latency_rows(),
        ["model", "input", "PyTorch eager p50 ms", "ORT p50 ms", "ORT p90 ms", "ORT speed-up"],
    )
    import onnxruntime

    body = (
        f"Machine: {machine()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"1 thread. Example model cache: `{cache_dir()}`.\n\n"
        "### `make demo`: the digits example built for each target\n\n"
        f"{builds}\n\n"
        "Accuracy on the digits test split (359 images; nothing is chosen on it); `agree %` "
        "is agreement with the\nPyTorch model's predictions. Host p50: that file in ONNX "
        "Runtime on this machine, batch 1.\n\n"
        "### FP32 latency: ONNX Runtime vs PyTorch eager (random weights, batch 1, 1 thread)\n\n"
        f"{lat}\n\n"
        "At 32x32 per-operator overhead dominates; compare compression results at 224x224.\n"
    )
    write_section("Spine: export, parity and host latency", body)
    print(np.__name__ and "spine benchmark written")
