"""Where an ONNX file spends its time in ONNX Runtime, node by node: the answer to "why is
this INT8 file slower than its FP32 form here?" (the kernel and the shape).

ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) records each node's
kernel time with its op type and input shapes; this runs a file a few times with it on
and folds the trace into per-node means. Torch-free: it runs where the file runs."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NodeTime:
    name: str
    op: str  # the kernel ONNX Runtime ran (after its graph optimisations)
    shapes: str  # tensor input shapes, "1x28x28x16" (a layout ORT chose: NHWC here)
    us: float  # mean kernel time per run, microseconds


def node_times(
    path: Path, x: np.ndarray, runs: int = 20, threads: int = 1, level: str = "all"
) -> list[NodeTime]:
    """Mean kernel time of every node of ``path`` over ``runs`` runs of input ``x`` (after
    two unprofiled warm-up runs' worth of the same session), slowest first."""
    from edgecompress.runtime.onnxrt import open_session

    with tempfile.TemporaryDirectory(prefix="ec-profile-") as tmp:
        sess = open_session(path, threads, None, level, profile_prefix=str(Path(tmp) / "trace"))
        feed = {sess.get_inputs()[0].name: x.astype(np.float32)}
        for _ in range(2 + runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    return _fold(trace, skip=2, runs=runs)


def _fold(trace: list[dict[str, Any]], skip: int, runs: int) -> list[NodeTime]:
    """Per-node mean over the runs after the first ``skip`` (a run's kernel events come
    before the ``model_run`` event that closes it)."""
    done = 0
    total: dict[str, float] = defaultdict(float)
    meta: dict[str, tuple[str, str]] = {}
    for ev in trace:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            done += 1
            continue
        name = str(ev.get("name", ""))
        if done < skip or ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        name = name[: -len("_kernel_time")]
        meta[name] = (str(args.get("op_name", "?")), _shapes(args.get("input_type_shape", [])))
        total[name] += float(ev.get("dur", 0))
    return sorted(
        (NodeTime(name, *meta[name], us=t / runs) for name, t in total.items()),
        key=lambda t: -t.us,
    )


def _shapes(entries: list[dict[str, list[int]]]) -> str:
    """The tensor inputs' shapes (scales, zero points and biases left out)."""
    shapes = (shape for e in entries for shape in e.values() if len(shape) > 1)
    return ", ".join("x".join(str(d) for d in shape) for shape in shapes)


def by_op(times: list[NodeTime]) -> dict[str, float]:
    """Microseconds per run by op type, largest first."""
    acc: dict[str, float] = defaultdict(float)
    for t in times:
        acc[t.op] += t.us
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def explain_slower(
    slow: Path, fast: Path, x: np.ndarray, threads: int = 1, level: str = "all", runs: int = 20
) -> dict[str, Any]:
    """Why ``slow`` (an INT8 file) runs slower than ``fast`` (its FP32 form): each file's
    time by op type and ``slow``'s costliest nodes with their shapes, as a record for
    ``report.json`` with a one-line ``why``."""
    a = node_times(slow, x, runs, threads, level)
    b = node_times(fast, x, runs, threads, level)
    ops_a, ops_b = by_op(a), by_op(b)
    total_a, total_b = sum(ops_a.values()), sum(ops_b.values())
    top = a[:3]
    nodes = "; ".join(f"{t.op} {t.name} ({t.shapes}) {t.us:.0f} us" for t in top)
    heavy = next(iter(ops_a), "?")
    why = (
        f"by ONNX Runtime's profiler ({runs} runs, batch {len(x)}, {threads} thread(s)): "
        f"kernels {total_a / 1000:.3f} ms against {total_b / 1000:.3f} ms; {heavy} takes "
        f"{ops_a.get(heavy, 0) / 1000:.3f} ms of it"
        + (f" (the FP32 form's {_fp32_peer(heavy, ops_b)})" if ops_b else "")
        + f"; costliest nodes: {nodes}"
    )
    return {
        "why": why,
        "kernel_ms": {"slow": total_a / 1000, "fast": total_b / 1000},
        "by_op_us": {"slow": ops_a, "fast": ops_b},
        "nodes": [{"name": t.name, "op": t.op, "shapes": t.shapes, "us": t.us} for t in top],
    }


def _fp32_peer(op: str, ops: dict[str, float]) -> str:
    """What the FP32 form spends on the work ``op`` does: convolutions for a quantized
    convolution, matmuls and Gemms for a quantized matmul."""
    family = ("Conv",) if "Conv" in op else ("MatMul", "Gemm") if "MatMul" in op else (op,)
    spent = sum(us for name, us in ops.items() if any(f in name for f in family))
    return f"{'/'.join(family)} kernels {spent / 1000:.3f} ms"
