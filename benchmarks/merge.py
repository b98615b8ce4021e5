"""Issue: layer merging. A VGG-style and an inception-style model trained on digits; exact
merges alone, and exact + approximate (DeepRebirth streamlining and branch merging) before
and after recovery: layers, MACs, top-1 in PyTorch and in the RKNN simulator (INT8), host
latency ratio (ONNX Runtime, 1 thread, same run) at 32x32 and 224x224."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from benchmarks.common import machine, write_section
from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.example import cache_dir, prepare_digits_example
from edgecompress.exporters.onnx import export_onnx
from edgecompress.exporters.rknn import convert_rknn
from edgecompress.measure import count_macs, evaluate_logits, onnx_latency_ms
from edgecompress.merge.engine import APPROXIMATE, EXACT_DEFAULT, merge
from edgecompress.report.markdown import table
from edgecompress.testing.models import inception_digits, vgg_digits

X32, X224 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224)
RECOVERY = FitConfig(epochs=4, lr=0.01, losses=(LossConfig(name="ce"), LossConfig(name="kd")))


def _trained(name: str, factory: Callable[[], nn.Module], bundle: DataBundle) -> nn.Module:
    """Train once (15 epochs, hard labels) and cache the weights beside the example model."""
    path = cache_dir() / f"{name}.pt"
    model = factory()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    val = (bundle.val_inputs, bundle.val_labels)
    fit(
        model,
        None,
        bundle.train_arrays(),
        val,
        FitConfig(epochs=15, lr=0.05, losses=(LossConfig(name="ce"),)),
        progress=False,
    )
    torch.save(model.state_dict(), path)
    return model.eval()


def _rknn_top1(model: nn.Module, bundle: DataBundle, work: Path) -> float:
    onnx_path = work / "m.onnx"
    export_onnx(model, X32, onnx_path)
    res = convert_rknn(
        onnx_path,
        work / "m.rknn",
        DIGITS_SPEC,
        "rk3588",
        bundle.calibration_prepared,
        bundle.val_prepared,
    )
    return float(
        (res.outputs[0].reshape(len(bundle.val_labels), -1).argmax(1) == bundle.val_labels).mean()
        * 100
    )


def _onnx_nodes(model: nn.Module, work: Path) -> int:
    path = work / "n.onnx"
    export_onnx(model, X32, path)
    return len(onnx.load(str(path)).graph.node)


def run() -> None:
    _, data = prepare_digits_example(progress=False)
    bundle = DataBundle(Path(data), DIGITS_SPEC, DataConfig())
    val = (bundle.val_inputs, bundle.val_labels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, factory in (("VGG-style", vgg_digits), ("inception-style", inception_digits)):
            original = _trained(name.split("-")[0].lower() + "_digits", factory, bundle)
            lat0 = (onnx_latency_ms(original, X32), onnx_latency_ms(original, X224, runs=20))
            macs0 = count_macs(original, X32)[0]
            exact = merge(original, X32).model
            approx = merge(original, X32, (*EXACT_DEFAULT, *APPROXIMATE))
            raw_top1 = _top1(approx.model, val)
            fit(approx.model, original, bundle.train_arrays(), val, RECOVERY, progress=False)
            variants = [
                ("original", original, None),
                ("exact merges", exact, None),
                ("exact + approximate, recovered", approx.model, raw_top1),
            ]
            for label, model, before in variants:
                layers = sum(1 for m in model.modules() if len(list(m.children())) == 0)
                lat = (onnx_latency_ms(model, X32), onnx_latency_ms(model, X224, runs=20))
                rows.append(
                    [
                        name,
                        label,
                        str(layers),
                        str(_onnx_nodes(model, work)),
                        f"{count_macs(model, X32)[0] / macs0:.3f}",
                        f"{before:.2f}" if before is not None else "-",
                        f"{_top1(model, val):.2f}",
                        f"{_rknn_top1(model, bundle, work):.2f}",
                        f"{lat[0] / lat0[0]:.3f}",
                        f"{lat[1] / lat0[1]:.3f}",
                    ]
                )
                print(rows[-1], flush=True)
    reading = ["", "", "Reading (computed from the rows above):"]
    for name in ("VGG-style", "inception-style"):
        by = {r[1]: r for r in rows if r[0] == name}
        ex, ap = by["exact merges"], by["exact + approximate, recovered"]
        verdict = "pays off" if float(ap[8]) < 0.95 else "does not pay off"
        reading.append(
            f"- {name}: exact merges leave {ex[2]} layers at {ex[8]}x latency (ONNX Runtime "
            "already fuses Conv+BN itself, so folding buys little there); with DeepRebirth's "
            f"approximate merges MACs are {ap[4]}x, latency {ap[8]}x (32px) / {ap[9]}x (224px) "
            f"and top-1 {ap[6]} vs {by['original'][6]}: on this runtime it {verdict}."
        )
    header = [
        "model",
        "variant",
        "layers",
        "ONNX nodes",
        "MACs",
        "top-1 before recovery",
        "top-1",
        "RKNN sim top-1",
        "latency 32px",
        "latency 224px",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}. Each model trained 15 epochs on digits. "
        "Approximate merges: streamline_pool (pool stride folded into the conv before it, after "
        "the exact ReLU/pool swap), pool_branch_to_conv and drop_small_branch (inception "
        "branches). "
        "Recovery: 4 epochs CE + KD against the original. Latency columns are ONNX Runtime p50 "
        "ratios to the original model, 1 thread, batch 1, same run; the RKNN simulator gives "
        "accuracy only (no timing without a board).\n\n" + table(rows, header) + "\n".join(reading)
    )
    write_section("Layer merging: exact and DeepRebirth merges", body)


def _top1(model: nn.Module, val: tuple[np.ndarray, np.ndarray]) -> float:
    return float((evaluate_logits(model, val[0]).argmax(1) == val[1]).mean() * 100)
