"""``ec.build``: the pipeline as the command line runs it, from a script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgecompress.goals import Goals, run_with_goals
from edgecompress.pipeline import BuildRequest, Log, run_build
from edgecompress.recipe import Recipe, load_recipe
from edgecompress.report.schema import Report
from edgecompress.stages.base import BuildOptions


def build(
    model: Path | str | nn.Module,
    data: Path | str,
    *,
    target: str = "host",
    recipe: Recipe | Path | str | dict[str, Any] | None = None,
    out: Path | str = "edgecompress-out",
    arch: str | None = None,
    trust_pickle: bool = False,
    keep: float | None = None,
    seed: int | None = None,
    force: bool = False,
    resume: bool = False,
    speedup: float | None = None,
    max_accuracy_drop: float | None = None,
    attempts: int = 3,
    options: BuildOptions | None = None,
    log: Log = print,
) -> Report:
    """``ec.build``: the whole pipeline (or ``recipe``'s stages) on a model file or an
    in-memory module and an image folder; returns the report (also in ``out``).

    Goals, as ``build --speedup/--max-accuracy-drop``: ``speedup`` (the deployed file's
    measured p50 against the original's) and ``max_accuracy_drop`` (top-1 points) make it
    build up to ``attempts`` times, pruning further or training longer, and keep the best
    attempt; ``report.data["goals"]["met"]`` says whether they were met.

    >>> report = ec.build(model, "images/", target="rk3588", out="out/")  # doctest: +SKIP
    >>> report.data["summary"]["rows"][-1]["top1"]  # doctest: +SKIP
    """
    if isinstance(recipe, Recipe):
        resolved = recipe
    elif isinstance(recipe, dict):
        resolved = Recipe.from_dict({"target": target, **recipe}, "recipe")
    elif recipe is not None:
        resolved = load_recipe(Path(recipe))
    else:
        resolved = Recipe.from_dict({"target": target}, "defaults")
    if keep is not None:
        resolved = resolved.with_keep(keep)
    if seed is not None:
        resolved = resolved.with_seed(seed)
    source = model if isinstance(model, nn.Module) else Path(model)
    req = BuildRequest(source, Path(data), Path(out), resolved, arch, trust_pickle, resume, force)
    goals = Goals(speedup, max_accuracy_drop)
    if goals.any():
        return run_with_goals(req, goals, options or BuildOptions(), log, attempts)[0]
    return run_build(req, options, log)
