"""Accuracy of the current PyTorch model on the test split."""

from __future__ import annotations

import time

from torch import nn

from edgecompress.evaluate import classification_metrics
from edgecompress.exporters.onnx import degenerate_output
from edgecompress.measure import evaluate_logits
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import EvaluateConfig


class Evaluate(Stage):
    """top-1/top-5, loss and agreement of the PyTorch model, as the reference for every
    later number."""

    name = "evaluate"
    Config = EvaluateConfig
    cfg: EvaluateConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        start = time.perf_counter()
        logits = evaluate_logits(model, ctx.data.test_inputs)
        metrics = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
        ctx.report.add_accuracy(
            self.cfg.label,
            metrics,
            f"PyTorch {_torch_version()} on CPU, {len(logits)} test images",
        )
        ctx.report.data["accuracy"][self.cfg.label]["seconds"] = {
            "value": time.perf_counter() - start,
            "unit": "s",
            "method": "wall clock",
        }
        if degenerate_output(logits):  # a later stage would fail on it, less clearly
            warning = (
                f"{self.cfg.label}: the model's outputs are the same for every test image (or "
                "not finite): its accuracy is chance. Check the weights file (a state_dict "
                "that did not load into --arch, an untrained head) and the preprocessing"
            )
            ctx.log(f"WARNING {warning}")
            ctx.report.data.setdefault("warnings", []).append(warning)
        return model


def _torch_version() -> str:
    import torch

    return torch.__version__
