"""Issue 17, item 4: recovering a pruned detector by distillation. The cached example
detector (``benchmarks.detect_train``) is the teacher; a copy pruned to about 56% of its
MACs (``ec.prune``, L1, channels aligned to 8, the head's last convolutions kept) is
recovered for the same number of epochs by (a) plain fine-tuning on the detection loss
and (b) the detection loss plus FGD on the neck and KL on the head
(:mod:`edgecompress.detect.distill`, its default weights), seeds 0, 1, 2 (the seed sets
the shuffling, the flips and the adapters' initialisation; the pruned start is the same);
then, seed 0 only, (b)'s feature terms alone and its response terms alone.
Each run keeps its best-val epoch; the test split is evaluated once, after.

Every finished run is saved to ``benchmarks/results/detect_distill.json`` at once, so a
stopped benchmark resumes where it was (runs made with other settings are discarded). The
FGD student with the best val mAP@0.5:0.95 is kept for the QAT step:
``<cache>/fashion_detect_pruned_fgd.pt`` (state_dict) and
``<cache>/fashion_detect_pruned_fgd.plan.json`` (the prune plan:
``replay_plan(fashion_detector(), plan)`` rebuilds the architecture, then
``load_state_dict``)."""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_section
from benchmarks.detect_train import CONFIG, trained
from edgecompress.calibration.fashion_mnist import default_cache
from edgecompress.detect.coco import read_coco_splits
from edgecompress.detect.data import DetectionSet
from edgecompress.detect.distill import DetectDistillConfig
from edgecompress.detect.example import ensure_fashion_detect
from edgecompress.detect.model import YoloDetector, fashion_detector
from edgecompress.detect.train import evaluate_detector, train_detector
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.measure import count_macs
from edgecompress.prune.api import prune, replay_plan
from edgecompress.report.markdown import table

RESULTS = Path(__file__).resolve().parent / "results" / "detect_distill.json"
BEST = "fashion_detect_pruned_fgd"
KEEP = 0.58
ALIGN = 8
IGNORE = tuple(f"head.{b}.{i}.2" for b in ("box", "cls") for i in range(3))
SEEDS = (0, 1, 2)
ABLATION_SEEDS = (0,)
# Recovery: the teacher's recipe, shorter, from half its peak lr (the weights are already
# trained) with half an epoch of warm-up. Not tuned; both methods share it.
RECOVER = replace(CONFIG, epochs=10, lr=1e-3, warmup_epochs=0.5, progress=False)
DISTILL = DetectDistillConfig()


@dataclass(frozen=True)
class Method:
    label: str
    distill: DetectDistillConfig | None  # None: no teacher
    ablation: bool = False  # run on ABLATION_SEEDS only, after the others

    @property
    def seeds(self) -> tuple[int, ...]:
        return ABLATION_SEEDS if self.ablation else SEEDS


METHODS = {
    "plain": Method("(a) fine-tuning, detection loss", None),
    "fgd": Method("(b) + FGD + response KD", DISTILL),
    # Which half of (b) does the work (about 5 minutes a run here, so one seed each).
    "fgd_features": Method("(c) + FGD only (ablation)", replace(DISTILL, cls=0, dfl=0), True),
    "kd_response": Method(
        "(d) + response KD only (ablation)",
        replace(DISTILL, alpha=0, beta=0, gamma=0, lam=0),
        True,
    ),
}


def _settings() -> dict[str, Any]:
    train = asdict(RECOVER)
    train.pop("seed")
    train.pop("progress")
    return json.loads(
        json.dumps(
            {
                "teacher": "benchmarks.detect_train",
                "prune": {"keep": KEEP, "align": ALIGN, "ignore": IGNORE, "criterion": "l1"},
                "train": train,
                "methods": {
                    k: asdict(m.distill) if m.distill else None for k, m in METHODS.items()
                },
            },
            default=str,
        )
    )


def _load() -> dict[str, Any]:
    settings = _settings()
    if RESULTS.is_file():
        doc = json.loads(RESULTS.read_text())
        if doc.get("settings") == settings:
            return doc
    return {"settings": settings, "runs": {}}


def _metrics(model: YoloDetector, data: DetectionSet) -> dict[str, float]:
    m = evaluate_detector(model, data, RECOVER.size, RECOVER.post)
    return {"map50": m.map50, "map50_95": m.map50_95}


def _recover(
    method: str, seed: int, start: YoloDetector, teacher: YoloDetector, sets: dict[str, Any]
) -> tuple[YoloDetector, dict[str, Any]]:
    student = copy.deepcopy(start)
    torch.manual_seed(seed)
    res = train_detector(
        student,
        sets["train"],
        sets["val"],
        replace(RECOVER, seed=seed),
        teacher=teacher if METHODS[method].distill is not None else None,
        distill=METHODS[method].distill,
    )
    assert res.best_val is not None
    record = {
        "best_epoch": res.best_epoch,
        "val": {"map50": res.best_val.map50, "map50_95": res.best_val.map50_95},
        "test": _metrics(student, sets["test"]),
        "minutes": res.seconds / 60,
        "history": res.history,
    }
    return student, record


def _keep_best(student: YoloDetector, plan_json: dict[str, Any], key: str, doc: dict) -> None:
    """Save ``student`` (and the plan) to the cache when its val mAP@0.5:0.95 beats the
    FGD student kept so far."""
    best = doc.get("best_fgd")
    val = doc["runs"][key]["val"]["map50_95"]
    if best is not None and doc["runs"][best]["val"]["map50_95"] >= val:
        return
    cache = default_cache()
    weights = cache / f"{BEST}.pt"
    tmp = temp_path_for(weights)
    torch.save(student.state_dict(), tmp)
    tmp.replace(weights)
    atomic_write_json(cache / f"{BEST}.plan.json", plan_json)
    doc["best_fgd"] = key


def _reload_check(start: YoloDetector) -> float:
    """Max abs difference of the head outputs between the kept FGD student and the one
    rebuilt from the cache (plan replayed on a fresh ``fashion_detector``, weights
    loaded), on a random batch."""
    cache = default_cache()
    rebuilt = replay_plan(fashion_detector(), cache / f"{BEST}.plan.json")
    rebuilt.load_state_dict(torch.load(cache / f"{BEST}.pt", weights_only=True))
    kept = copy.deepcopy(start)
    kept.load_state_dict(torch.load(cache / f"{BEST}.pt", weights_only=True))
    x = torch.rand(2, 3, RECOVER.size, RECOVER.size)
    with torch.no_grad():
        a, b = rebuilt.eval()(x), kept.eval()(x)
    return max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))


def _stats(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def run() -> None:
    torch.set_num_threads(1)
    sets = read_coco_splits(ensure_fashion_detect())
    teacher, _ = trained(sets, default_cache())
    example = torch.zeros(1, 3, RECOVER.size, RECOVER.size)
    start, plan = prune(teacher, example, keep=KEEP, align=ALIGN, ignore=IGNORE, progress=False)
    macs = count_macs(teacher, example), count_macs(start, example)
    doc = _load()
    if "reference" not in doc:
        doc["reference"] = {
            "teacher": _metrics(teacher, sets["test"]),
            "pruned": _metrics(start, sets["test"]),
        }
        atomic_write_json(RESULTS, doc)
    # Seed by seed, so that a stopped run leaves paired results; the ablations last.
    jobs = [(m, s) for s in SEEDS for m, spec in METHODS.items() if not spec.ablation]
    jobs += [(m, s) for m, spec in METHODS.items() if spec.ablation for s in spec.seeds]
    for method, seed in jobs:
        key = f"{method}/{seed}"
        if key in doc["runs"]:
            continue
        print(f"== detect_distill {key}", flush=True)
        student, doc["runs"][key] = _recover(method, seed, start, teacher, sets)
        if method == "fgd":
            _keep_best(student, plan.to_json(), key, doc)
        atomic_write_json(RESULTS, doc)
    _write(doc, macs, _reload_check(start))


def _write(doc: dict[str, Any], macs: tuple[tuple[float, float], ...], reload_diff: float) -> None:
    ref, runs = doc["reference"], doc["runs"]
    (t_macs, t_params), (s_macs, s_params) = macs
    rows = [
        ["teacher (unpruned)", f"{100 * ref['teacher']['map50']:.2f}",
         f"{100 * ref['teacher']['map50_95']:.2f}", "-", "-"],
        ["pruned, before recovery", f"{100 * ref['pruned']['map50']:.2f}",
         f"{100 * ref['pruned']['map50_95']:.2f}", "-", "-"],
    ]  # fmt: skip
    by_method: dict[str, list[dict[str, Any]]] = {}
    for method, spec in METHODS.items():
        done = [runs[f"{method}/{s}"] for s in spec.seeds if f"{method}/{s}" in runs]
        by_method[method] = done
        if not done:
            continue
        per_seed = ", ".join(f"{100 * r['test']['map50_95']:.2f}" for r in done)
        rows.append(
            [
                spec.label,
                _stats([r["test"]["map50"] for r in done]),
                _stats([r["test"]["map50_95"] for r in done]),
                per_seed,
                f"{statistics.mean(r['minutes'] for r in done):.1f}",
            ]
        )
    seeds = [s for s in SEEDS if all(f"{m}/{s}" in runs for m in ("plain", "fgd"))]
    diffs = [
        100 * (runs[f"fgd/{s}"]["test"]["map50_95"] - runs[f"plain/{s}"]["test"]["map50_95"])
        for s in seeds
    ]
    paired = ", ".join(f"{d:+.2f}" for d in diffs)
    s0 = ABLATION_SEEDS[0]

    def gain(method: str) -> str:  # over (a), on seed s0, in mAP@0.5:0.95 points
        a, b = runs[f"plain/{s0}"]["test"], runs[f"{method}/{s0}"]["test"]
        return f"{METHODS[method].label.split()[0]} {100 * (b['map50_95'] - a['map50_95']):+.2f}"

    done0 = [m for m in METHODS if m != "plain" and {f"plain/{s0}", f"{m}/{s0}"} <= set(runs)]
    vs_plain = ", ".join(gain(m) for m in done0)
    header = ["", "test mAP@0.5", "test mAP@0.5:0.95", "per seed (0.5:0.95)", "min/run"]
    best = doc.get("best_fgd")
    terms = by_method["fgd"][0]["history"][0] if by_method["fgd"] else {}
    start_terms = ", ".join(
        f"{k} {terms[k]:.3g}"
        for k in ("box", "cls", "dfl", "distill", "fgd_fg", "fgd_bg", "fgd_att", "fgd_global",
                  "kd_cls", "kd_dfl")
        if k in terms
    )  # fmt: skip
    body = (
        f"Machine: {machine()}; torch {torch.__version__}, 1 thread, nice'd, beside another "
        f"job. Seeds run: {', '.join(str(s) for s in seeds) or 'none'}.\n\n"
        + table(rows, header)
        + f"\n\nmean ± sample sd over the seeds. FGD − plain, paired by seed (mAP@0.5:0.95, "
        f"points): {paired or '-'}. Seed {s0}, each method against (a): {vs_plain or '-'}.\n\n"
        f"Pruning: `prune(keep={KEEP}, align={ALIGN})` (L1, global allocation, the six last "
        f"head convolutions kept): {s_macs / 1e6:.1f}M of {t_macs / 1e6:.1f}M MACs "
        f"({s_macs / t_macs:.3f}x), {s_params / 1e6:.3f}M of {t_params / 1e6:.3f}M "
        f"parameters at {RECOVER.size}x{RECOVER.size}. Recovery, every method: "
        f"{RECOVER.epochs} epochs, AdamW lr {RECOVER.lr} ({RECOVER.warmup_epochs} epoch "
        f"warm-up, cosine to {RECOVER.final_lr}x), batch {RECOVER.batch_size}, flips, EMA "
        f"{RECOVER.ema}; the best-val (mAP@0.5:0.95) epoch kept, then the test split "
        f"evaluated once. (b) adds `DetectDistillConfig()`: FGD on the three neck outputs "
        f"(alpha {DISTILL.alpha}, beta {DISTILL.beta}, gamma {DISTILL.gamma}, lambda "
        f"{DISTILL.lam}, T {DISTILL.temperature}; 1x1 adapters where the pruned widths "
        f"differ) plus class-logit KL (x{DISTILL.cls}) and DFL-bin KL (x{DISTILL.dfl}) on "
        f"the head; (c) and (d), one seed each, keep only its feature or only its "
        f"response terms. First-epoch means of the terms (unweighted; seed 0): {start_terms}.\n\n"
        f"Kept for QAT: the FGD student with the best val mAP ({best}), "
        f"`<cache>/{BEST}.pt` + `<cache>/{BEST}.plan.json`; rebuilt from them (plan replayed "
        f"on `fashion_detector()`) it gives the same head outputs (max abs diff "
        f"{reload_diff:.1g}). `benchmarks/detect_distill.py`; per-run records and histories "
        "in `benchmarks/results/detect_distill.json`."
    )
    write_section("Detection: recovering a pruned detector, fine-tuning vs FGD", body)


if __name__ == "__main__":
    run()
