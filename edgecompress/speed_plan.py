"""Before a ``--speedup`` goal trains anything: the MAC budget at which the pruned model,
in the forms the build can deploy (ONNX Runtime INT8 with the target's weight storage,
or FP32), runs that many times faster than the original on this machine.

Weights do not change latency, so each budget is pruned once without training, quantized
by ONNX Runtime's PTQ (seconds) and timed against the original in one interleaved pass:
the first attempt then starts where the goal is met instead of at the recipe's budget,
and whole-build attempts are spent on accuracy, not on finding the speed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.calibration.bundle import DataBundle
from edgecompress.errors import ConfigError
from edgecompress.exporters.api import export_model_onnx
from edgecompress.exporters.qdq import export_ptq_onnx
from edgecompress.prune.api import prune
from edgecompress.stages.configs import PruneConfig
from edgecompress.targets import TargetProfile
from edgecompress.timing import interleaved_p50

# MAC fractions tried, largest first; those above the recipe's own budget are skipped.
KEEPS = (0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.12, 0.1, 0.08, 0.06)
# The trained, merged file differs from the plan's untrained one by noise and small graph
# changes; aim this much above the goal.
MARGIN = 0.05


def plan_keep(
    model: nn.Module,
    data: DataBundle,
    profile: TargetProfile,
    cfg: PruneConfig,
    speedup: float,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The largest budget predicted to reach ``speedup`` (else the smallest tried), and
    every try's predicted speed-up, for ``goals.json``."""
    example = torch.from_numpy(data.val_inputs[:1].copy())
    val = (data.val_inputs, data.val_labels)
    calib = np.ascontiguousarray(data.val_inputs[:64])
    align = profile.channel_alignment if cfg.align else None
    tries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgecompress-plan-") as tmp:
        folder = Path(tmp)
        original = export_model_onnx(model.eval(), example, folder / "original.onnx").path
        for keep in [k for k in KEEPS if k <= cfg.keep + 1e-9] or [cfg.keep]:
            try:
                pruned, plan = prune(
                    model, example, keep=keep, metric=cfg.metric, criterion=cfg.criterion,
                    allocation=cfg.allocation, align=align, ignore=cfg.ignore, data=val,
                    calibration_batches=cfg.calibration_batches, threads=threads,
                    progress=False,
                )  # fmt: skip
            except ConfigError:  # the allocation cannot go this low: nor any lower
                break
            fp32 = export_model_onnx(pruned.eval(), example, folder / f"k{keep}.onnx").path
            int8 = folder / f"k{keep}.int8.onnx"
            sym = profile.quant_symmetric_activations
            export_ptq_onnx(pruned, example, calib, int8, weights=profile.int8_weights,
                            symmetric_activations=sym,
                            float_below=profile.int8_min_in_channels)  # fmt: skip
            # With the original in every pass: each try's ratio is measured in one run.
            base, t32, t8 = interleaved_p50([original, fp32, int8], rounds=3, threads=threads,
                                            runs=100, min_time_s=0.2)  # fmt: skip
            tries.append({"keep": keep, "macs": plan.macs[1] / plan.macs[0],
                          "fp32_x": base / t32, "int8_x": base / t8,
                          "speedup": base / min(t32, t8)})  # fmt: skip
            log(f"speed-up plan: keep {keep}: {tries[-1]['speedup']:.2f}x predicted")
            if tries[-1]["speedup"] >= speedup * (1 + MARGIN):
                break
    if not tries:
        raise ConfigError(f"--speedup: the prune stage cannot reach its own keep {cfg.keep}")
    chosen = tries[-1]
    reached = chosen["speedup"] >= speedup * (1 + MARGIN)
    return {
        "keep": chosen["keep"],
        "predicted_speedup": chosen["speedup"],
        "reached": reached,
        "tries": tries,
        "method": "budgets from the recipe's down, each pruned once (no training), the faster "
        "of its FP32 ONNX and ONNX Runtime PTQ INT8 timed against the original in 3 "
        "interleaved rounds here, until one reaches the goal",
    }
