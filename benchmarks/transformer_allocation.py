"""Issue #15: how a transformer's heads and MLP units are shared out. A small ViT
(torchvision's VisionTransformer: 7x7 patches of 28x28 images, 6 blocks of 4 heads, width
64, MLP 128) trained on Fashion-MNIST (benchmarks/fashion.py), pruned to 50% of its MACs
with ``uniform`` (the same share of every block)
and ``global`` (one ranking across blocks, each block's scores over its mean), then the same
recovery (CE + KD against the unpruned model, best epoch on val) for seeds 0, 1, 2. Top-1
is on the test split, which nothing here chose on.

    python -m benchmarks.transformer_allocation
"""

from __future__ import annotations

import time

import numpy as np
import torch

import edgecompress as ec
from benchmarks import fashion
from benchmarks.common import machine, write_section
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.measure import count_macs
from edgecompress.prune.attention import attention_blocks, mlp_pairs
from edgecompress.report.markdown import table

SEEDS = (0, 1, 2)
KEEP = 0.5
TEACHER = FitConfig(
    epochs=15, lr=0.002, batch_size=128, optimizer="adamw", losses=(LossConfig(name="ce"),)
)
CE_KD = (LossConfig(name="ce"), LossConfig(name="kd"))
X28 = fashion.X28


def vit() -> torch.nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=28, patch_size=7, num_layers=6, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=10,
    )  # fmt: skip


def recovery(seed: int) -> FitConfig:
    return FitConfig(epochs=3, lr=0.001, batch_size=128, optimizer="adamw", losses=CE_KD, seed=seed)


def run() -> None:
    train, val = fashion.train_arrays(), fashion.val()
    top1 = fashion.test_metrics
    torch.manual_seed(0)
    teacher = vit()
    start = time.perf_counter()
    trained = fit(teacher, None, train, val, TEACHER, progress=False)
    teacher_s = time.perf_counter() - start
    base = top1(teacher)
    macs0 = count_macs(teacher, X28)[0]
    rows: list[list[str]] = []
    per_seed: dict[str, list[float]] = {}
    for allocation in ("uniform", "global"):
        pruned, plan = ec.prune(teacher, X28, keep=KEEP, allocation=allocation, progress=False)
        heads = [int(a.num_heads) for a in attention_blocks(pruned).values()]
        hidden = [f.out_features for f, _ in mlp_pairs(pruned, set()).values()]
        one_shot = top1(pruned)["top1"]
        tops, halves = [], []
        for seed in SEEDS:
            student, _ = ec.prune(teacher, X28, keep=KEEP, allocation=allocation, progress=False)
            fit(student, teacher, train, val, recovery(seed), progress=False)
            m = top1(student)
            tops.append(m["top1"])
            halves.append((m["top1_ci_high"] - m["top1_ci_low"]) / 2)
            print(allocation, seed, f"{m['top1']:.2f}", flush=True)
        per_seed[allocation] = tops
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
        f"Machine: {machine()}; torch {torch.__version__}. Model: torchvision's "
        "VisionTransformer (7x7 patches, 6 blocks of 4 heads, width 64, MLP 128) trained "
        f"{TEACHER.epochs} epochs (AdamW lr {TEACHER.lr}) on Fashion-MNIST (55,000 train / "
        "5,000 val / 10,000 test) "
        f"(best epoch {trained.best_epoch} on val, {teacher_s:.0f} s): test top-1 "
        f"{base['top1']:.2f}% "
        f"(95% CI {base['top1_ci_low']:.2f}-"
        f"{base['top1_ci_high']:.2f}), {macs0 / 1e6:.2f} MMACs. Pruned with "
        f"`ec.prune(keep={KEEP}, allocation=...)` (L1, heads and MLP hidden units, residual "
        "width kept), then 3 epochs of CE + KD against the unpruned model (AdamW lr 0.001, best "
        "epoch on val), seeds 0, 1, 2; top-1 on the test split. Written by "
        "`python -m benchmarks.transformer_allocation`.\n\n"
        + table(rows, header)
        + "\n\nglobal − uniform, paired by seed (points): "
        + ", ".join(
            f"{g - u:+.2f}" for g, u in zip(per_seed["global"], per_seed["uniform"], strict=True)
        )
        + "."
    )
    write_section("Transformers: heads shared out uniformly or ranked globally", body)


if __name__ == "__main__":
    run()
