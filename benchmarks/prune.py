"""Issue: pruning. The digits example at 50% and 75% MAC reduction: each criterion (global
allocation) and each allocation (L1 criterion), one-shot and after the same recovery, against
torch-pruning's own magnitude pruner at the same MAC budget with the same recovery. Host
latency: ONNX Runtime, 1 thread, batch 1, same run, at 32x32 (the model's input) and 224x224
(same widths, where per-operator overhead no longer dominates)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch_pruning as tp

import edgecompress as ec
from benchmarks.common import machine, write_section
from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.choices import CRITERIA
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.evaluate import classification_metrics
from edgecompress.example import ARCH, prepare_digits_example
from edgecompress.measure import count_macs, evaluate_logits, onnx_latency_ms
from edgecompress.model_io import load_model
from edgecompress.report.markdown import table

RECOVERY = FitConfig(epochs=4, lr=0.01, losses=(LossConfig(name="ce"), LossConfig(name="kd")))
X32, X224 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224)


def torch_pruning_baseline(model: torch.nn.Module, keep: float) -> torch.nn.Module:
    """Torch-Pruning's documented recipe: MagnitudePruner, stepped until the MAC target."""
    m = copy.deepcopy(model)
    base = count_macs(m, X32)[0]
    pruner = tp.pruner.MagnitudePruner(
        m,
        X32,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.95,
        iterative_steps=100,
        ignored_layers=[m.fc],
    )
    for _ in range(100):
        pruner.step()
        if count_macs(m, X32)[0] <= keep * base:
            break
    return m


def run() -> None:
    model_path, data = prepare_digits_example(progress=False)
    teacher = load_model(model_path, ARCH).module
    bundle = DataBundle(Path(data), DIGITS_SPEC, DataConfig())
    train, val = bundle.train_arrays(), (bundle.val_inputs, bundle.val_labels)
    xv, yv = torch.from_numpy(val[0][:256]), torch.from_numpy(val[1][:256]).long()
    batches = [(xv[i : i + 32], yv[i : i + 32]) for i in range(0, 128, 32)]
    macs0, params0 = count_macs(teacher, X32)
    lat0 = (onnx_latency_ms(teacher, X32), onnx_latency_ms(teacher, X224, runs=20))
    top0 = classification_metrics(evaluate_logits(teacher, val[0]), val[1])["top1"]

    def evaluate(name: str, keep: float, pruned: torch.nn.Module, seconds: float) -> list[str]:
        one_shot = classification_metrics(evaluate_logits(pruned, val[0]), val[1])["top1"]
        fit(pruned, teacher, train, val, RECOVERY, progress=False)
        recovered = classification_metrics(evaluate_logits(pruned, val[0]), val[1])["top1"]
        macs, params = count_macs(pruned, X32)
        lat = (onnx_latency_ms(pruned, X32), onnx_latency_ms(pruned, X224, runs=20))
        row = [
            f"{1 - keep:.0%}",
            name,
            f"{macs / macs0:.3f}",
            f"{params / params0:.3f}",
            f"{one_shot:.2f}",
            f"{recovered:.2f}",
            f"{recovered - top0:+.2f}",
            f"{lat[0] / lat0[0]:.3f}",
            f"{lat[1] / lat0[1]:.3f}",
            f"{seconds:.1f}",
        ]
        print(row, flush=True)
        return row

    rows = []
    for keep in (0.5, 0.25):
        configs = [(f"criterion {c}", {"criterion": c}) for c in CRITERIA.names()]
        configs += [
            (f"allocation {a}", {"allocation": a})
            for a in ("uniform", "svd", "sensitivity", "latency")
        ]
        configs += [("criterion l1, aligned to 16", {"align": 16})]
        for name, options in configs:
            start = time.perf_counter()
            pruned, _ = ec.prune(teacher, X32, keep=keep, data=batches, progress=False, **options)
            rows.append(evaluate(name, keep, pruned, time.perf_counter() - start))
        start = time.perf_counter()
        base = torch_pruning_baseline(teacher, keep)
        rows.append(
            evaluate(
                "torch-pruning MagnitudePruner (baseline)", keep, base, time.perf_counter() - start
            )
        )
    header = [
        "MACs removed",
        "setting",
        "MACs",
        "params",
        "top-1 one-shot",
        "top-1 recovered",
        "vs unpruned",
        "latency 32px",
        "latency 224px",
        "prune s",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}. Unpruned digits model: top-1 "
        f"{top0:.2f}%, {macs0 / 1e6:.1f} MMACs, {params0 / 1e3:.0f}k params, host p50 "
        f"{lat0[0]:.3f} ms at 32x32 and {lat0[1]:.2f} ms at 224x224. MACs/params/latency "
        "columns are ratios to the unpruned model "
        "(ONNX Runtime, 1 thread, batch 1, same run). Recovery for every row: 4 epochs of CE + KD "
        "against the unpruned model, SGD lr 0.01, best epoch kept. Criterion rows use global "
        "allocation; allocation rows use L1. `prune s` is the time to choose and apply the "
        "pruning.\n\n" + table(rows, header)
    )
    write_section("Pruning: criteria and allocations at 50% and 75% fewer MACs", body)
