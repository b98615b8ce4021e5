"""ONNX Runtime benchmark: load time, latency distribution, peak memory.

>>> res = bench_onnx(Path("model.onnx"), threads=1, runs=200)  # doctest: +SKIP
>>> res["latency"]["p50_ms"]  # doctest: +SKIP
0.31
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError, MissingToolchainError, ModelLoadError
from edgecompress.runtime.latency import time_loop
from edgecompress.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _input_shape(
    meta: Any, batch: int, model_path: Path, given: list[int] | None = None
) -> list[int]:
    """The shape to feed one input: ``given`` (checked against the model's static dims)
    when there is one; else static dims as they are and a dynamic first dim as the batch.
    Any other dynamic dim has no safe default (a sequence length? an image size?), so it
    is an error that says which flag sets it."""
    dims = list(meta.shape)
    if given is not None:
        if len(given) != len(dims):
            raise ConfigError(
                f"{model_path}: input {meta.name!r} has {len(dims)} dimensions {dims}; "
                f"the shape given for it, {_text(given)}, has {len(given)}"
            )
        for axis, dim in enumerate(dims):  # no zip(strict=): the agent runs on 3.8
            size = given[axis]
            if _static(dim) and dim != size:
                raise ConfigError(
                    f"{model_path}: input {meta.name!r} dimension {axis} is fixed at {dim} in "
                    f"the model; the shape given for it, {_text(given)}, says {size}"
                )
        return [int(s) for s in given]
    shape = []
    for axis, dim in enumerate(dims):
        if _static(dim):
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
        else:
            hint = _text(
                [d if _static(d) else (batch if i == 0 else "N") for i, d in enumerate(dims)]
            )
            raise ModelLoadError(
                f"{model_path}: input {meta.name!r} has a dynamic dimension {_dim_name(dim)} "
                f"at axis {axis}; give its shape, e.g. --input-shape {meta.name}={hint} "
                "(N: the size to run at)"
            )
    return shape


def _static(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _dim_name(dim: Any) -> str:
    return repr(dim) if isinstance(dim, str) else f"({dim if dim is not None else '?'})"


def _text(shape: list[Any]) -> str:
    return "x".join(str(d) for d in shape)


def given_shapes(
    inputs: list[Any], shapes: dict[str, list[int]], model_path: Path
) -> dict[str, list[int]]:
    """``shapes`` keyed by input name; the key "" (a shape given without a name) is the
    model's one input, and an error when it has several."""
    names = [m.name for m in inputs]
    out: dict[str, list[int]] = {}
    for name, shape in shapes.items():
        if name == "":
            if len(names) != 1:
                raise ConfigError(
                    f"{model_path}: the model has {len(names)} inputs ({', '.join(names)}); "
                    "name the one each shape is for: --input-shape NAME=1x3x224x224"
                )
            name = names[0]
        elif name not in names:
            raise ConfigError(
                f"{model_path}: no input named {name!r}; its inputs are {', '.join(names)}"
            )
        out[name] = [int(s) for s in shape]
    return out


def random_inputs(
    sess: Any,
    batch: int,
    seed: int,
    model_path: Path,
    shapes: dict[str, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs of each input's shape and dtype: normal floats, and integers in
    {0, 1} so that index-like inputs stay in range. Weights and values do not change
    latency for these models. ``shapes`` (input name -> shape; "" for the one input)
    fixes dynamic dimensions."""
    rng = np.random.default_rng(seed)
    metas = list(sess.get_inputs())
    given = given_shapes(metas, shapes or {}, model_path)
    feeds: dict[str, np.ndarray] = {}
    for meta in metas:
        shape = _input_shape(meta, batch, model_path, given.get(meta.name))
        dtype = _DTYPES.get(meta.type)
        if dtype is None:
            raise ModelLoadError(
                f"{model_path}: input {meta.name!r} has type {meta.type}, which the "
                f"benchmark cannot generate; supported: {', '.join(sorted(_DTYPES))}"
            )
        data = (
            rng.standard_normal(shape)
            if np.issubdtype(dtype, np.floating)
            else rng.integers(0, 2, shape)
        )
        feeds[meta.name] = data.astype(dtype)
    return feeds


def items_per_call(feeds: dict[str, np.ndarray], batch: int) -> int:
    """What one call processes: the first input's first dimension (a given shape may
    set it), else ``batch``."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else batch


# ONNX Runtime's graph optimisation levels by name; "all" adds the layout
# transformations (NCHWc blocking on x86) that make its FP32 convolutions fast.
LEVELS = ("basic", "extended", "all")


def open_session(
    model_path: Path,
    threads: int,
    providers: list[str] | None,
    level: str = "all",
    profile_prefix: str | None = None,
) -> Any:
    """An ONNX Runtime session as every timing here opens one; ``profile_prefix``: with
    ONNX Runtime's per-node profiler on, its trace written under that prefix."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingToolchainError(
            "onnxruntime is not installed; `pip install onnxruntime` (or the build for "
            "this board) to benchmark ONNX models"
        ) from exc
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if level not in LEVELS:
        raise ConfigError(f"unknown optimisation level {level!r}; known: {', '.join(LEVELS)}")
    levels = ort.GraphOptimizationLevel
    opts.graph_optimization_level = getattr(levels, f"ORT_ENABLE_{level.upper()}")
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(
            str(model_path), opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises several unrelated types for a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(
            f"{model_path}: ONNX Runtime cannot load it: {first}; check that the file is "
            "a complete ONNX model (re-export it if it was cut short)"
        ) from exc


def bench_onnx(
    model_path: Path,
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    min_time_s: float = 0.0,
    batch: int = 1,
    seed: int = 0,
    providers: list[str] | None = None,
    shapes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Time ``session.run`` on random inputs of the model's shapes; JSON-able result.

    ``shapes`` (input name -> shape; "" for a model's one input) fixes dynamic
    dimensions. ``load_ms`` is session creation (parse + graph optimisation). Memory: the
    process's peak-RSS mark is reset just before loading where the OS allows it, so
    ``peak_rss_bytes`` is the process peak during load + runs and
    ``peak_rss_delta_bytes`` what the session added on top of what the process already
    held. Where the mark cannot be reset the delta is known only if the session raised
    the process's all-time peak, else it is ``None``; ``peak_rss_method`` says which.
    """
    model_path = Path(model_path)
    rss_before = current_rss_bytes()
    was_reset = reset_peak_rss()
    peak_before = peak_rss_bytes()
    t0 = time.perf_counter_ns()
    sess = open_session(model_path, threads, providers)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    import onnxruntime as ort  # present: open_session imported it

    feeds = random_inputs(sess, batch, seed, model_path, shapes)
    items = items_per_call(feeds, batch)
    stats = time_loop(
        lambda: sess.run(None, feeds), warmup=warmup, runs=runs, min_time_s=min_time_s, batch=items
    )
    peak = peak_rss_bytes()
    delta, method = _peak_delta(peak, peak_before, rss_before, was_reset)
    return {
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "providers": sess.get_providers(),
        "threads": threads,
        "model": str(model_path),
        "model_size_bytes": model_path.stat().st_size,
        "load_ms": load_ms,
        "latency": stats.to_dict(),
        "peak_rss_bytes": peak,
        "peak_rss_delta_bytes": delta,
        "peak_rss_method": method,
        "rss_before_load_bytes": rss_before,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
    }


def _peak_delta(
    peak: int | None, peak_before: int | None, rss_before: int | None, was_reset: bool
) -> tuple[int | None, str]:
    if peak is None or peak_before is None:
        return None, "unavailable on this platform"
    if was_reset:
        # Right after the reset the mark equals the resident set then: that is the base.
        return max(0, peak - peak_before), "VmHWM reset before load (/proc/self/clear_refs)"
    if rss_before is not None and peak > peak_before:
        return peak - rss_before, "process peak rose during the benchmark"
    return None, "process peak was set earlier; the benchmark's own peak is not known"
