"""The bench stage's last step for a target that runs on this machine: deploy the
fastest form it just timed within the accuracy budget (:mod:`edgecompress.deploy`
decides, on val). The file the export stages made stays under its name in ``out/`` when
it wins; otherwise the winner takes that place (``model.int8.onnx`` for ONNX Runtime's
PTQ, ``model.onnx`` for the FP32 form) and the file it replaces moves to the bench
stage's ``not_deployed/`` folder. ``report.json``'s ``deployment`` says what was chosen,
from which candidates, and why."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.deploy import Candidate, Choice, choose
from edgecompress.evaluate import classification_metrics
from edgecompress.io import sha256_file, temp_path_for
from edgecompress.report.schema import value
from edgecompress.stages.base import BuildContext


def deploy_fastest(ctx: BuildContext, timed: dict[Path, dict[str, Any]], max_drop: float) -> None:
    """Choose among the forms timed here (``timed``: bench results by file) and deploy."""
    built = ctx.artifacts.latest(ArtifactKind.onnx)
    models = ctx.report.data.get("models", [])
    if built is None or not models or value(models[0].get("val_top1")) is None:
        return
    candidates = _candidates(ctx, built, timed)
    if len(candidates) < 2:
        return
    choice = choose(candidates, float(value(models[0]["val_top1"])), max_drop)
    chosen = choice.chosen
    slower = _int8_slower(ctx, candidates)  # before a file moves: it profiles them in place
    if not chosen.built:
        _replace(ctx, built, chosen, timed)
    record = _record(ctx, choice)
    if slower is not None:
        record["int8_slower"] = slower
        record["why"] += f"; INT8 is slower than FP32 here: {slower['why']}"
    ctx.report.data["deployment"] = record
    ctx.log(f"deploy: {chosen.label}: {record['why']}")


def _int8_slower(ctx: BuildContext, candidates: list[Candidate]) -> dict[str, Any] | None:
    """Where even the fastest INT8 form is slower than the FP32 one on this machine: why,
    by ONNX Runtime's profiler (kernel and shape), so a user knows what to change (the
    INT8 files must be timed before the profiler runs: this adds a few seconds only here)."""
    from edgecompress.runtime.op_profile import explain_slower

    int8 = [c for c in candidates if c.precision != "fp32"]
    fp32 = [c for c in candidates if c.precision == "fp32"]
    if not int8 or not fp32:
        return None
    slow, fast = min(int8, key=lambda c: c.p50_ms), min(fp32, key=lambda c: c.p50_ms)
    if slow.p50_ms <= fast.p50_ms:
        return None
    x = ctx.data.val_inputs[:1]
    level = ctx.target.graph_optimization
    got = explain_slower(slow.path, fast.path, x, ctx.options.threads, level)
    ratio = slow.p50_ms / fast.p50_ms
    got["why"] = f"{slow.label} {ratio:.2f}x the p50 of {fast.label}; {got['why']}"
    return {"int8": slow.label, "fp32": fast.label, "ratio": ratio, **got}


def _candidates(
    ctx: BuildContext, built: Artifact, timed: dict[Path, dict[str, Any]]
) -> list[Candidate]:
    """The built ONNX file, the other INT8 forms timed here, and, behind an INT8 file, the
    FP32 form of the last float model."""
    from edgecompress.exporters.qdq import run_exact

    val_x, val_y = ctx.data.val_inputs, ctx.data.val_labels
    out = []
    for art in ctx.artifacts:
        res = timed.get(art.path)
        if art.kind is not ArtifactKind.onnx or res is None:
            continue
        if art is not built and art.deploy:  # an earlier export this one superseded
            continue
        val = classification_metrics(run_exact(art.path, val_x, ctx.options.threads), val_y)
        form = ctx.report.data["artifacts"].get(art.name, {}).get("form")
        label = f"{form or art.path.name} {art.precision}"
        p50 = res["latency"]["p50_ms"]
        out.append(
            Candidate(
                art.name,
                label,
                art.path,
                art.precision,
                p50,
                val["top1"],
                val["loss"],
                built=art is built,
            )
        )
    floats = [m for m in ctx.report.data["models"] if not m.get("quantized") and m.get("onnx")]
    if built.precision != "fp32" and floats and floats[-1].get("p50_ms") is not None:
        m = floats[-1]
        top1, loss = float(value(m["val_top1"])), float(value(m["val_loss"]))
        label, path = f"FP32 {m['label']}", ctx.out_dir / m["onnx"]
        out.append(Candidate("fp32", label, path, "fp32", m["p50_ms"], top1, loss))
    return out


def _replace(
    ctx: BuildContext, built: Artifact, chosen: Candidate, timed: dict[Path, dict[str, Any]]
) -> None:
    """``chosen`` takes the deployed place (INT8: the built file's name; FP32:
    ``model.onnx``); the built file moves to ``not_deployed/``."""
    from edgecompress.exporters.onnx import run_onnx
    from edgecompress.report.latency import latency_entry

    assert ctx.stage_dir is not None
    aside = ctx.stage_dir / "not_deployed" / built.path.name
    aside.parent.mkdir(exist_ok=True)
    shutil.copy2(built.path, aside)
    dest = built.path if chosen.precision != "fp32" else ctx.out_dir / "model.onnx"
    _copy_atomic(chosen.path, dest)
    if dest != built.path:
        built.path.unlink()
    _moved(ctx, built.name, aside, deployed=False)
    if chosen.name == "fp32":
        art = ctx.add_artifact("onnx_fp32", ArtifactKind.onnx, "fp32", dest)
        info = {
            "size_bytes": dest.stat().st_size,
            "precision": "fp32",
            "stage": art.stage,
            "exporter": f"torch.onnx (the FP32 form of {chosen.label}, timed in bench)",
            "form": "FP32",
        }
        ctx.report.add_artifact(art.name, {"path": dest.name, "sha256": sha256_file(dest), **info})
        ctx.report.add_latency(f"{art.name}@host", latency_entry(art.name, timed[chosen.path]))
        logits = run_onnx(dest, ctx.data.test_inputs, ctx.options.threads)[0]
        metrics = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
        how = f"ONNX Runtime, {len(logits)} test images, CPU"
        ctx.report.add_accuracy("onnxruntime-fp32-deployed", metrics, how, artifact=art.name)
    else:  # an INT8 form timed as an artifact already: only its place changes
        _moved(ctx, chosen.name, dest, deployed=True)


def _moved(ctx: BuildContext, name: str, path: Path, deployed: bool) -> None:
    """An artifact's record after its file moved (or was copied into place)."""
    ctx.artifacts.update(name, path=path, deploy=deployed)
    info = ctx.report.data["artifacts"][name]
    info.update(path=str(path.relative_to(ctx.out_dir)), deployed=deployed)


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = temp_path_for(dest)
    shutil.copy2(src, tmp)
    tmp.replace(dest)


def _record(ctx: BuildContext, choice: Choice) -> dict[str, Any]:
    chosen = choice.chosen
    onnx = [a for a in ctx.artifacts if a.deploy and a.kind is ArtifactKind.onnx]
    art = onnx[-1]
    return {
        "file": str(art.path.relative_to(ctx.out_dir)),
        "form": chosen.label,
        "precision": chosen.precision,
        "p50_ms": chosen.p50_ms,
        "val_top1": chosen.val_top1,
        "why": choice.why,
        "method": "fastest p50 of this build's latency pass within the budget on val; "
        "ties (within 5%) go to the higher val top-1",
        "candidates": [
            {
                "form": c.label,
                "p50_ms": c.p50_ms,
                "val_top1": c.val_top1,
                "val_loss": c.val_loss,
                "built": c.built,
            }
            for c in choice.candidates
        ],
    }
