"""Issue #14 (part 4): pruning criteria and allocations on Fashion-MNIST. The ResNet-8
reference (benchmarks/fashion.py) pruned to 50% and to 25% of its MACs: each criterion
(global allocation), each allocation (L1 criterion), L1 with widths aligned to 16 (what
`build` does), and Torch-Pruning's MagnitudePruner stepped to the same MAC budget; every
row recovered the same way (CE + KD against the reference), seeds 0, 1, 2 (the seed moves
the recovery's order and augmentation, and the random criterion's draw). Data-driven
criteria and the sensitivity allocation score on val batches; best epoch on val; top-1
on the 10,000 test images only. Host latency: ONNX Runtime, 1 thread, batch 1, each
row timed in turns with the unpruned model, at 28x28 (the model's input)
and 224x224 (same widths, where per-operator overhead no longer dominates).

Results accumulate in benchmarks/results/prune.json: an interrupted run resumes, seed 0
of every row first.

    python -m benchmarks.prune
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp

import edgecompress as ec
from benchmarks import fashion
from benchmarks.common import machine, seed_runs, seed_stats, write_section
from edgecompress.choices import CRITERIA
from edgecompress.io import atomic_write_json
from edgecompress.measure import count_macs
from edgecompress.report.markdown import table
from edgecompress.timing import onnx_latencies_ms

EPOCHS = 1
SEEDS = (0, 1, 2)
KEEPS = (0.5, 0.25)
REFERENCE = "resnet"
RESULTS = Path(__file__).resolve().parent / "results" / "prune.json"
TP_BASELINE = "torch-pruning MagnitudePruner (L2)"
CONFIGS: dict[str, dict[str, Any]] = {
    **{f"criterion {c}": {"criterion": c} for c in CRITERIA.names()},
    **{f"allocation {a}": {"allocation": a} for a in ("uniform", "svd", "sensitivity", "latency")},
    "criterion l1, aligned to 16": {"align": 16},
    TP_BASELINE: {},
}


def torch_pruning_baseline(model: torch.nn.Module, keep: float) -> torch.nn.Module:
    """Torch-Pruning's documented recipe: MagnitudePruner, stepped until the MAC target."""
    m = copy.deepcopy(model)
    base = count_macs(m, fashion.X28)[0]
    pruner = tp.pruner.MagnitudePruner(
        m,
        fashion.X28,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.95,
        iterative_steps=100,
        ignored_layers=[m.fc],
    )
    for _ in range(100):
        pruner.step()
        if count_macs(m, fashion.X28)[0] <= keep * base:
            break
    return m


def _prune(teacher: torch.nn.Module, name: str, keep: float, seed: int) -> torch.nn.Module:
    if name == TP_BASELINE:
        return torch_pruning_baseline(teacher, keep)
    x, y = fashion.val()
    batches = [
        (torch.from_numpy(x[i : i + 64]), torch.from_numpy(y[i : i + 64]).long())
        for i in range(0, 256, 64)
    ]
    torch.manual_seed(seed)  # the random criterion's draw
    pruned, _ = ec.prune(
        teacher, fashion.X28, keep=keep, data=batches, progress=False, **CONFIGS[name]
    )
    return pruned


def run() -> None:
    teacher, _, res = fashion.resume(REFERENCE, RESULTS, "prune")
    res.setdefault("shapes", {})
    res["macs"], res["params"] = count_macs(teacher, fashion.X28)
    torch.set_num_threads(2)
    for seed in SEEDS:  # seed 0 of every row first: an interrupted run covers each row
        for keep in KEEPS:
            for name in CONFIGS:
                key = f"{keep}/{name}/{seed}"
                if key in res["runs"]:
                    continue
                start = time.perf_counter()
                pruned = _prune(teacher, name, keep, seed)
                prune_s = time.perf_counter() - start
                shape_key = f"{keep}/{name}"
                if shape_key not in res["shapes"]:  # the structure's cost, once per row
                    lat = _latency_ratios(teacher, pruned)
                    macs, params = count_macs(pruned, fashion.X28)
                    res["shapes"][shape_key] = {
                        "macs": macs / res["macs"],
                        "params": params / res["params"],
                        "latency_28": lat[0],
                        "latency_224": lat[1],
                    }
                one_shot = fashion.test_metrics(pruned)["top1"]
                fashion.recover(pruned, teacher, EPOCHS, seed)
                res["runs"][key] = {
                    **fashion.test_metrics(pruned),
                    "one_shot": one_shot,
                    "prune_s": prune_s,
                    "seconds": time.perf_counter() - start,
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                }
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(RESULTS, res)
                print(key, f"{res['runs'][key]['top1']:.2f}", flush=True)
                write(res)
    write(res)


def _latency_ratios(teacher: torch.nn.Module, pruned: torch.nn.Module) -> tuple[float, float]:
    """pruned / unpruned p50 at 28x28 and 224x224, the two timed in turns."""
    small = onnx_latencies_ms([teacher, pruned], fashion.X28)
    large = onnx_latencies_ms([teacher, pruned], fashion.X224, runs=20)
    return small[1] / small[0], large[1] / large[0]


def write(res: dict[str, Any]) -> None:
    rows = []
    missing = []
    for keep in KEEPS:
        for name in CONFIGS:
            per = seed_runs(res["runs"], f"{keep}/{name}")
            if not per:
                missing.append(f"{1 - keep:.0%} {name}")
                continue
            mean, sd, n, half = seed_stats(
                {str(s): {"top1": v["top1"], "ci": [v["top1_ci_low"], v["top1_ci_high"]]}
                 for s, v in per.items()}
            )  # fmt: skip
            shape = res["shapes"][f"{keep}/{name}"]
            rows.append(
                [
                    f"{1 - keep:.0%}",
                    name,
                    f"{shape['macs']:.3f}",
                    f"{shape['params']:.3f}",
                    f"{np.mean([v['one_shot'] for v in per.values()]):.2f}",
                    f"{mean:.2f}" + (f" ± {sd:.2f}" if n > 1 else "") + f" (n={n})",
                    f"{mean - res['teacher_top1']:+.2f}",
                    f"±{half:.2f}",
                    f"{shape['latency_28']:.3f}",
                    f"{shape['latency_224']:.3f}",
                    f"{np.mean([v['prune_s'] for v in per.values()]):.1f}",
                ]
            )
    header = [
        "MACs removed",
        "setting",
        "MACs",
        "params",
        "top-1 one-shot",
        "top-1 recovered (mean ± sd)",
        "vs unpruned",
        "95% CI",
        "latency 28px",
        "latency 224px",
        "prune s",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}, 2 threads. The Fashion-MNIST "
        f"ResNet-8 reference of the peers section: test top-1 {res['teacher_top1']:.2f}%, "
        f"{res['macs'] / 1e6:.1f} MMACs, {res['params'] / 1e3:.0f}k parameters. MACs, "
        "params and latency are ratios to it (ONNX Runtime, 1 thread, batch 1, the two models "
        "timed in turns). Every row recovers the same way: "
        f"{EPOCHS} epoch{'s' if EPOCHS > 1 else ''} of CE + KD against the reference, SGD lr "
        "0.01, cosine schedule, batch 128, best epoch on val (5,000 images); seeds "
        f"{', '.join(map(str, SEEDS))} (n says how many have run). Criterion rows rank "
        "globally; allocation rows use L1; data-driven criteria and the sensitivity "
        "allocation score on 256 val images. Top-1 is on the 10,000 test images only; the "
        "CI column is one run's 95% Wilson half-interval; one-shot is before recovery. "
        "`prune s`: choosing and applying the cut. Written by `python -m benchmarks.prune` "
        "(runs in benchmarks/results/prune.json).\n\n"
        + table(rows, header)
        + (f"\n\nNot run yet (resumes there): {'; '.join(missing)}." if missing else "")
        + _reading(res)
    )
    write_section("Pruning: criteria and allocations at 50% and 75% fewer MACs", body)


ALIGNED = "criterion l1, aligned to 16"


def _reading(res: dict[str, Any]) -> str:
    """What the rows say, computed from them: which settings one run's interval cannot
    tell from L1, which fall behind it, and `build`'s choice against Torch-Pruning."""
    lines = []
    for keep in KEEPS:
        per = {name: seed_runs(res["runs"], f"{keep}/{name}") for name in CONFIGS}
        if any(len(v) < 2 for v in per.values()):
            continue  # a reading waits for every row's second seed
        means = {n: float(np.mean([r["top1"] for r in v.values()])) for n, v in per.items()}
        half = float(
            np.mean(
                [(r["top1_ci_high"] - r["top1_ci_low"]) / 2 for r in per["criterion l1"].values()]
            )
        )
        l1 = means["criterion l1"]
        close = [n for n in CONFIGS if n != "criterion l1" and abs(means[n] - l1) <= half]
        behind = [f"{n} {means[n] - l1:+.2f}" for n in CONFIGS if means[n] < l1 - half]
        ahead = [f"{n} {means[n] - l1:+.2f}" for n in CONFIGS if means[n] > l1 + half]
        diffs = [
            per[ALIGNED][s]["top1"] - per[TP_BASELINE][s]["top1"]
            for s in sorted(set(per[ALIGNED]) & set(per[TP_BASELINE]))
        ]
        shape = res["shapes"]
        lines.append(
            f"- {1 - keep:.0%} of the MACs removed: L1 {l1:.2f} "
            f"({l1 - res['teacher_top1']:+.2f} vs unpruned). Within one run's 95% interval "
            f"(±{half:.2f}) of L1: {', '.join(close) or 'none'}. Behind it by more: "
            f"{'; '.join(behind) or 'none'}. Ahead by more: {'; '.join(ahead) or 'none'}. "
            + (
                "A random choice of channels is among the close ones: after this recovery, "
                "the criterion barely matters here. "
                if "criterion random" in close
                else ""
            )
            + f"`build`'s choice (L1 aligned to 16) against Torch-Pruning's MagnitudePruner, "
            f"paired by seed: {', '.join(f'{d:+.2f}' for d in diffs)} (mean "
            f"{np.mean(diffs):+.2f}), at {shape[f'{keep}/{ALIGNED}']['latency_28']:.2f}x / "
            f"{shape[f'{keep}/{TP_BASELINE}']['latency_28']:.2f}x the unpruned latency (28 px)."
        )
    return "\n\nReading (computed from the rows above):\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    run()
