"""Issue #14 (part 4): quantization on Fashion-MNIST. The ResNet-8 reference
(benchmarks/fashion.py) and the same model pruned to 50% of its MACs (L1, widths aligned
to 16, what `build` does; 2 epochs CE + KD, seed 0): ONNX Runtime's static PTQ, and
edgecompress QAT down the ladder 8 -> 6 -> 4 weight bits (each rung 1 epoch of CE + KD
against the float model over a seeded fifth of the training images, best epoch on val),
each rung exported as the INT8 QDQ file `build` writes. Top-1 on the 10,000 test images
in ONNX Runtime and in the RKNN simulator (rk3588: RKNN's own calibration for the float
model, the QDQ file's trained ranges for QAT), seeds 0, 1, 2 (the seed picks the 100
calibration images and the QAT subset and order). One latency pass at the end: each
model's files timed in turns with its FP32 ONNX (ONNX Runtime, 1 thread, batch 1), at
28x28 and 224x224.

Results accumulate in benchmarks/results/quantize.json: an interrupted run resumes,
seed 0 of every row first.

    python -m benchmarks.quantize
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import edgecompress as ec
from benchmarks import fashion
from benchmarks.common import machine, seed_runs, seed_stats, write_section
from edgecompress.calibration.fashion_mnist import FASHION_SPEC, default_cache
from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.onnx import export_onnx, run_onnx
from edgecompress.exporters.qdq import export_qat_onnx
from edgecompress.exporters.rknn import convert_rknn
from edgecompress.io import atomic_write_json
from edgecompress.measure import count_macs
from edgecompress.quantize.fake import prepare_qat
from edgecompress.quantize.ladder import Rung, run_ladder
from edgecompress.quantize.onnx_qdq import integer_ops, quantize_qdq, runs_in_integer
from edgecompress.report.markdown import table
from edgecompress.timing import interleaved_p50

SEEDS = (0, 1, 2)
LADDER = (8, 6, 4)
QAT_LR = 0.002
SUBSET = 11_000  # training images per QAT epoch (a fifth), drawn by the seed
CALIBRATION = 100
REFERENCE = "resnet"
MODELS = {"resnet": "ResNet-8", "pruned": "ResNet-8 pruned to 50% MACs"}
RESULTS = Path(__file__).resolve().parent / "results" / "quantize.json"
WORK = default_cache() / "quantize"
PTQ = "PTQ INT8 (ONNX Runtime MinMax)"
ALWAYS_TRAINED = "always_trained"  # QAT runs measured when a rung kept its trained epoch


def _rung(bits: int) -> str:
    return f"QAT W{bits}A8"


def _pruned(reference: nn.Module, res: dict[str, Any]) -> nn.Module:
    """The reference pruned to 50% MACs (aligned to 16) and recovered; cached."""
    path = WORK / "pruned.pt"
    if path.exists() and "pruned" in res.get("models", {}):
        return torch.load(path, weights_only=False).eval()
    pruned, _ = ec.prune(reference, fashion.X28, keep=0.5, align=16, progress=False)
    fashion.recover(pruned, reference, epochs=2, seed=0)
    fashion.save_module(pruned, path)
    macs, params = count_macs(pruned, fashion.X28)
    res.setdefault("models", {})["pruned"] = {
        **fashion.test_metrics(pruned),
        "macs": macs,
        "params": params,
    }
    return pruned.eval()


def _subset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion.train_arrays()
    idx = np.sort(np.random.default_rng(seed).choice(len(x), SUBSET, replace=False))
    return x[idx], y[idx]


def _onnx_metrics(path: Path) -> dict[str, float]:
    x, y = fashion.test()
    logits = np.concatenate([run_onnx(path, x[i : i + 500])[0] for i in range(0, len(x), 500)])
    return classification_metrics(logits, y)


def _rknn_metrics(path: Path, calib: np.ndarray, quantize: bool) -> dict[str, float]:
    b = fashion.bundle()
    out = convert_rknn(
        path,
        path.with_suffix(".rknn"),
        FASHION_SPEC,
        "rk3588",
        list(calib),
        b.test_prepared,
        quantize=quantize,
        progress=False,
    )
    return classification_metrics(out.outputs[0].reshape(len(b.test_labels), -1), b.test_labels)


def _files(key: str, seed: int) -> Path:
    return WORK / key / f"s{seed}"


def run_seed(key: str, model: nn.Module, seed: int, res: dict[str, Any]) -> None:
    runs = res["runs"]
    prepared, calib = fashion.calibration(seed, CALIBRATION)
    folder = _files(key, seed)
    folder.mkdir(parents=True, exist_ok=True)
    fp = folder / "fp32.onnx"
    export_onnx(model, fashion.X28, fp)

    def record(variant: str, metrics: dict[str, Any]) -> None:
        runs[f"{key}/{variant}/{seed}"] = {**metrics, "when": time.strftime("%Y-%m-%d %H:%M")}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(RESULTS, res)
        print(key, variant, seed, f"{metrics['top1']:.2f}", flush=True)

    if f"{key}/FP32/{seed}" not in runs:
        m: dict[str, Any] = dict(_onnx_metrics(fp))
        m["rknn"] = _rknn_metrics(fp, prepared, quantize=True)
        record("FP32", m)
    if f"{key}/{PTQ}/{seed}" not in runs:
        ptq = quantize_qdq(fp, folder / "ptq.onnx", calib)
        m = dict(_onnx_metrics(ptq))
        m["integer"] = runs_in_integer(integer_ops(ptq))
        record(PTQ, m)
    if all(f"{key}/{_rung(b)}/{seed}" in runs for b in LADDER):
        return
    batches = [torch.from_numpy(calib[i : i + 50]) for i in range(0, len(calib), 50)]
    qat = prepare_qat(model, fashion.X28, w_bits=LADDER[0], calibration=batches)
    teacher = copy.deepcopy(model).eval()
    start = time.perf_counter()
    for bits in LADDER:  # rungs build on each other: a partial ladder reruns from the top
        (rung,) = run_ladder(
            qat,
            teacher,
            _subset(seed),
            fashion.val(),
            [Rung(w_bits=bits, epochs=1)],
            lr=QAT_LR,
            progress=False,
            seed=seed,
        )
        path = export_qat_onnx(qat, fashion.X28, calib, folder / f"qat_w{bits}.onnx")
        m = dict(_onnx_metrics(path))
        m["integer"] = runs_in_integer(integer_ops(path))
        m["rknn"] = _rknn_metrics(path, prepared, quantize=False)
        m["seconds"] = time.perf_counter() - start
        m["val_top1"], m["kept_start"] = rung.val_top1, rung.kept_start
        record(_rung(bits), m)
        if bits == LADDER[0]:
            fashion.save_module(qat, folder / "qat_w8.pt")


def _set_aside_always_trained(res: dict[str, Any]) -> None:
    """QAT runs from before a rung could keep its starting point (they have no
    ``kept_start``) move to ``always_trained``: shown beside the new ones, not mixed in."""
    old = {k: v for k, v in res["runs"].items() if "/QAT " in k and "kept_start" not in v}
    res.setdefault(ALWAYS_TRAINED, {}).update(old)
    for k in old:
        del res["runs"][k]


def measure_latency(key: str, model: nn.Module, res: dict[str, Any]) -> None:
    """FP32, PTQ and each QAT rung's file (seed 0) timed in turns, at 28 and 224 px."""
    folder = _files(key, 0)
    calib = fashion.calibration(0, CALIBRATION)[1]
    row: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        big = torch.nn.functional.interpolate(
            torch.from_numpy(calib[:8]), size=(224, 224), mode="bilinear"
        ).numpy()
        fp224 = tmp / "fp224.onnx"
        export_onnx(model, fashion.X224, fp224)
        ptq224 = quantize_qdq(fp224, tmp / "ptq224.onnx", big)
        qat = torch.load(folder / "qat_w8.pt", weights_only=False)
        qat224 = export_qat_onnx(qat, fashion.X224, big, tmp / "qat224.onnx")
        small = [folder / "fp32.onnx", folder / "ptq.onnx"] + [
            folder / f"qat_w{b}.onnx" for b in LADDER
        ]
        p28 = interleaved_p50(small, 3, threads=1, warmup=20, runs=100, min_time_s=0.0)
        p224 = interleaved_p50([fp224, ptq224, qat224], 3, threads=1, warmup=3, runs=20)
    names = ["FP32", PTQ] + [_rung(b) for b in LADDER]
    for i, name in enumerate(names):
        row[name] = {"latency_28": p28[i] / p28[0], "bytes": small[i].stat().st_size}
    for i, name in enumerate(["FP32", PTQ, _rung(LADDER[0])]):
        row[name]["latency_224"] = p224[i] / p224[0]
    res.setdefault("latency", {})[key] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "rows": row,
    }
    atomic_write_json(RESULTS, res)


def run() -> None:
    reference, info, res = fashion.resume(REFERENCE, RESULTS, "quantize")
    res.setdefault("models", {})["resnet"] = {
        "top1": info["test_top1"],
        **dict(zip(("macs", "params"), count_macs(reference, fashion.X28), strict=True)),
    }
    torch.set_num_threads(2)
    _set_aside_always_trained(res)
    models = {"resnet": reference, "pruned": _pruned(reference, res)}
    for seed in SEEDS:
        for key, model in models.items():
            run_seed(key, model, seed, res)
            write(res)
    for key, model in models.items():
        measure_latency(key, model, res)
    write(res)


def _cell(per: dict[int, dict[str, Any]], field: str | None = None) -> tuple[str, float]:
    pick = {str(s): (v[field] if field else v) for s, v in per.items()}
    mean, sd, n, half = seed_stats(
        {s: {"top1": v["top1"], "ci": [v["top1_ci_low"], v["top1_ci_high"]]}
         for s, v in pick.items()}
    )  # fmt: skip
    sd_text = f" ± {sd:.2f}" if n > 1 else ""
    return f"{mean:.2f}{sd_text} (n={n}, CI ±{half:.2f})", mean


def write(res: dict[str, Any]) -> None:
    rows = []
    means: dict[tuple[str, str], float] = {}
    for key, label in MODELS.items():
        lat = res.get("latency", {}).get(key, {}).get("rows", {})
        fp32 = None
        for variant in ["FP32", PTQ] + [_rung(b) for b in LADDER]:
            per = seed_runs(res["runs"], f"{key}/{variant}")
            if not per:
                continue
            ort, mean = _cell(per)
            means[(key, variant)] = mean
            fp32 = mean if variant == "FP32" else fp32
            rknn = _cell(per, "rknn")[0] if all("rknn" in v for v in per.values()) else "-"
            t = lat.get(variant, {})
            if variant.startswith("QAT") and all("kept_start" in v for v in per.values()):
                kept = sum(v["kept_start"] for v in per.values())
                variant = f"{variant} (start kept in {kept} of {len(per)})"
            rows.append(
                [
                    label,
                    variant,
                    ort,
                    f"{mean - fp32:+.2f}" if fp32 is not None and variant != "FP32" else "-",
                    rknn,
                    f"{t['bytes'] / 1024:.0f} KiB" if t else "-",
                    f"{t['latency_28']:.3f}" if t else "-",
                    f"{t['latency_224']:.3f}" if "latency_224" in t else "-",
                    str(per[min(per)].get("integer", "-")),
                ]
            )
        for bits in LADDER:  # the same rungs measured when training was always kept
            variant = _rung(bits)
            per = seed_runs(res.get(ALWAYS_TRAINED, {}), f"{key}/{variant}")
            if per and fp32 is not None:
                ort, mean = _cell(per)
                means[(key, f"{variant}, trained epoch always kept")] = mean
                rows.append(
                    [
                        label,
                        f"{variant}, trained epoch always kept",
                        ort,
                        f"{mean - fp32:+.2f}",
                        _cell(per, "rknn")[0],
                        "-",
                        "-",
                        "-",
                        str(per[min(per)].get("integer", "-")),
                    ]
                )
    header = [
        "model",
        "variant",
        "ONNX Runtime top-1 % (mean ± sd)",
        "vs FP32",
        "RKNN simulator top-1 %",
        "size",
        "latency 28px",
        "latency 224px",
        "integer kernels",
    ]
    models = res.get("models", {})
    ref, pruned = models.get("resnet", {}), models.get("pruned", {})
    body = (
        f"Machine: {machine()}; torch {torch.__version__}. The Fashion-MNIST ResNet-8 "
        f"reference of the peers section (test top-1 {ref.get('top1', float('nan')):.2f}%) "
        "and the same model pruned to 50% of its MACs (L1, widths aligned to 16, 2 epochs "
        f"CE + KD: {pruned.get('top1', float('nan')):.2f}%). PTQ: ONNX Runtime's static "
        f"QDQ quantization (MinMax) on {CALIBRATION} class-balanced train images picked by "
        "the seed. QAT: BatchNorm folded, LSQ scales initialised on the same images, then "
        f"each rung 1 epoch of CE + KD against the float model over {SUBSET:,} training "
        f"images drawn by the seed (lr {QAT_LR}, best epoch on val), rungs in order "
        f"{' -> '.join(map(str, LADDER))} weight bits, each rung's weights stored as int8 "
        "values within its range (what the CPU and the NPU execute), exported as the "
        "INT8 QDQ file `build` writes. Each rung keeps the best on val of its starting "
        "point (the previous rung's weights at the new width: PTQ at that width) and its "
        "trained epoch, as `build` does; the rows marked 'trained epoch always kept' were "
        "measured before that choice existed. RKNN column: the rk3588 simulator on the same "
        "10,000 test images (float model: RKNN's own INT8 calibration on the seed's "
        "images; QAT rows: the QDQ file with its trained ranges). Top-1 is mean ± sd over "
        f"seeds {', '.join(map(str, SEEDS))} (n runs; CI: one run's 95% Wilson "
        "half-interval). Size and latency: seed 0's files, ONNX Runtime p50 as a ratio to "
        "the same model's FP32 ONNX, 1 thread, batch 1, all timed in turns; at 224x224 "
        "the same widths re-exported (FP32, PTQ and QAT W8). Written by `python -m "
        "benchmarks.quantize` (runs in benchmarks/results/quantize.json).\n\n"
        + table(rows, header)
        + _reading(means)
    )
    write_section("Quantization: PTQ, QAT and the bit-width ladder", body)


def _reading(means: dict[tuple[str, str], float]) -> str:
    lines = []
    for key, label in MODELS.items():
        fp32 = means.get((key, "FP32"))
        got = {v: means[(key, v)] for (k, v) in means if k == key and v != "FP32"}
        if fp32 is None or not got:
            continue
        parts = ", ".join(f"{v} {m - fp32:+.2f}" for v, m in got.items())
        lines.append(f"- {label} (FP32 {fp32:.2f}): {parts} points (mean over seeds).")
    return "\n\nComputed from the rows above:\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    run()
