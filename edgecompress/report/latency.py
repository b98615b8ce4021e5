"""report.json's latency entries, made from what the on-device agent returns (the bench
stage and `convert` record their timings through this)."""

from __future__ import annotations

from typing import Any


def latency_entry(name: str, res: dict[str, Any]) -> dict[str, Any]:
    """report.json's latency entry for artifact ``name`` from the agent's result ``res``."""
    lat = res["latency"]
    info = res.get("device_info", {})
    threads = res.get("threads")
    return {
        "artifact": name,
        "measured": True,
        "device": res["device"],
        "cpu": info.get("machine"),
        "platform": info.get("platform"),
        "runtime": f"{res['runtime']} {res.get('runtime_version', '')}".strip(),
        "threads": threads,
        **lat,
        "load_ms": res["load_ms"],
        "peak_rss_bytes": res["memory"]["peak_rss_bytes"],
        "energy": compact_energy(res["energy"]),
        "method": f"median of {lat['runs']} timed runs after {lat['warmup']} warm-up, batch 1, "
        f"random inputs, {threads or 1} thread(s), by the on-device agent"
        + (f"; the fastest of {res['rounds']} interleaved rounds" if res.get("rounds") else ""),
    }


def compact_energy(energy: dict[str, Any]) -> dict[str, Any]:
    """The energy part of a latency entry: the figure, its kind and where it came from."""
    analytic = energy.get("analytic") or {}
    measured = energy.get("measured") or {}
    return {
        "kind": energy["kind"],
        "energy_per_inference_j": energy["energy_per_inference_j"],
        "sensor": measured.get("sensor"),
        "sensor_method": measured.get("method"),
        "analytic_j": analytic.get("energy_per_inference_j"),
        "analytic_kind": analytic.get("kind"),
        "note": energy.get("note"),
    }
