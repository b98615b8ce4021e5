"""What a machine's timings say: the channel alignment its convolutions reward, which
INT8 weight storage is exact and fastest there, whether INT8 beats FP32, and the graph
optimisation level to run at. Pure functions of the suite's results (no timing here),
so every choice can be traced back to, and tested on, the numbers it came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

ALIGNMENTS = (2, 4, 8, 16, 32)
# Within this fraction of the fastest, a form that keeps more weight levels is preferred.
FORM_TOLERANCE = 0.05
# Storage forms by how much of the 8-bit range they keep (s8 and u8 hold the same values).
FORM_PREFERENCE = ("s8", "u8", "s7")


def rounding_cost(times: Mapping[int, float], a: int) -> float | None:
    """How much slower, on average, a width rounded up to a multiple of ``a`` runs than
    the widths it replaces: for each multiple m of ``a`` in the sweep, t(m) over the median
    of t(m - a + 1 .. m - 1). Below 1: the runtime rewards the rounding (its kernels work
    in blocks of ``a`` or a divisor of it); None where the sweep holds no full step."""
    ratios = []
    for m in sorted(times):
        if m % a:
            continue
        below = [times[w] for w in range(m - a + 1, m) if w in times]
        if len(below) == a - 1:
            ratios.append(times[m] / median(below))
    return sum(ratios) / len(ratios) if ratios else None


def channel_alignment(times: Mapping[int, float]) -> tuple[int, dict[int, float | None]]:
    """The largest alignment whose rounding costs nothing on average (``rounding_cost`` at
    most 1), else 1; and each candidate's cost."""
    costs = {a: rounding_cost(times, a) for a in ALIGNMENTS}
    free = [a for a, c in costs.items() if c is not None and c <= 1.0]
    return (max(free) if free else 1), costs


def s8_exact(compare: Sequence[Mapping[str, Any]], a: str, b: str) -> bool | None:
    """Did the files ``a`` (int8 weights) and ``b`` (the same values as uint8) give the same
    outputs? None when the suite did not compare them."""
    for c in compare:
        if {c["a"], c["b"]} == {a, b}:
            return bool(c["max_abs_diff"] <= 1e-6 * max(c["output_range"], 1.0))
    return None


def weight_form(ms: Mapping[str, float], exact_s8: bool) -> str:
    """The storage to deploy: among the exact forms (s8 only where its kernel does not
    saturate), the fastest; one that keeps more levels wins within ``FORM_TOLERANCE``."""
    exact = {f: t for f, t in ms.items() if f != "s8" or exact_s8}
    fast = min(exact.values()) * (1 + FORM_TOLERANCE)
    return next(f for f in FORM_PREFERENCE if f in exact and exact[f] <= fast)


def int8_min_in_channels(fp32: Mapping[int, float], int8: Mapping[int, float]) -> int:
    """The fewest input channels from which a convolution runs faster in INT8 than in
    FP32 (and for every width above it in the sweep); a layer with fewer stays float."""
    widths = sorted(fp32)
    for i, c in enumerate(widths):
        if all(int8[w] < fp32[w] for w in widths[i:]):
            return c
    return widths[-1] + 1


def analyse(results: Mapping[str, Any], suite: Sequence[Any]) -> dict[str, Any]:
    """The choices (``channel_alignment``, ``int8_weights``, ``int8_speedup``, ``level``)
    and the figures each was read from, out of the agent's ``suite`` result."""
    ms = {name: r["ms"] for name, r in results["models"].items()}
    align = {p: {m.width: ms[m.name] for m in suite if m.kind == "align" and m.precision == p}
             for p in ("fp32", "int8")}  # fmt: skip
    blocks = [m for m in suite if m.kind == "block"]
    levels = sorted({m.level for m in blocks})

    def block(precision: str, form: str = "") -> tuple[float, str]:
        """One block form's time at its level: ONNX Runtime's fullest ("all") unless
        another is faster beyond ``FORM_TOLERANCE`` (a level is one run's noise apart)."""
        found = {m.level: ms[m.name] for m in blocks
                 if m.precision == precision and m.weights == form}  # fmt: skip
        level = min(found, key=found.__getitem__)
        if "all" in found and found["all"] <= found[level] * (1 + FORM_TOLERANCE):
            level = "all"
        return found[level], level

    exact = s8_exact(results.get("compare") or [], *_s8_pair(blocks))
    forms = {f: block("int8", f)[0] for f in ("s8", "u8", "s7")}
    form = weight_form(forms, bool(exact))
    fp32_ms, fp32_level = block("fp32")
    int8_ms, int8_level = block("int8", form)
    int8_wins = int8_ms < fp32_ms
    deployed = "int8" if int8_wins else "fp32"
    alignments = {p: channel_alignment(t) for p, t in align.items()}
    stem = {p: {m.width: ms[m.name] for m in suite if m.kind == "stem" and m.precision == p}
            for p in ("fp32", "int8")}  # fmt: skip
    return {
        "channel_alignment": alignments[deployed][0],
        "int8_weights": form,
        "int8_speedup": fp32_ms / int8_ms,
        "level": int8_level if int8_wins else fp32_level,
        "int8_min_in_channels": int8_min_in_channels(stem["fp32"], stem["int8"]),
        "evidence": {
            "alignment": {
                p: {"chosen": a, "rounding_cost": costs, "ms_by_width": align[p]}
                for p, (a, costs) in alignments.items()
            },
            "alignment_from": deployed,
            "s8_exact": exact,
            "block_ms": {"fp32": fp32_ms, **{f"int8_{f}": t for f, t in forms.items()}},
            "levels_ms": {m.name: ms[m.name] for m in blocks},
            "levels": levels,
            "stem_ms_by_in_channels": stem,
        },
    }


def _s8_pair(blocks: Sequence[Any]) -> tuple[str, str]:
    """The names of the s8 and u8 block files compared (at the fullest optimisation)."""
    level = "all" if any(m.level == "all" for m in blocks) else blocks[-1].level
    by = {(m.weights, m.level): m.name for m in blocks if m.precision == "int8"}
    return by[("s8", level)], by[("u8", level)]


def describe(choices: Mapping[str, Any], evidence: Mapping[str, Any]) -> list[str]:
    """The choices, each with the figures it was read from, as lines for the terminal and
    the report."""
    by = evidence["alignment"][evidence["alignment_from"]]
    costs = ", ".join(f"{a}: x{c:.2f}" for a, c in by["rounding_cost"].items() if c is not None)
    ms = evidence["block_ms"]
    exact = evidence["s8_exact"]
    saturation = (
        "int8 weights at 8 bits give the same outputs as uint8 (no saturation)"
        if exact
        else "int8 weights at 8 bits differ from the same values as uint8: its uint8 x int8 "
        "kernel saturates"
    )
    return [
        f"channel alignment: {choices['channel_alignment']} ({evidence['alignment_from']} "
        f"convolutions; a width rounded up to a multiple of a costs, against the widths it "
        f"replaces: {costs})",
        f"int8 weights: {choices['int8_weights']} ({saturation}; 64-channel block p50: "
        f"fp32 {ms['fp32']:.3f} ms, int8 s8 {ms['int8_s8']:.3f}, u8 {ms['int8_u8']:.3f}, "
        f"s7 {ms['int8_s7']:.3f})",
        f"int8 over fp32: {choices['int8_speedup']:.2f}x on that block",
        f"int8 from {choices['int8_min_in_channels']} input channels (a 3x3 convolution "
        "to 32 channels, p50 fp32 / int8 ms by input channels: "
        + ", ".join(
            f"{c}: {evidence['stem_ms_by_in_channels']['fp32'][c]:.3f} / "
            f"{evidence['stem_ms_by_in_channels']['int8'][c]:.3f}"
            for c in evidence["stem_ms_by_in_channels"]["fp32"]
        )
        + "); a layer with fewer stays float",
        f"graph optimisation: {choices['level']}",
    ]
