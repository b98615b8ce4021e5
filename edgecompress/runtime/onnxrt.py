"""ONNX Runtime benchmark: load time, latency distribution, peak memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ModelLoadError
from edgecompress.runtime.latency import time_loop
from edgecompress.runtime.memory import current_rss_bytes, peak_rss_bytes

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def _inputs(sess: Any, batch: int, seed: int, model_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i, meta in enumerate(sess.get_inputs()):
        shape = []
        for d, dim in enumerate(meta.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif d == 0:
                shape.append(batch)
            else:
                raise ModelLoadError(
                    f"{model_path}: input {meta.name!r} has a symbolic dimension "
                    f"{dim!r} at axis {d}; export with a static shape to benchmark"
                )
        dtype = _DTYPES.get(meta.type)
        if dtype is None:
            raise ModelLoadError(
                f"{model_path}: input {i} ({meta.name!r}) has type {meta.type}, not benchmarkable"
            )
        data = (
            rng.standard_normal(shape)
            if np.issubdtype(dtype, np.floating)
            else rng.integers(0, 2, shape)
        )
        feeds[meta.name] = data.astype(dtype)
    return feeds


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
) -> dict[str, Any]:
    """Time ``session.run`` on random inputs of the model's shapes; JSON-able result."""
    import onnxruntime as ort

    model_path = Path(model_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(
            str(model_path), opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{model_path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:300]}"
        ) from exc
    load_ms = (time.perf_counter() - t0) * 1000
    feeds = _inputs(sess, batch, seed, model_path)
    stats = time_loop(
        lambda: sess.run(None, feeds), warmup=warmup, runs=runs, min_time_s=min_time_s, batch=batch
    )
    peak = peak_rss_bytes()
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
        "rss_before_load_bytes": rss0,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
    }
