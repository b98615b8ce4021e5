"""Issue #15: how a transformer's heads and MLP units are shared out. A small ViT
(torchvision's VisionTransformer: 8x8 patches, 2 blocks of 4 heads, width 64) trained on the
digits example, pruned to 50% of its MACs with ``uniform`` (the same share of every block)
and ``global`` (one ranking across blocks, each block's scores over its mean), then the same
recovery (CE + KD against the unpruned model, best epoch on val) for seeds 0, 1, 2. Top-1
is on the test split, which nothing here chose on.

    python -m benchmarks.transformer_allocation
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from benchmarks.common import machine, write_section
from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.evaluate import classification_metrics
from edgecompress.example import prepare_digits_example
from edgecompress.measure import count_macs, evaluate_logits
from edgecompress.prune.attention import attention_blocks, mlp_pairs
from edgecompress.report.markdown import table
from edgecompress.testing.models import tiny_vit

SEEDS = (0, 1, 2)
KEEP = 0.5
TEACHER = FitConfig(epochs=40, lr=0.002, optimizer="adamw", losses=(LossConfig(name="ce"),))
CE_KD = (LossConfig(name="ce"), LossConfig(name="kd"))
X32 = torch.randn(1, 3, 32, 32)


def recovery(seed: int) -> FitConfig:
    return FitConfig(epochs=6, lr=0.001, optimizer="adamw", losses=CE_KD, seed=seed)


def run() -> None:
    _, data = prepare_digits_example(progress=False)
    bundle = DataBundle(Path(data), DIGITS_SPEC, DataConfig())
    train, val = bundle.train_arrays(), (bundle.val_inputs, bundle.val_labels)
    test = (bundle.test_inputs, bundle.test_labels)

    def top1(model: torch.nn.Module) -> dict[str, float]:
        return classification_metrics(evaluate_logits(model.eval(), test[0]), test[1])

    torch.manual_seed(0)
    teacher = tiny_vit()
    start = time.perf_counter()
    trained = fit(teacher, None, train, val, TEACHER, progress=False)
    teacher_s = time.perf_counter() - start
    base = top1(teacher)
    macs0 = count_macs(teacher, X32)[0]
    rows = []
    for allocation in ("uniform", "global"):
        pruned, plan = ec.prune(teacher, X32, keep=KEEP, allocation=allocation, progress=False)
        heads = [int(a.num_heads) for a in attention_blocks(pruned).values()]
        hidden = [f.out_features for f, _ in mlp_pairs(pruned, set()).values()]
        one_shot = top1(pruned)["top1"]
        tops, halves = [], []
        for seed in SEEDS:
            student, _ = ec.prune(teacher, X32, keep=KEEP, allocation=allocation, progress=False)
            fit(student, teacher, train, val, recovery(seed), progress=False)
            m = top1(student)
            tops.append(m["top1"])
            halves.append((m["top1_ci_high"] - m["top1_ci_low"]) / 2)
            print(allocation, seed, f"{m['top1']:.2f}", flush=True)
        rows.append(
            [
                allocation,
                f"{plan.macs[1] / macs0:.3f}",
                f"{heads}",
                f"{hidden}",
                f"{one_shot:.2f}",
                f"{np.mean(tops):.2f} ± {np.std(tops, ddof=1):.2f}",
                ", ".join(f"{t:.2f}" for t in tops),
                f"{np.mean(tops) - base['top1']:+.2f}",
                f"±{np.mean(halves):.2f}",
            ]
        )
    header = [
        "allocation",
        "MACs",
        "heads per block",
        "MLP units per block",
        "one-shot top-1",
        "recovered top-1 (mean ± sd)",
        "per seed",
        "vs unpruned",
        "95% CI (one run)",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}. Model: `tiny_vit()` (torchvision "
        "VisionTransformer, 8x8 patches, 2 blocks of 4 heads, width 64, MLP 128) trained "
        f"{TEACHER.epochs} epochs (AdamW lr {TEACHER.lr}) on the digits example at 32x32 "
        f"(best epoch {trained.best_epoch} on val, {teacher_s:.0f} s): test top-1 "
        f"{base['top1']:.2f}% "
        f"({len(test[1])} test images, 95% CI {base['top1_ci_low']:.2f}-"
        f"{base['top1_ci_high']:.2f}), {macs0 / 1e6:.2f} MMACs. Pruned with "
        f"`ec.prune(keep={KEEP}, allocation=...)` (L1, heads and MLP hidden units, residual "
        "width kept), then 6 epochs of CE + KD against the unpruned model (AdamW lr 0.001, best "
        "epoch on val), seeds 0, 1, 2; top-1 on the test split. Written by "
        "`python -m benchmarks.transformer_allocation`.\n\n" + table(rows, header)
    )
    write_section("Transformers: heads shared out uniformly or ranked globally", body)


if __name__ == "__main__":
    run()
