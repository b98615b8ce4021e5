"""A suite of small ONNX models timed on the device in interleaved rounds: what
``edgecompress probe`` measures a machine with (the agent runs it, torch-free).

Job key ``suite``: ``models`` (each ``{"name", "file", "level"}``: the ONNX file in the
staged folder and ONNX Runtime's graph optimisation level, ``basic``, ``extended`` or
``all``), ``rounds``, ``runs`` (timed calls per model per round), ``warmup``, and
``compare`` (pairs of model names whose outputs on the same input are compared: two
files that hold the same integer values in different storage give identical outputs
unless one kernel saturates). The result holds, per model, the lowest of its per-round
median latencies (the least disturbed round on a shared machine) and every round's
median; per pair, the largest output difference and the fraction of elements that
differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_suite(spec: dict[str, Any], threads: int, emit: Any) -> dict[str, Any]:
    """Time every model of ``spec`` (module docstring) and compare the pairs it names."""
    import numpy as np

    from edgecompress.runtime.onnxrt import open_session, random_inputs

    models = spec["models"]
    rounds, runs = int(spec.get("rounds", 5)), int(spec.get("runs", 30))
    warmup = int(spec.get("warmup", 3))
    sessions, feeds = {}, {}
    for m in models:
        sess = open_session(Path(m["file"]), threads, None, level=m.get("level", "all"))
        sessions[m["name"]] = sess
        feeds[m["name"]] = random_inputs(sess, 1, 0, Path(m["file"]))
    medians: dict[str, list[float]] = {m["name"]: [] for m in models}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for m in models:  # round-robin: a load change falls on every model alike
            sess, feed = sessions[m["name"]], feeds[m["name"]]
            for _ in range(warmup):
                sess.run(None, feed)
            samples = []
            for _ in range(runs):
                t0 = clock()
                sess.run(None, feed)
                samples.append(clock() - t0)
            medians[m["name"]].append(float(np.median(samples)) / 1e6)
        emit("suite_round", round=r + 1, rounds=rounds)
    compared = []
    for a, b in spec.get("compare") or []:
        out_a = sessions[a].run(None, feeds[a])[0]
        out_b = sessions[b].run(None, feeds[a])[0]  # the same input for both
        diff = np.abs(out_a.astype(np.float64) - out_b.astype(np.float64))
        compared.append(
            {
                "a": a,
                "b": b,
                "max_abs_diff": float(diff.max()),
                "differing": float((diff > 0).mean()),
                "output_range": float(out_a.max() - out_a.min()),
            }
        )
    return {
        "models": {
            name: {"ms": min(ms), "rounds_ms": [round(x, 5) for x in ms]}
            for name, ms in medians.items()
        },
        "compare": compared,
        "rounds": rounds,
        "runs": runs,
        "threads": threads,
    }
