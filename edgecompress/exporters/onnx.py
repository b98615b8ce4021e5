"""PyTorch -> ONNX: exported, simplified, checked with onnx.checker, run in ONNX Runtime
and compared with PyTorch on real inputs, written atomically."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import ParityError, UnsupportedOpError
from edgecompress.evaluate import cosine
from edgecompress.exporters.onnx_shapes import onnx_size_bytes, save_onnx, weight_bytes
from edgecompress.memory import release

# The torch.export-based exporter emits opset 18 natively; asking it for 17 makes it
# down-convert, which fails on Reduce* ops. TorchScript modules need the old exporter.
DYNAMO_MIN_OPSET = 18


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    size_bytes: int
    exporter: str  # "dynamo" | "torchscript"
    opset: int
    nodes_exported: int
    nodes_final: int
    simplifier: str | None


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    *,
    opset: int = 18,
    exporter: str = "auto",
    simplify: bool = True,
) -> OnnxExport:
    """Export ``module`` with a static input shape (that of ``example``), simplify and
    check the graph, and atomically write it to ``out`` (past 2 GiB of weights, with them
    in ``out.name + ".data"``: :func:`save_onnx`)."""
    module = module.eval()
    if exporter == "auto":
        exporter = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "dynamo"
    if exporter == "dynamo":
        opset = max(opset, DYNAMO_MIN_OPSET)
    model = _export(module, example, exporter, opset)
    exported_nodes = len(model.graph.node)
    simplifier = None
    if simplify:
        model, simplifier = _simplify(model)
        release()
    nodes = len(model.graph.node)
    save_onnx(model, out, check=True)
    return OnnxExport(out, onnx_size_bytes(out), exporter, opset, exported_nodes, nodes, simplifier)


def _export(module: nn.Module, example: torch.Tensor, exporter: str, opset: int) -> Any:
    import onnx

    kwargs: dict[str, Any] = {"input_names": ["input"], "opset_version": opset}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module, (example,), dynamo=True, verbose=False, **kwargs
                )
                assert program is not None
                return program.model_proto
            # To a file: over 2 GiB the exporter writes the weights beside it.
            with tempfile.TemporaryDirectory() as tmp, _native_stderr_to_null():
                torch.onnx.export(
                    module,
                    (example,),
                    str(Path(tmp) / "model.onnx"),
                    dynamo=False,
                    do_constant_folding=True,
                    **kwargs,
                )
                return onnx.load(str(Path(tmp) / "model.onnx"))
    except Exception as exc:
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise UnsupportedOpError(
            f"torch.onnx ({exporter} exporter, opset {opset}) could not export the model: "
            f"{_short(exc)}. If an operator is named, replace it with a supported one or "
            f"try `exporter: {other}` in the export_onnx stage"
        ) from exc


@contextlib.contextmanager
def _native_stderr_to_null() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block. torch's TorchScript exporter leaves
    its native ONNX log on (it tests a function object for truth) and so prints the whole
    Torch IR graph, hundreds of lines, to C++ stdout when an export fails; the failure
    itself is raised as :class:`UnsupportedOpError` with its message. The log is pointed at
    (unbuffered) stderr, which the block discards."""
    torch._C._jit_set_onnx_log_output_stream("stderr")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# onnxslim's peak over the graph it is given, in multiples of its weights: its shape
# inference, graph import and re-export each hold a copy (measured: 8.5 GB for ViT-L/16's
# 1.21 GB, 7.0x).
SLIM_MEMORY_FACTOR = 7.5


def _simplify(model: Any) -> tuple[Any, str]:
    """onnxslim's simplified graph, or the graph as it is where onnxslim would need more
    memory than the machine has free (ONNX Runtime and the vendor toolchains fold and fuse
    again when they load it); the second item says which, for the report."""
    import onnxslim
    import psutil

    weights = weight_bytes(model)
    need = SLIM_MEMORY_FACTOR * weights
    free = psutil.virtual_memory().available
    if need > 0.8 * free:  # a fifth left for everything else running
        return model, (
            f"not simplified: onnxslim needs about {need / 1e9:.1f} GB for "
            f"{weights / 1e9:.2f} GB of weights, {free / 1e9:.1f} GB free"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(model), f"onnxslim {onnxslim.__version__}"


def ort_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, inputs: np.ndarray, threads: int = 1) -> list[np.ndarray]:
    """Run every input through ONNX Runtime at the model's own (static) batch size and
    return each output stacked over the inputs."""
    sess = ort_session(path, threads)
    meta = sess.get_inputs()[0]
    batch = meta.shape[0] if isinstance(meta.shape[0], int) else len(inputs)
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        pad = batch - len(chunk)
        if pad:  # a static batch > 1: pad the last chunk, drop the padding after
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        res = sess.run(None, {meta.name: chunk})
        if not outs:
            outs = [[] for _ in res]
        for j, r in enumerate(res):
            outs[j].append(r[: len(r) - pad] if pad else r)
    return [np.concatenate(o) for o in outs]


def parity_metrics(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """Max abs diff and cosine similarity, worst over outputs; ``degenerate`` is 1.0 when
    an output is NaN/inf or the same for every input (a dead or zero-initialised head
    agrees with anything, so agreement alone proves nothing)."""
    pairs = list(zip(reference, candidate, strict=True))
    diffs = [float(np.abs(r.astype(np.float64) - c).max()) for r, c in pairs]
    cosines = [cosine(r, c) for r, c in pairs]
    degenerate = any(degenerate_output(a) for r, c in pairs for a in (r, c))
    return {"max_abs_diff": max(diffs), "cosine": min(cosines), "degenerate": float(degenerate)}


def degenerate_output(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        return True
    return len(a) > 1 and float(np.abs(a - a[:1]).max()) == 0.0


# How far parity's stability probe moves the inputs, as a fraction of their spread: far
# below any input quantization step, so a sound model's outputs do not move at all.
NUDGE = 1e-6


def nudged_cosine(
    run: Callable[[np.ndarray], list[np.ndarray]],
    inputs: np.ndarray,
    outputs: list[np.ndarray],
) -> float:
    """The worst cosine between ``outputs`` (``run(inputs)``) and ``run`` on the same inputs
    moved by :data:`NUDGE` of their spread (fixed noise). Near 1 for a sound model; far
    below 1 where the model itself is chaotic, e.g. untrained weights under fake
    quantization, whose roundings flip and the flips grow layer by layer: such a reference
    cannot tell an export fault from its own noise."""
    x = np.asarray(inputs, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    nudged = x + noise * np.float32(NUDGE * max(float(x.std()), 1e-12))
    return min(cosine(a, b) for a, b in zip(outputs, run(nudged), strict=True))


def check_parity(
    name: str,
    metrics: dict[str, float],
    *,
    max_abs_diff: float | None,
    min_cosine: float,
    options: str = "export_onnx",
    inputs: str = "real inputs",
    remedy: str | None = None,
    stability: Callable[[], float] | None = None,
) -> None:
    """Fail the build when an export does not compute what its reference did; the message
    says what was compared on (``inputs``) and what to do (``remedy``; by default the
    recipe options of stage ``options`` that set the thresholds). ``stability`` (e.g. a
    :func:`nudged_cosine` of the reference) runs only when the cosine fails: where the
    reference itself moves below ``min_cosine`` under a nudge, the message says so instead
    of sending the user looking for an exporter fault."""
    if metrics.get("degenerate"):
        raise ParityError(
            f"{name}: the outputs are NaN/inf or identical for every input, so parity proves "
            "nothing; check the model's weights (a zero-initialised or untrained head?) and "
            "the preprocessing"
        )
    bad = []
    if max_abs_diff is not None and metrics["max_abs_diff"] > max_abs_diff:
        bad.append(f"max abs diff {metrics['max_abs_diff']:.3g} > max_abs_diff {max_abs_diff:.3g}")
    if metrics["cosine"] < min_cosine:
        bad.append(f"cosine {metrics['cosine']:.6f} < min_cosine {min_cosine}")
    if bad:
        remedy = remedy or (
            "Look for ops the exporter/runtime handles differently (resize modes, custom "
            f"layers). Only if the gap is expected, loosen the {options} stage's options in "
            "the recipe: raise max_abs_diff or lower min_cosine"
        )
        own = stability() if stability and metrics["cosine"] < min_cosine else 1.0
        if own < min_cosine:
            remedy = (
                f"The reference is itself unstable: its inputs moved by {NUDGE:g} of their "
                f"spread move its outputs to cosine {own:.6f}, so no export can match it "
                "closer (untrained or random weights under fake quantization do this: "
                "their roundings flip and the flips grow layer by layer). Check that the "
                "model is the trained one; only for a smoke test of untrained weights, "
                f"lower min_cosine in the {options} stage's options"
            )
        raise ParityError(
            f"{name} does not match its reference on {inputs}: {'; '.join(bad)}. {remedy}"
        )


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]
