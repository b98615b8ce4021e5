"""Which file a build deploys, where its target runs on this machine: the fastest form
measured in the build's own latency pass whose validation top-1 stays within the
accuracy budget, among the build's INT8 file (QAT), ONNX Runtime's PTQ of the same
float model, and that float model itself. Chosen on val, never test; forms within
``TIE`` of the fastest count as equally fast and the more accurate on val wins.

Torch-free: the bench stage measures, this decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Latencies this close (fraction of the fastest) are one speed on a shared machine:
# the same INT8 graph timed twice in one build differed by 2-8% (docs/BENCHMARKS.md).
TIE = 0.05


@dataclass(frozen=True)
class Candidate:
    name: str  # the artifact's name, or "fp32" for the float model's ONNX
    label: str  # how the summary calls it: "QAT INT8", "PTQ INT8", "FP32 (04_merge)"
    path: Path
    precision: str
    p50_ms: float
    val_top1: float
    val_loss: float  # breaks ties of top-1 (which saturates on easy data)
    built: bool = False  # what the recipe's export stages made (kept on a tie)


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    why: str
    candidates: tuple[Candidate, ...]


def choose(candidates: Sequence[Candidate], reference_val_top1: float, max_drop: float) -> Choice:
    """The form to deploy (module docstring): ties on speed go to the higher val top-1,
    then the lower val loss, then the built file. If none keeps within ``max_drop`` val
    points of ``reference_val_top1``, the most accurate on val."""
    if not candidates:
        raise ValueError("choose: no candidates")
    within = [c for c in candidates if reference_val_top1 - c.val_top1 <= max_drop]
    if not within:
        best = max(candidates, key=lambda c: (c.val_top1, -c.val_loss, c.built))
        why = (
            f"no form keeps within {max_drop:g} val points of the original "
            f"({reference_val_top1:.2f}%): the most accurate on val is deployed"
        )
        return Choice(best, why, tuple(candidates))
    fastest = min(c.p50_ms for c in within)
    tied = [c for c in within if c.p50_ms <= fastest * (1 + TIE)]
    best = max(tied, key=lambda c: (c.val_top1, -c.val_loss, c.built, -c.p50_ms))
    others = ", ".join(
        f"{c.label} {c.p50_ms:.3f} ms / {c.val_top1:.2f}% (loss {c.val_loss:.4f})"
        for c in candidates
        if c is not best
    )
    how = "fastest" if len(tied) == 1 else f"most accurate on val within {TIE:.0%} of the fastest"
    why = (
        f"the {how} of the forms within {max_drop:g} val points of the original "
        f"({reference_val_top1:.2f}%): {best.p50_ms:.3f} ms p50, {best.val_top1:.2f}% val "
        f"(loss {best.val_loss:.4f})" + (f"; others: {others}" if others else "")
    )
    return Choice(best, why, tuple(candidates))
