"""``ec.quantize``: quantization-aware training down a bit-width ladder, from a user's
own script (ModelOpt's ``mtq.quantize(model, config, forward_loop)`` shape).

    qat, rungs = ec.quantize(model, example, ladder=(8, 6, 4), train=loader, val=val_loader)
    qat, _ = ec.quantize(model, example, forward_loop=lambda m: [m(x) for x, _ in calib])

BatchNorm is folded first; weights are fake-quantized per channel, activations per
tensor, scales initialised on the calibration data and then learned (LSQ). With
``train``, each rung trains against ``teacher`` (default: the model as given); without,
the scales stay as calibrated (post-training fake quantization). A model that is
already fake-quantized continues down the ladder.

Mixed precision: ``keep=("fc", "stem.*")`` keeps those layers' weights at ``keep_bits``
while the rest step down; ``sensitive_layers=N`` also keeps the N layers whose weights
alone at the ladder's lowest width move the outputs most (KL on ``val``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress.choices import QAT_INIT
from edgecompress.distill.data import Data, eval_batches, is_arrays
from edgecompress.errors import ConfigError
from edgecompress.quantize.config import Rung
from edgecompress.quantize.fake import is_quantized, prepare_qat, quantizers, set_weight_bits
from edgecompress.quantize.ladder import RungResult, run_ladder
from edgecompress.quantize.mixed import keep_map


@dataclass
class Quantized:
    model: nn.Module  # fake-quantized: export it with ec.export to get INT8 artifacts
    rungs: list[RungResult] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # layer -> weight bits it kept
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> KL, worst first


def quantize(
    model: nn.Module,
    example: Tensor,
    *,
    ladder: Iterable[int | Rung] = (8,),
    epochs: int = 2,
    train: Data | None = None,
    val: Data | None = None,
    calibration: Data | Iterable[Tensor] | None = None,
    calibration_batches: int = 4,
    forward_loop: Callable[[nn.Module], Any] | None = None,
    teacher: nn.Module | None = None,
    init: str = "minmax",
    a_symmetric: bool = False,
    lr: float = 0.002,
    keep: Iterable[str] = (),
    sensitive_layers: int = 0,
    keep_bits: int = 8,
    workdir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    float_below: int = 0,
) -> Quantized:
    """Fake-quantize ``model`` (left as it was) and train it down ``ladder`` (weight bits,
    or ``Rung``s with their own epochs and activation bits). Layers with fewer than
    ``float_below`` input channels stay float (``TargetProfile.int8_min_in_channels``:
    where the CPU's INT8 kernel is slower, e.g. a first layer on 3 channels)."""
    QAT_INIT.check(init, "quantize.init")
    rungs = [r if isinstance(r, Rung) else Rung(w_bits=r, epochs=epochs) for r in ladder]
    if not rungs:
        raise ConfigError("quantize: the ladder is empty; give at least one bit-width, e.g. (8,)")
    teacher = teacher if teacher is not None else copy.deepcopy(model).eval()
    if is_quantized(model):
        qat = copy.deepcopy(model)
    else:
        batches = _inputs(calibration if calibration is not None else train, calibration_batches)
        qat = prepare_qat(
            model,
            example,
            rungs[0].w_bits,
            rungs[0].a_bits,
            a_symmetric,
            init,
            batches,
            forward_loop,
            float_below,
        )
    lowest = min(r.w_bits for r in rungs)
    sensitive = sensitive_layers if lowest < keep_bits else 0
    kept, scores = keep_map(
        qat,
        tuple(keep),
        sensitive=sensitive,
        bits=lowest,
        keep_bits=keep_bits,
        batches=_inputs(val if val is not None else calibration, calibration_batches)
        if sensitive
        else None,
    )
    if train is None:  # calibrated only: step to the last rung's widths
        set_weight_bits(qat, rungs[-1].w_bits, kept)
        for q in quantizers(qat, "a"):
            if q.bits != rungs[-1].a_bits:
                q.set_bits(rungs[-1].a_bits)
        return Quantized(qat, kept=kept, sensitivity=scores)
    if val is None:
        raise ConfigError("quantize: training down the ladder needs val data to keep the best")
    results = run_ladder(
        qat,
        teacher,
        train,
        val,
        rungs,
        lr=lr,
        workdir=workdir,
        resume=resume,
        progress=progress,
        keep=kept,
        seed=seed,
    )
    return Quantized(qat, results, kept, scores)


def _inputs(data: Any, n: int) -> list[Tensor] | None:
    """Up to ``n`` input batches from arrays, (x, y) batches or bare input tensors."""
    if data is None:
        return None
    if isinstance(data, Tensor):
        return [data]
    if is_arrays(data):
        return [x for x, _ in itertools.islice(eval_batches(data, 32), n)]
    out = []
    for item in itertools.islice(iter(data), n):
        out.append(item if isinstance(item, Tensor) else torch.as_tensor(item[0]).float())
    return out
