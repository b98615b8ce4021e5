"""The timing loop: warm-up, then at least N runs (and at least a time budget), with
percentiles. A median over many runs is the number to compare; p90/p99 show the tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
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
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, warmup: int, batch: int = 1) -> LatencyStats:
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
    going until ``min_time_s`` has passed."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(min_time_s * 1e9)
    while len(samples) < runs or time.perf_counter_ns() < deadline:
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return LatencyStats.from_samples(np.asarray(samples) / 1e6, warmup, batch)
