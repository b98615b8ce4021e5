"""The timing loop: warm-up, then at least N runs (and at least a time budget), with
percentiles. A median over many runs is the number to compare; p90/p99 show the tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls after ``warmup``
    untimed ones; ``std_ms`` is the population standard deviation."""

    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_per_s: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON-able numbers, field names as above."""
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, warmup: int, batch: int = 1) -> LatencyStats:
        """Statistics of per-call times in ms; throughput is items (``batch`` per call)/s."""
        s = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        return cls(
            len(s),
            warmup,
            float(p50),
            float(p90),
            float(p99),
            float(s.mean()),
            float(s.std()),
            float(s.min()),
            float(s.max()),
            float(batch * 1000.0 / s.mean()),
        )


def time_loop(
    fn: Callable[[], object],
    *,
    warmup: int = 10,
    runs: int = 100,
    min_time_s: float = 0.0,
    batch: int = 1,
) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then time at least ``runs`` calls and keep
    going until ``min_time_s`` has passed; ``batch`` only scales the throughput.

    Each call is timed on its own with ``perf_counter_ns`` (monotonic, integer ns), so
    the percentiles describe single calls, not averages of chunks.

    >>> time_loop(lambda: None, warmup=1, runs=5).runs
    5
    """
    if runs < 1 or warmup < 0 or batch < 1 or min_time_s < 0:
        raise ValueError(
            f"time_loop needs runs >= 1, warmup >= 0, batch >= 1, min_time_s >= 0; "
            f"got runs={runs}, warmup={warmup}, batch={batch}, min_time_s={min_time_s}"
        )
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(min_time_s * 1e9)
    while len(samples) < runs or time.perf_counter_ns() < deadline:
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return LatencyStats.from_samples(np.asarray(samples) / 1e6, warmup, batch)
