"""Goals on the command line (``--speedup``, ``--max-accuracy-drop``) and the back-off
that chases them: each attempt is a whole build in ``out/attempts/N/``; when accuracy
breaks, the next one prunes less and recovers longer; when only the speed-up is short,
it prunes more. Every attempt is recorded, the best is copied to ``out/`` and the build
exits non-zero when no attempt met every goal."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.exporters.registry import writes
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.pipeline import BuildRequest, run_build, start
from edgecompress.recipe import Recipe
from edgecompress.report.schema import Report, value
from edgecompress.report.summary import SummaryRow, summary_rows
from edgecompress.stages.base import BuildOptions
from edgecompress.stages.configs import PruneConfig

Log = Callable[[str], None]


@dataclass(frozen=True)
class Goals:
    speedup: float | None = None
    max_accuracy_drop: float | None = None

    def any(self) -> bool:
        return self.speedup is not None or self.max_accuracy_drop is not None


def deployed_row(data: dict[str, Any]) -> SummaryRow | None:
    """The summary row of the artifact the build hands over: the last deployable one the
    target's device runs (what its last exporter writes: RKNN for rk3588, ONNX for host)."""
    exporters = data.get("target", {}).get("exporters") or []
    rows = [r for r in summary_rows(data) if r.kind == "artifact" and r.deployed]
    runs = [
        r for r in rows if writes(Path(data["artifacts"][r.artifact].get("path", "")), exporters)
    ]
    return (runs or rows)[-1] if rows else None


def val_drop(data: dict[str, Any]) -> float | None:
    """Val top-1 points the deployed form lost against the original: the bench stage's
    deployment record where it chose one (a target that runs here), else the final
    model's (the fake-quantized model behind a device file that val never ran through)."""
    models = data.get("models") or []
    if not models or value(models[0].get("val_top1")) is None:
        return None
    dep = data.get("deployment")
    got = dep["val_top1"] if dep else value(models[-1].get("val_top1"))
    return None if got is None else float(value(models[0]["val_top1"])) - float(got)


def assess(data: dict[str, Any], goals: Goals) -> dict[str, Any]:
    """How the deployed artifact measures against ``goals``: accuracy on val (attempts are
    chosen on it; test is only reported), speed-up in the build's own latency pass."""
    row = deployed_row(data)
    drop = val_drop(data)
    speedup = row.speedup if row else None
    broken = []
    if goals.max_accuracy_drop is not None and (drop is None or drop > goals.max_accuracy_drop):
        broken.append("accuracy")
    if goals.speedup is not None and (speedup is None or speedup < goals.speedup):
        broken.append("speedup")
    return {
        "artifact": row.row if row else None,
        "accuracy_drop": drop,
        "test_drop": -row.top1_change if row and row.top1_change is not None else None,
        "speedup": speedup,
        "broken": broken,
        "met": not broken,
    }


def run_with_goals(
    req: BuildRequest, goals: Goals, options: BuildOptions, log: Log, attempts: int = 3
) -> tuple[Report, bool]:
    """Build until the goals are met or ``attempts`` builds were tried."""
    if goals.speedup is not None and not req.recipe.profile.on_this_machine:
        raise ConfigError(
            f"--speedup on {req.recipe.target}: the speed-up is measured on the target's "
            "runtime, and timing the original model on the board is not supported yet; "
            "use --keep to set the MAC budget instead"
        )
    if req.resume:
        raise ConfigError("--resume with goals: rerun without --resume (attempts restart)")
    begun = start(req, options, log)
    recipe, tried, plan = begun.req.recipe, [], None
    prune_cfg = next((s.config for s in recipe.stages if s.name == "prune"), None)
    if goals.speedup is not None and isinstance(prune_cfg, PruneConfig):
        from edgecompress.speed_plan import plan_keep

        plan = plan_keep(begun.loaded.module, begun.data, begun.profile, prune_cfg,
                         goals.speedup, options.threads, log)  # fmt: skip
        recipe = recipe.with_keep(plan["keep"])
        log(f"speed-up plan: keep {plan['keep']} of the MACs, predicted "
            f"{plan['predicted_speedup']:.2f}x (goal {goals.speedup:g}x)")  # fmt: skip
    if goals.max_accuracy_drop is not None:  # the bench's deployed form keeps to it too
        recipe = recipe.with_stage_options("bench", max_accuracy_drop=goals.max_accuracy_drop)
    for n in range(1, attempts + 1):
        out = req.out_dir / "attempts" / str(n)
        log(f"attempt {n}/{attempts}: {_describe(recipe)}")
        attempt = replace(req, out_dir=out, recipe=recipe, force=True)
        report = run_build(attempt, options, log, begun)
        verdict = {"attempt": n, **_settings(recipe), **assess(report.data, goals)}
        tried.append((verdict, report, out))
        log(f"attempt {n}: {verdict}")
        if verdict["met"]:
            break
        following = _back_off(recipe, verdict, goals)
        if following is None:
            break
        recipe = following
    verdict, report, folder = max(tried, key=lambda t: _rank(t[0]))
    report.data["goals"] = {
        "speedup": goals.speedup,
        "max_accuracy_drop": goals.max_accuracy_drop,
        "plan": plan,
        "chosen_attempt": verdict["attempt"],
        "attempts": [t[0] for t in tried],
        "met": verdict["met"],
    }
    _adopt(folder, req.out_dir, report)
    return report, bool(verdict["met"])


def _rank(v: dict[str, Any]) -> tuple[bool, bool, float]:
    """Goals met first; then, where accuracy broke, the smallest drop, else the fastest."""
    accurate = "accuracy" not in v["broken"]
    tiebreak = (v["speedup"] or 0.0) if accurate else -(v["accuracy_drop"] or 0.0)
    return (accurate, "speedup" not in v["broken"], tiebreak)


def _settings(recipe: Recipe) -> dict[str, Any]:
    prune = next((s.config for s in recipe.stages if s.name == "prune"), None)
    distill = next((s.config for s in recipe.stages if s.name == "distill"), None)
    return {
        "keep": getattr(prune, "keep", None),
        "distill_epochs": distill.train.epochs if distill is not None else None,  # type: ignore[attr-defined]
    }


def _describe(recipe: Recipe) -> str:
    s = _settings(recipe)
    return f"keep {s['keep']} of the MACs, {s['distill_epochs']} recovery epochs"


def _back_off(recipe: Recipe, verdict: dict[str, Any], goals: Goals) -> Recipe | None:
    """The next attempt's recipe, or None when nothing is left to change."""
    keep = verdict["keep"]
    if keep is None:
        return None  # no prune stage: nothing to trade
    if "accuracy" in verdict["broken"]:
        epochs = verdict["distill_epochs"]
        recipe = recipe.with_keep(round(keep + (1 - keep) / 2, 4))
        if epochs is not None:
            train = next(s.config for s in recipe.stages if s.name == "distill").train  # type: ignore[attr-defined]
            recipe = recipe.with_stage_options("distill", train=train.model_copy(
                update={"epochs": epochs * 2}))  # fmt: skip
        return recipe
    if "speedup" in verdict["broken"] and goals.speedup and verdict["speedup"]:
        return recipe.with_keep(max(0.05, round(keep * verdict["speedup"] / goals.speedup, 4)))
    return None


def _adopt(folder: Path, out: Path, report: Report) -> None:
    """Copy the chosen attempt's files to ``out/`` (each written atomically)."""
    for src in folder.iterdir():
        if not src.is_file() or src.name in ("report.json", "report.md", "report.html"):
            continue
        dst = out / src.name
        tmp = temp_path_for(dst)
        shutil.copy2(src, tmp)
        tmp.replace(dst)
    report.save(out)
    atomic_write_json(out / "goals.json", report.data["goals"])


def goal_lines(data: dict[str, Any]) -> list[str]:
    """The attempts, for the terminal."""
    g = data.get("goals")
    if not g:
        return []
    lines = []
    for v in g["attempts"]:
        drop = "-" if v["accuracy_drop"] is None else f"{v['accuracy_drop']:.2f}"
        speed = "-" if v["speedup"] is None else f"{v['speedup']:.2f}x"
        lines.append(
            f"attempt {v['attempt']}: keep {v['keep']}, {v['distill_epochs']} recovery epochs: "
            f"val top-1 drop {drop}, speed-up {speed} -> "
            + ("goals met" if v["met"] else f"broken: {', '.join(v['broken'])}")
        )
    verdict = "met" if g["met"] else "NOT met by any attempt; the best one is kept"
    lines.append(f"goals {verdict} (attempt {g['chosen_attempt']} in out/)")
    return lines
