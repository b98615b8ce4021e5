"""Issue #14 (part 4): layer merging on Fashion-MNIST. A VGG-style and an inception-style
model (benchmarks/fashion.py trains each once: 10 epochs, best on val): exact merges
alone (no training: the same function), and exact + approximate merges (DeepRebirth
streamlining and branch merging) before and after recovery (2 epochs of CE + KD against
the original, best epoch on val; seeds 0, 1, 2 move its order and augmentation). Layers,
ONNX nodes, MACs, top-1 on the 10,000 test images in PyTorch and in the RKNN simulator
(rk3588, INT8 with RKNN's calibration), and host latency as a ratio to the original
(ONNX Runtime, 1 thread, batch 1, the three timed in turns) at 28x28 and 224x224.

Results accumulate in benchmarks/results/merge.json: an interrupted run resumes.

    python -m benchmarks.merge
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from benchmarks import fashion
from benchmarks.common import machine, seed_runs, seed_stats, write_section
from edgecompress.calibration.fashion_mnist import FASHION_SPEC, default_cache
from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.onnx import export_onnx
from edgecompress.exporters.rknn import convert_rknn
from edgecompress.io import atomic_write_json
from edgecompress.measure import count_macs
from edgecompress.merge.engine import APPROXIMATE, EXACT_DEFAULT, merge
from edgecompress.report.markdown import table
from edgecompress.timing import onnx_latencies_ms

SEEDS = (0, 1, 2)
RECOVERY_EPOCHS = 2
MODELS = {"vgg": "VGG-style", "inception": "inception-style"}
RESULTS = Path(__file__).resolve().parent / "results" / "merge.json"
WORK = default_cache() / "merge"
APPROX = "exact + approximate, recovered"


def _layers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if len(list(m.children())) == 0)


def _onnx_nodes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "n.onnx"
        export_onnx(model, fashion.X28, path)
        return len(onnx.load(str(path)).graph.node)


def _rknn_metrics(model: nn.Module) -> dict[str, float]:
    b = fashion.bundle()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model, fashion.X28, path)
        out = convert_rknn(
            path,
            path.with_suffix(".rknn"),
            FASHION_SPEC,
            "rk3588",
            b.calibration_prepared,
            b.test_prepared,
            progress=False,
        )
    return classification_metrics(out.outputs[0].reshape(len(b.test_labels), -1), b.test_labels)


def _structure(model: nn.Module, macs0: float) -> dict[str, Any]:
    return {
        "layers": _layers(model),
        "onnx_nodes": _onnx_nodes(model),
        "macs": count_macs(model, fashion.X28)[0] / macs0,
    }


def run_model(key: str, res: dict[str, Any]) -> None:
    original, info = fashion.reference(key)
    rec = res.setdefault("models", {}).setdefault(key, {"reference_top1": info["test_top1"]})
    if rec["reference_top1"] != info["test_top1"]:
        raise SystemExit(
            f"merge: the {key} reference scores {info['test_top1']:.2f}% on test, the recorded "
            f"runs used {rec['reference_top1']:.2f}%: move {RESULTS} aside to rerun"
        )
    macs0 = count_macs(original, fashion.X28)[0]
    variants = rec.setdefault("variants", {})

    def save() -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(RESULTS, res)
        write(res)

    if "exact merges" not in variants:
        exact = merge(original, fashion.X28).model
        for label, model in (("original", original), ("exact merges", exact)):
            variants[label] = {
                **_structure(model, macs0),
                **fashion.test_metrics(model),
                "rknn": _rknn_metrics(model),
            }
            print(key, label, f"{variants[label]['top1']:.2f}", flush=True)
        fashion.save_module(exact, WORK / key / "exact.pt")
        save()
    for seed in SEEDS:
        run_key = f"{key}/{APPROX}/{seed}"
        if run_key in res["runs"]:
            continue
        start = time.perf_counter()
        approx = merge(original, fashion.X28, (*EXACT_DEFAULT, *APPROXIMATE)).model
        variants.setdefault(APPROX, _structure(approx, macs0))
        before = fashion.test_metrics(approx)["top1"]
        fashion.recover(approx, original, RECOVERY_EPOCHS, seed)
        res["runs"][run_key] = {
            **fashion.test_metrics(approx),
            "before_recovery": before,
            "rknn": _rknn_metrics(approx),
            "seconds": time.perf_counter() - start,
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
        if seed == 0:
            fashion.save_module(approx, WORK / key / "approx_s0.pt")
        print(key, APPROX, seed, f"{res['runs'][run_key]['top1']:.2f}", flush=True)
        save()


def measure_latency(key: str, res: dict[str, Any]) -> None:
    """Original, exact and seed 0's recovered approximate model timed in turns."""
    original, _ = fashion.reference(key)
    models = [
        original,
        torch.load(WORK / key / "exact.pt", weights_only=False),
        torch.load(WORK / key / "approx_s0.pt", weights_only=False),
    ]
    small = onnx_latencies_ms(models, fashion.X28)
    large = onnx_latencies_ms(models, fashion.X224, runs=20)
    res["models"][key]["latency"] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "28": [t / small[0] for t in small],
        "224": [t / large[0] for t in large],
    }
    atomic_write_json(RESULTS, res)


def run() -> None:
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    torch.set_num_threads(2)
    for key in MODELS:
        run_model(key, res)
    for key in MODELS:
        measure_latency(key, res)
    write(res)


def _rknn_cell(per: dict[int, dict[str, Any]]) -> str:
    return f"{np.mean([v['rknn']['top1'] for v in per.values()]):.2f}"


def write(res: dict[str, Any]) -> None:
    rows = []
    reading = []
    paid: dict[str, bool] = {}
    for key, label in MODELS.items():
        rec = res.get("models", {}).get(key)
        if not rec:
            continue
        lat = rec.get("latency", {})
        variants = rec.get("variants", {})
        per = seed_runs(res["runs"], f"{key}/{APPROX}")
        for i, name in enumerate(("original", "exact merges", APPROX)):
            v = variants.get(name)
            if v is None or (name == APPROX and not per):
                continue
            if name == APPROX:
                mean, sd, n, half = seed_stats(
                    {str(s): {"top1": r["top1"], "ci": [r["top1_ci_low"], r["top1_ci_high"]]}
                     for s, r in per.items()}
                )  # fmt: skip
                spread = f" ± {sd:.2f}" if n > 1 else ""
                top1 = f"{mean:.2f}{spread} (n={n}, CI ±{half:.2f})"
                before = f"{np.mean([r['before_recovery'] for r in per.values()]):.2f}"
                rknn = _rknn_cell(per)
            else:
                top1, before, rknn = f"{v['top1']:.2f}", "-", f"{v['rknn']['top1']:.2f}"
            rows.append(
                [
                    label,
                    name,
                    str(v["layers"]),
                    str(v["onnx_nodes"]),
                    f"{v['macs']:.3f}",
                    before,
                    top1,
                    rknn,
                    f"{lat['28'][i]:.3f}" if lat else "-",
                    f"{lat['224'][i]:.3f}" if lat else "-",
                ]
            )
        if per and lat and "original" in variants:
            ap = variants[APPROX]
            mean = float(np.mean([r["top1"] for r in per.values()]))
            loss = mean - variants["original"]["top1"]
            pays = lat["28"][2] < 0.95 and loss > -1.0
            paid[label] = pays
            reading.append(
                f"- {label}: exact merges give {variants['exact merges']['layers']} layers "
                f"(from {variants['original']['layers']}) and test top-1 "
                f"{variants['exact merges']['top1'] - variants['original']['top1']:+.2f}, at "
                f"{lat['28'][1]:.2f}x latency (ONNX Runtime fuses Conv+BN by itself, so "
                f"folding buys little there); exact + approximate: {ap['macs']:.2f}x MACs, "
                f"{lat['28'][2]:.2f}x (28 px) / {lat['224'][2]:.2f}x (224 px) latency, test "
                f"top-1 {loss:+.2f} after recovery: on this runtime it "
                f"{'pays off' if pays else 'does not pay off'}."
            )
    if len(paid) > 1 and len(set(paid.values())) > 1:
        yes = ", ".join(k for k, v in paid.items() if v)
        no = ", ".join(k for k, v in paid.items() if not v)
        reading.append(
            "- `build`'s merge stage applies the exact merges only; the approximate ones are "
            f"opt-in (`approximate: true`): they paid off on the {yes} model and not on the "
            f"{no} one, so whether they do is the model's question, not a default's."
        )
    header = [
        "model",
        "variant",
        "layers",
        "ONNX nodes",
        "MACs",
        "top-1 before recovery",
        "test top-1 %",
        "RKNN sim top-1 %",
        "latency 28px",
        "latency 224px",
    ]
    body = (
        f"Machine: {machine()}; torch {torch.__version__}, 2 threads. Each model trained once "
        "on Fashion-MNIST (10 epochs, best epoch on val). Exact merges change no function "
        "(BatchNorm into the conv, ReLU/pool order); approximate merges: streamline_pool "
        "(the pool's stride folded into the conv before it), pool_branch_to_conv and "
        "drop_small_branch (inception branches), then recovery: "
        f"{RECOVERY_EPOCHS} epochs of CE + KD against the original, SGD lr 0.01, best epoch "
        f"on val; seeds {', '.join(map(str, SEEDS))} (n runs, mean ± sd). Top-1 on the "
        "10,000 test images; the RKNN simulator runs the rk3588 INT8 file (RKNN's own "
        "calibration) on the same images (the recovered row: mean over seeds). Latency: "
        "ONNX Runtime p50 as a ratio to the original, 1 thread, batch 1, the three "
        "models timed in turns; the simulator gives no timing. Written by "
        "`python -m benchmarks.merge` (runs in benchmarks/results/merge.json).\n\n"
        + table(rows, header)
        + ("\n\nReading (computed from the rows above):\n" + "\n".join(reading) if reading else "")
    )
    write_section("Layer merging: exact and DeepRebirth merges", body)


if __name__ == "__main__":
    run()
