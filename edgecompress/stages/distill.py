"""Recovery: fine-tune the current model against a teacher — the model as it was before
the previous model-changing stage, or a model given by path."""

from __future__ import annotations

from torch import nn

from edgecompress.distill.api import distill
from edgecompress.evaluate import classification_metrics
from edgecompress.measure import evaluate_logits
from edgecompress.report.schema import metric
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import DistillConfig


class Distill(Stage):
    """Train the student against the teacher with the recipe's losses; keep the best epoch."""

    name = "distill"
    Config = DistillConfig
    cfg: DistillConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        teacher = self._teacher(ctx)
        test = (ctx.data.test_inputs, ctx.data.test_labels)
        before = classification_metrics(
            evaluate_logits(model, test[0]), test[1], ctx.reference_logits()
        )
        assert ctx.stage_dir is not None
        result = distill(  # the best epoch is chosen on val; test is only reported
            model,
            teacher,
            ctx.data.train_arrays(),
            (ctx.data.val_inputs, ctx.data.val_labels),
            self.cfg.train,
            workdir=ctx.stage_dir,
            resume=ctx.resume,
            progress=ctx.options.progress,
        )
        after = classification_metrics(
            evaluate_logits(model, test[0]), test[1], ctx.reference_logits()
        )
        how = f"PyTorch on {len(test[1])} test images"
        ctx.report.data.setdefault("recovery", {})[ctx.stage_dir.name] = {
            "losses": [c.model_dump() for c in self.cfg.train.losses],
            "before": {
                k: metric(v, "%" if k in ("top1", "top5", "agreement") else "", how)
                for k, v in before.items()
            },
            "after": {
                k: metric(v, "%" if k in ("top1", "top5", "agreement") else "", how)
                for k, v in after.items()
            },
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "micro_batch": result.micro_batch,  # set where a batch passed the memory budget
            "seconds_per_epoch": metric(
                result.seconds_per_epoch, "s", "wall clock, train + validation"
            ),
            "history": result.history,
        }
        return model

    def _teacher(self, ctx: BuildContext) -> nn.Module:
        if self.cfg.teacher is not None:
            from edgecompress.model_io import load_model

            size = ctx.spec.input_size
            return load_model(self.cfg.teacher, self.cfg.teacher_arch, input_size=size).module
        teacher = ctx.teacher or ctx.original
        assert teacher is not None
        return teacher
