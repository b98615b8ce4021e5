"""Issue #34: what `edgecompress build` ships on this machine, against the one-line peers.

For the two Fashion-MNIST references (benchmarks/fashion.py: ResNet-8 and MobileNetV2,
28x28) and seeds 0, 1, 2, as a user runs them:

- `edgecompress build ref.pt --recipe examples/fashion.yaml --target host --probe
  --seed N` (the default build: the target profile this machine measured);
- the same with `--speedup 5 --max-accuracy-drop 1` (a goal build: a measured plan picks
  the MAC budget, attempts are chosen on val);
- ONNX Runtime's static PTQ of the original (quant_pre_process, then quantize_static:
  QDQ, uint8 activations, int8 per-channel weights, MinMax on 100 train images picked
  by the seed) — one call, the bar the training must beat;
- Torch-Pruning's GroupNormPruner (its regularised epoch first) to the default build's
  MAC budget, recovered with the default build's own distillation (10 epochs CE + KD,
  seeded), then that ORT PTQ.

Accuracy: top-1 on the 10,000 test images of each deployed file in ONNX Runtime (nothing
chose anything on test). Latency: one pass per model and seed, right after that seed's four
runs, on the machine that built them: the FP32 original and the four files timed in 5
interleaved rounds through `ec.bench` (the on-device agent, batch 1, 1 thread), each file's
fastest round kept, so each speed-up is a ratio measured in one run. Runs are grouped by
CPU class (ONNX Runtime picks its INT8 kernels by instruction set, and the build measures
the machine it runs on: a run's numbers mean something only beside runs of its class).
Results accumulate in benchmarks/results/fashion_pipeline.json: a stopped run resumes where
it was (a seed whose files went before its latency pass is built again).

    python -m benchmarks.fashion_pipeline                 # both models
    python -m benchmarks.fashion_pipeline resnet          # one
    python -m benchmarks.fashion_pipeline --seeds 0       # seed 0 of each first
    python -m benchmarks.fashion_pipeline --render        # the section from the results
    python -m benchmarks.fashion_pipeline --latency       # the passes again, files still here
    python -m benchmarks.fashion_pipeline mobilenet_v2 --no-latency   # builds, no timing
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import edgecompress as ec
from benchmarks import fashion
from benchmarks.common import cpu_flags, machine, stamp, write_section
from edgecompress.calibration.fashion_mnist import default_cache
from edgecompress.evaluate import accuracy_interval
from edgecompress.io import atomic_write_json
from edgecompress.report.markdown import table

KEYS = ("resnet", "mobilenet_v2")
SEEDS = (0, 1, 2)
SPEEDUP, MAX_DROP = 5.0, 1.0
RESULTS = Path(
    os.environ.get("FASHION_PIPELINE_RESULTS")  # a second process beside the first
    or Path(__file__).resolve().parent / "results" / "fashion_pipeline.json"
)
RECIPE = Path(__file__).resolve().parent.parent / "examples" / "fashion.yaml"
WORK = default_cache() / "fashion_pipeline"
TITLE = "Fashion-MNIST by CPU class: the default build and --speedup 5 against the peers"
METHODS = {
    "ort_ptq": "ONNX Runtime PTQ (one call)",
    "tp_ptq": "Torch-Pruning GroupNorm + 10 epochs + ORT PTQ",
    "default": "edgecompress build (default)",
    "speedup": "edgecompress build --speedup 5 --max-accuracy-drop 1",
}


def machine_class(flags: str) -> str:
    """The CPU class of a machine with these ISA flags: what decides ONNX Runtime's INT8
    kernels (VNNI or not) and its FP32 blocking (AVX-512 or AVX2)."""
    f = set(flags.split())
    if f & {"avx512_vnni", "avx_vnni"}:
        return "x86-64 with VNNI" + (" (AVX-512)" if "avx512f" in f else "")
    if "avx512f" in f:
        return "x86-64 AVX-512, no VNNI"
    if "avx2" in f:
        return "x86-64 AVX2, no VNNI"
    return flags or "unknown CPU"


def load_results() -> dict[str, Any]:
    """The results so far, by CPU class (results written before runs were grouped so are
    put in the class their runs' CPU flags name, each model's one pass under each seed)."""
    if not RESULTS.exists():
        return {"version": 2, "classes": {}}
    res = dict(json.loads(RESULTS.read_text()))
    if res.get("version") == 2:
        return res
    classes: dict[str, Any] = {}
    for key, runs in res.get("runs", {}).items():
        flags = {r["cpu_flags"] for r in runs.values()}
        if len(flags) != 1:
            raise SystemExit(f"{RESULTS}: the {key} runs ran on CPUs of different flags")
        group = classes.setdefault(machine_class(flags.pop()), _empty())
        group["runs"][key] = runs
        group["fp32"][key] = res["fp32"][key]
        lat = (res.get("latency") or {}).get(key)
        if lat:
            seeds = {t.split("/")[1] for t in runs}
            group["latency"][key] = {s: lat for s in sorted(seeds)}
    return {"version": 2, "classes": classes}


def _empty() -> dict[str, Any]:
    return {"fp32": {}, "runs": {}, "latency": {}}


def cli_build(
    key: str, out: Path, seed: int | None = None, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any], float]:
    """`edgecompress build` of reference ``key`` from the command line with no stages (the
    host target's defaults) into ``out``: its report and the seconds it took."""
    fashion.reference(key)  # trained and cached if missing
    weights = default_cache() / "fashion_refs" / f"{key}.pt"
    cmd = [sys.executable, "-m", "edgecompress.cli", "build", str(weights), "--probe"]
    cmd += ["--arch", fashion.REFERENCES[key].arch, "--recipe", str(RECIPE), "--target", "host"]
    cmd += ["--data", str(fashion.bundle().root), "-o", str(out), "--force", "--quiet"]
    cmd += [*(["--seed", str(seed)] if seed is not None else []), *extra]
    start = time.perf_counter()
    code = subprocess.run(cmd).returncode
    if code not in (0, 1):  # 1: a goal build whose goals no attempt met (still a result)
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {code}")
    return json.loads((out / "report.json").read_text()), time.perf_counter() - start


def deployed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary row of the file a build deploys (its last deployed artifact)."""
    return [r for r in rows if r["kind"] == "artifact" and r.get("deployed", True)][-1]


def _ec_run(key: str, seed: int, kind: str) -> dict[str, Any]:
    out = WORK / key / kind / f"s{seed}"
    extra = (
        ("--speedup", str(SPEEDUP), "--max-accuracy-drop", str(MAX_DROP))
        if kind == "speedup"
        else ()
    )
    report, seconds = cli_build(key, out, seed, extra)
    row = deployed(report["summary"]["rows"])
    models = report["models"]
    goals = report.get("goals") or {}
    return {
        "file": str(out / report["deployment"]["file"]),
        "form": report["deployment"]["form"],
        "top1": row["top1"],
        "ci": row["top1_ci"],
        "macs": row["macs"] / models[0]["macs"],
        "val_drop": models[0]["val_top1"]["value"] - report["deployment"]["val_top1"],
        "speedup_in_build": row["speedup"],
        "seconds": seconds,
        "profile": report["target"].get("measured"),
        "goals": {k: goals.get(k) for k in ("met", "chosen_attempt", "attempts", "plan")},
    }


def _fp32_onnx(key: str) -> Path:
    """The reference as FP32 ONNX, as `ec.export` writes it for the host."""
    model, _ = fashion.reference(key)
    folder = WORK / key / "fp32"
    return Path(ec.export(model, fashion.X28, folder, target="host")[0].path)


def _ort_ptq(fp32: Path, out: Path, seed: int) -> Path:
    """ONNX Runtime's static PTQ as its documentation gives it for an x86 CPU."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = fashion.calibration(seed)[1]
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {name: x}

    out.parent.mkdir(parents=True, exist_ok=True)
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def _test_top1(path: Path) -> tuple[float, list[float]]:
    x, y = fashion.test()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate(
        [sess.run(None, {name: x[i : i + 1]})[0].argmax(1) for i in range(len(x))]
    )
    correct = int((pred == y).sum())
    return correct / len(y) * 100, list(accuracy_interval(correct, len(y)))


def _tp_ptq(key: str, seed: int, macs: float) -> dict[str, Any]:
    """Torch-Pruning's GroupNormPruner to ``macs`` of the MACs, the default build's own
    recovery (10 epochs CE + KD against the reference, seeded), then ORT PTQ."""
    import copy

    import torch_pruning as tp

    from benchmarks.peers import _classifier, _regularised_epoch

    reference, _ = fashion.reference(key)
    model = copy.deepcopy(reference)
    base = tp.utils.count_ops_and_params(model, fashion.X28)[0]
    pruner = tp.pruner.GroupNormPruner(
        model,
        fashion.X28,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.95,
        iterative_steps=200,
        ignored_layers=_classifier(model),
        reg=5e-4,
    )
    _regularised_epoch(model, pruner)
    for _ in range(200):
        pruner.step()
        if tp.utils.count_ops_and_params(model, fashion.X28)[0] <= macs * base:
            break
    got = tp.utils.count_ops_and_params(model, fashion.X28)[0] / base
    start = time.perf_counter()
    ec.distill(
        model,
        reference,
        fashion.train_arrays(),
        fashion.val(),
        ec.FitConfig(epochs=10, lr=0.01, seed=seed),
        progress=False,
    )
    folder = WORK / key / "tp_ptq" / f"s{seed}"
    fp32 = Path(ec.export(model.eval(), fashion.X28, folder, target="host")[0].path)
    path = _ort_ptq(fp32, folder / "model.ptq.onnx", seed)
    top1, ci = _test_top1(path)
    return {
        "file": str(path),
        "top1": top1,
        "ci": ci,
        "macs": got,
        "seconds": time.perf_counter() - start,
    }


def run_model(
    key: str, group: dict[str, Any], res: dict[str, Any], seeds: tuple[int, ...], latency: bool
) -> None:
    """Seeds ``seeds`` of ``key`` into ``group`` (this machine's class), each seed's latency
    pass after its runs; ``res`` is written after every step."""
    runs = group["runs"].setdefault(key, {})
    fp32 = _fp32_onnx(key)
    top1 = _test_top1(fp32)[0]
    recorded = group["fp32"].get(key, {}).get("top1")
    if runs and recorded is not None and abs(recorded - top1) > 1e-9:
        raise SystemExit(
            f"fashion_pipeline: the {key} reference scores {top1:.2f}% on test, its recorded "
            f"runs used one at {recorded:.2f}% (retrained?): move {RESULTS} aside to rerun"
        )
    group["fp32"][key] = {"file": str(fp32), "top1": top1}
    for seed in seeds:
        passes = group["latency"].setdefault(key, {})
        mine = [t for t in runs if t.endswith(f"/{seed}")]
        if str(seed) not in passes:  # runs whose files went before their pass: again
            for tag in [t for t in mine if not Path(runs[t]["file"]).is_file()]:
                print(f"== {key} {tag}: its file is gone before its latency pass: again")
                del runs[tag]
        fresh = False
        for kind in ("default", "speedup", "ort_ptq", "tp_ptq"):
            tag = f"{kind}/{seed}"
            if tag in runs:
                continue
            print(f"== {key} {tag}", flush=True)
            if kind in ("default", "speedup"):
                runs[tag] = _ec_run(key, seed, kind)
            elif kind == "ort_ptq":
                path = _ort_ptq(fp32, WORK / key / "ort_ptq" / f"s{seed}" / "model.ptq.onnx", seed)
                top1, ci = _test_top1(path)
                runs[tag] = {"file": str(path), "top1": top1, "ci": ci, "macs": 1.0}
            else:
                runs[tag] = _tp_ptq(key, seed, runs[f"default/{seed}"]["macs"])
            runs[tag].update(stamp())
            fresh = True
            save(res)
        if latency and (fresh or str(seed) not in passes):
            measure_latency(key, group, seed)
            save(res)


def save(res: dict[str, Any]) -> None:
    atomic_write_json(RESULTS, res)
    write_section(TITLE, section(res), headline(res), oldest(res))


def oldest(res: dict[str, Any]) -> dict[str, str] | None:
    """The stamp of the earliest run or latency pass: what the section is as old as."""
    stamps = [
        r
        for group in res["classes"].values()
        for part in ("runs", "latency")
        for by_model in group[part].values()
        for r in by_model.values()
        if "when" in r
    ]
    if not stamps:
        return None
    first = min(stamps, key=lambda r: r["when"])
    return {k: first[k] for k in ("commit", "when", "machine", "cpu_flags")}


def measure_latency(key: str, group: dict[str, Any], seed: int, rounds: int = 5) -> None:
    """The FP32 original and seed ``seed``'s files of ``key``, in turns, through the agent."""
    runs = group["runs"][key]
    files = {"fp32": Path(group["fp32"][key]["file"])}
    files.update({t: Path(r["file"]) for t, r in sorted(runs.items()) if t.endswith(f"/{seed}")})
    best = {tag: float("inf") for tag in files}
    for _ in range(rounds):
        for tag, path in files.items():
            r = ec.bench(path, runs=100, warmup=10, min_time_s=0.3, sensors=())
            best[tag] = min(best[tag], r["latency"]["p50_ms"])
    group["latency"].setdefault(key, {})[str(seed)] = {
        "p50_ms": best,
        "machine": machine(),
        **stamp(),
    }


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{np.mean(values):.2f} ± {float(np.std(values, ddof=1)):.2f} (n={len(values)})"


def _rows(key: str, group: dict[str, Any]) -> tuple[list[list[str]], dict[str, dict[str, float]]]:
    runs = group["runs"].get(key, {})
    passes = group["latency"].get(key, {})
    base_top1 = group["fp32"][key]["top1"]
    rows, means = [], {}
    for kind, label in METHODS.items():
        got = {int(t.split("/")[1]): r for t, r in runs.items() if t.split("/")[0] == kind}
        if not got:
            continue
        tops = [r["top1"] for r in got.values()]
        ups = [
            p["fp32"] / p[f"{kind}/{s}"]
            for s in got
            if f"{kind}/{s}" in (p := passes.get(str(s), {}).get("p50_ms", {}))
        ]
        means[kind] = {
            "top1": float(np.mean(tops)),
            "speedup": float(np.mean(ups)) if ups else float("nan"),
        }
        rows.append(
            [
                label,
                _mean_sd(tops),
                f"{np.mean(tops) - base_top1:+.2f}",
                f"{np.mean([r['macs'] for r in got.values()]):.3f}",
                _mean_sd(ups) + "x" if ups else "-",
                ", ".join(sorted({r.get("form", "ORT PTQ INT8") for r in got.values()})),
            ]
        )
    return rows, means


def section(res: dict[str, Any]) -> str:
    parts = [
        "Written by `python -m benchmarks.fashion_pipeline` (results in "
        "benchmarks/results/fashion_pipeline.json); every run and latency pass carries "
        "the commit and machine it ran on. Test top-1 of the deployed file in ONNX Runtime "
        "on the 10,000 test images, mean ± sd over the seeds run (n); speed-up: p50 of the "
        "FP32 original over the file's, both timed in the pass that followed the file's seed "
        "(5 interleaved rounds through `ec.bench`, each file's fastest round). Runs are "
        "grouped by CPU class: nothing is compared across classes. "
        + __doc__.split("\n\n")[1].replace("\n", " ")
    ]
    for cls, group in sorted(res["classes"].items()):
        parts.append(f"### {cls}")
        ran = sorted({int(t.split("/")[1]) for runs in group["runs"].values() for t in runs})
        if ran != list(SEEDS) or set(group["runs"]) != set(KEYS):
            parts.append(
                f"**Run so far on this class: {', '.join(group['runs']) or 'nothing'}, seed(s) "
                f"{', '.join(map(str, ran))} of {', '.join(map(str, SEEDS))}** "
                "(`python -m benchmarks.fashion_pipeline` on such a machine runs the rest): "
                "a single run's spread is its CI."
            )
        commits = _commits(group)
        if commits:
            parts.append(commits)
        for key in KEYS:
            if key in group["runs"]:
                parts.append(_model_part(key, group))
    return "\n\n".join(parts)


def _model_part(key: str, group: dict[str, Any]) -> str:
    rows, means = _rows(key, group)
    ref = fashion.REFERENCES[key]
    base = group["fp32"][key]["top1"]
    passes = group["latency"].get(key, {})
    timed = "; ".join(
        f"seed {s}: FP32 p50 {p['p50_ms']['fp32']:.3f} ms at {p['commit']} on {p['machine']} "
        f"({p['cpu_flags']})"
        for s, p in sorted(passes.items())
    )
    head = f"FP32 original: test top-1 {base:.2f}%; " + (
        f"latency passes: {timed}" if timed else "latency pass not run yet"
    )
    table_ = table(rows, ["method", "test top-1 %", "vs FP32", "MACs", "speed-up", "deployed form"])
    goals = _goal_lines(means, base) + _goal_builds(group["runs"][key])
    return "\n\n".join([f"#### {ref.name} (`{ref.arch}`)", head, table_, goals])


def _goal_builds(runs: dict[str, Any]) -> str:
    """Each goal build's plan and attempts: where a goal is missed, what broke."""
    lines = []
    for tag, r in sorted(runs.items()):
        g = r.get("goals") or {}
        if not tag.startswith("speedup/") or not g.get("attempts"):
            continue
        plan = g.get("plan") or {}
        tried = "; ".join(
            f"attempt {a['attempt']} keep {a.get('keep', '?')}: {a['speedup'] or 0:.2f}x in "
            f"its build, val -{a['accuracy_drop'] or 0:.2f}"
            + (f" ({', '.join(a['broken'])} missed)" if a["broken"] else " (met)")
            for a in g["attempts"]
        )
        lines.append(
            f"- seed {tag.split('/')[1]}: plan keep {plan.get('keep')} of the MACs "
            f"(predicted {plan.get('predicted_speedup', float('nan')):.2f}x"
            + ("" if plan.get("reached", True) else ", the smallest budget tried")
            + f"); {tried}; deployed attempt {g.get('chosen_attempt')} ({r.get('form')})"
        )
    return ("\n" + "\n".join(lines)) if lines else ""


def headline(res: dict[str, Any]) -> str | None:
    """One line per class and model for the summary on top: the goal build's speed-up and
    ORT PTQ's."""
    parts = []
    for cls, group in sorted(res["classes"].items()):
        for key in KEYS:
            if key not in group["runs"]:
                continue
            means = _rows(key, group)[1]
            s, p = means.get("speedup"), means.get("ort_ptq")
            if not s or not p or s["speedup"] != s["speedup"]:
                continue
            base = group["fp32"][key]["top1"]
            n = sum(1 for t in group["runs"][key] if t.startswith("speedup/"))
            parts.append(
                f"{fashion.REFERENCES[key].name} on {cls}: `--speedup 5` {s['speedup']:.2f}x "
                f"at {s['top1'] - base:+.2f} test points (n={n}), ORT PTQ {p['speedup']:.2f}x "
                f"at {p['top1'] - base:+.2f}"
            )
    return "; ".join(parts) or None


def _goal_lines(means: dict[str, dict[str, float]], base: float) -> str:
    """The issue's goals against these runs: ``--speedup 5`` at most 1 test point below
    the FP32 original, and at least twice the speed-up ORT PTQ alone gives."""
    lines = []
    if "speedup" in means and "ort_ptq" in means:
        s, p = means["speedup"], means["ort_ptq"]
        fast = "met" if s["speedup"] >= SPEEDUP else f"missed by {SPEEDUP - s['speedup']:.2f}x"
        lost = base - s["top1"]
        kept = "met" if lost <= MAX_DROP else f"missed by {lost - MAX_DROP:.2f} points"
        ratio = s["speedup"] / p["speedup"]
        twice = "met" if ratio >= 2 else f"missed by {2 - ratio:.2f}"
        lines.append(
            f"- `--speedup 5`: {s['speedup']:.2f}x (goal ≥ {SPEEDUP:g}x: {fast}) at "
            f"{s['top1']:.2f}%, {-lost:+.2f} against the original (goal ≥ -{MAX_DROP:g}: "
            f"{kept}); ORT PTQ alone {p['speedup']:.2f}x at {p['top1']:.2f}%, so "
            f"{ratio:.2f}x its speed-up (goal ≥ 2: {twice})"
        )
    if "default" in means and "ort_ptq" in means:
        d, p = means["default"], means["ort_ptq"]
        lines.append(
            f"- default build: {d['speedup']:.2f}x at {d['top1']:.2f}% "
            f"({d['top1'] - base:+.2f}) against ORT PTQ's {p['speedup']:.2f}x at "
            f"{p['top1']:.2f}% ({p['top1'] - base:+.2f})"
        )
    return "\n".join(lines)


def _commits(group: dict[str, Any]) -> str:
    """The commits a class's runs and latency passes carry, and whether ``edgecompress/``
    is the same at all of them (a section must come from one code version)."""
    stamps = [r for runs in group["runs"].values() for r in runs.values()]
    stamps += [p for passes in group["latency"].values() for p in passes.values()]
    commits = sorted({str(r.get("commit", "unknown")) for r in stamps})
    if not commits:
        return ""
    clean = [c.removesuffix("+dirty") for c in commits]
    same = all(
        subprocess.run(
            ["git", "diff", "--quiet", clean[0], c, "--", "edgecompress"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
        ).returncode
        == 0
        for c in clean[1:]
    )
    dirty = any(c.endswith("+dirty") for c in commits)
    return f"Runs at commit(s) {', '.join(commits)}: " + (
        "`edgecompress/` is the same at all of them"
        + (
            " (`+dirty`: uncommitted files outside `edgecompress/`; before 2026-12-07 16:10 "
            "the stamp misread its own results file as one)"
            if dirty
            else ""
        )
        if same
        else "**`edgecompress/` differs between them**: rerun the older runs"
    )


def run(keys: list[str], seeds: tuple[int, ...] = SEEDS, latency: bool = True) -> None:
    torch.set_num_threads(2)
    res = load_results()
    group = res["classes"].setdefault(machine_class(cpu_flags()), _empty())
    for key in keys or KEYS:
        run_model(key, group, res, seeds, latency)
    save(res)


def latency_pass() -> None:
    """The passes again (on a quiet machine) for every seed of this machine's class whose
    files are all still here."""
    res = load_results()
    group = res["classes"].get(machine_class(cpu_flags()))
    if group is None:
        raise SystemExit("fashion_pipeline --latency: no runs of this machine's CPU class")
    for key, runs in group["runs"].items():
        for seed in sorted({int(t.split("/")[1]) for t in runs}):
            files = [Path(r["file"]) for t, r in runs.items() if t.endswith(f"/{seed}")]
            if all(f.is_file() for f in files):
                measure_latency(key, group, seed)
            else:
                print(f"{key} seed {seed}: its files are gone; the recorded pass stays")
    save(res)


if __name__ == "__main__":
    args = sys.argv[1:]
    picked = SEEDS
    if "--seeds" in args:
        at = args.index("--seeds")
        picked = tuple(int(s) for s in args[at + 1].split(","))
        del args[at : at + 2]
    unknown = [a for a in args if a not in (*KEYS, "--render", "--latency", "--no-latency")]
    if unknown or set(picked) - set(SEEDS):
        raise SystemExit(
            f"fashion_pipeline: unknown {unknown or sorted(set(picked) - set(SEEDS))}; "
            f"models {', '.join(KEYS)}, seeds {', '.join(map(str, SEEDS))}"
        )
    if args == ["--render"]:  # the section again from the results, nothing run
        save(load_results())
    elif args == ["--latency"]:
        latency_pass()
    else:
        run([a for a in args if a in KEYS], picked, "--no-latency" not in args)
