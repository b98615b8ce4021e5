"""Structured pruning to a budget: criterion, allocation, target-aligned widths, one-shot
or a progressive schedule with recovery between steps. Writes the replayable plan
(``prune_plan.json``) and the pruned model as a ``torch.export`` program (``pruned.pt2``)
that loads without the edited classes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress.io import temp_path_for
from edgecompress.prune.api import PrunePlan, budget_measure, prune, slim
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import PruneConfig
from edgecompress.timing import onnx_latency_ms


class Prune(Stage):
    """Remove whole channels to a MAC/parameter/latency budget."""

    name = "prune"
    Config = PruneConfig
    cfg: PruneConfig

    def keeps_input(self) -> bool:
        return not self.cfg.slimming  # pruning works on copies; slimming trains the model

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        cfg = self.cfg
        example = torch.from_numpy(ctx.data.val_inputs[:1].copy())
        val = (ctx.data.val_inputs, ctx.data.val_labels)
        if cfg.slimming:
            model = slim(
                model, ctx.data.train_arrays(), val, l1=cfg.slimming,
                epochs=cfg.slimming_epochs, lr=cfg.recovery.lr, progress=ctx.options.progress,
            )  # fmt: skip
        align = ctx.target.channel_alignment if cfg.align else None
        options = dict(
            keep=cfg.keep,
            metric=cfg.metric,
            criterion=cfg.criterion,
            allocation=cfg.allocation,
            ignore=cfg.ignore,
            data=val,  # criteria and sensitivity look at validation images only
            calibration_batches=cfg.calibration_batches,
            threads=ctx.options.threads,
            progress=ctx.options.progress,
        )
        iterative = cfg.schedule == "iterative"
        pruned, plan = prune(
            model,
            example,
            align=align,
            schedule=cfg.schedule,
            steps=cfg.steps,
            k=cfg.k,
            train=ctx.data.train_arrays() if iterative else None,
            val=val if iterative else None,
            recover=cfg.recovery,
            **options,  # type: ignore[arg-type]
        )
        if plan.macs[1] >= 0.999 * plan.macs[0]:
            ctx.log(f"prune: no channel could be removed (widths rounded to {align})")
        plan.save(ctx.out_dir / "prune_plan.json")
        saved = _save_program(pruned, example, ctx.out_dir / "pruned.pt2")
        if saved is not None:
            ctx.log(f"prune: {saved}")
        lat = {
            "pruned": onnx_latency_ms(pruned, example, ctx.options.threads),
            "original": onnx_latency_ms(model, example, ctx.options.threads),
        }
        if plan.round_to and plan.macs[1] < 0.999 * plan.macs[0]:
            # What rounding to the target's alignment bought: the same budget, free widths.
            measure = budget_measure(cfg.metric, example, ctx.options.threads)
            kept = measure(pruned) / measure(model)
            unaligned, _ = prune(model, example, **{**options, "keep": min(kept, 0.999)})  # type: ignore[arg-type]
            lat["unaligned"] = onnx_latency_ms(unaligned, example, ctx.options.threads)
        self._record(ctx, plan, lat)
        if saved is not None:
            ctx.report.data["pruning"]["model"] = None
            ctx.report.data["pruning"]["model_not_saved"] = saved
        return pruned

    def _record(self, ctx: BuildContext, plan: PrunePlan, lat: dict[str, float]) -> None:
        (macs0, macs1), (params0, params1) = plan.macs, plan.params
        how = "ONNX Runtime p50, batch 1, host, same run"
        ctx.report.data["pruning"] = {
            "macs": {
                "before": macs0,
                "after": macs1,
                "ratio": metric(macs1 / macs0, "", "torch-pruning op count"),
            },
            "params": {
                "before": params0,
                "after": params1,
                "ratio": metric(params1 / params0, "", "count"),
            },
            "latency_ms": {k: metric(v, "ms", how) for k, v in lat.items()},
            "round_to": plan.round_to,
            "criterion": plan.criterion,
            "allocation": plan.allocation,
            "schedule": self.cfg.schedule,
            "layers": {
                n: {"before": plan.widths_before[n], "after": plan.widths_after[n]}
                for n in plan.widths_before
            },
            "plan": "prune_plan.json",
            "model": "pruned.pt2",
        }


def _save_program(model: nn.Module, example: torch.Tensor, out: Path) -> str | None:
    """The pruned model as a torch.export program (batch dynamic: traced at 2, as a
    size-1 example would be specialised to 1); where torch.export cannot capture it
    (data-dependent control flow), why not: the build goes on without the file."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(
            model.eval(), (example.repeat(2, 1, 1, 1),), dynamic_shapes=({0: batch},)
        )
    except Exception as exc:  # torch.export's many capture errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"{out.name} not written: torch.export cannot capture the model ({first})"
    tmp = temp_path_for(out)
    try:
        torch.export.save(program, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return None
