"""``edgecompress probe``: measure a machine, cache what it says, and give a build the
target profile that machine earns.

>>> measured = probe("host")  # doctest: +SKIP  (about 20 s on 2 cores)
>>> measured.choices["channel_alignment"], measured.choices["int8_weights"]  # doctest: +SKIP
(8, 's7')

A measured profile is keyed by what decides which kernels run: CPU model, instruction-set
flags, runtime and version, threads. It is written to
``$EDGECOMPRESS_CACHE/profiles/<target>/<key>.json``; a build on the same machine (or
naming the same device) reads it, and the report says which profile was used and where
its numbers came from. A static profile stays the fallback for a device not attached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import edgecompress
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.io import atomic_write_json, cache_root
from edgecompress.probe.measure import analyse
from edgecompress.probe.suite import build_suite
from edgecompress.targets import TargetProfile, get_target, static_int8_weights

Log = Callable[[str], None]
# Flags that decide which x86 / Arm kernels ONNX Runtime's MLAS picks.
ISA = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512.*|avx_vnni.*|amx.*|asimd.*|sve.*|"
                 r"asimddp|i8mm|bf16|dotprod)$")  # fmt: skip


@dataclass(frozen=True)
class MeasuredProfile:
    """What ``probe`` measured on one machine, and the choices read from it."""

    target: str
    key: str
    identity: dict[str, Any]
    choices: dict[str, Any]
    evidence: dict[str, Any]
    probed_at: str
    seconds: float
    edgecompress_version: str
    path: str = ""

    def apply(self, profile: TargetProfile) -> TargetProfile:
        """``profile`` with the measured choices in place of its static guesses."""
        c = self.choices
        return profile.model_copy(
            update={
                "channel_alignment": int(c["channel_alignment"]),
                "int8_weights": c["int8_weights"],
                "graph_optimization": c["level"],
                "int8_min_in_channels": int(c.get("int8_min_in_channels", 1)),
                "source": f"measured by `edgecompress probe` on {self.identity['cpu']} "
                f"({self.identity['runtime']}, {self.identity['threads']} thread(s), "
                f"{self.probed_at}): {self.path}",
                "measured": {"key": self.key, "path": self.path, **c},
            }
        )


def identity(hello: dict[str, Any], threads: int) -> dict[str, Any]:
    """The machine as far as kernel choice goes, from the agent's ``hello``."""
    cpu = hello.get("cpu") or {}
    version = (hello.get("runtimes") or {}).get("onnxruntime")
    return {
        "machine": hello.get("machine"),
        "cpu": cpu.get("model") or hello.get("machine"),
        "isa": sorted(f for f in cpu.get("flags", []) if ISA.match(f)),
        "runtime": f"onnxruntime {version}",
        "threads": threads,
    }


def machine_key(ident: dict[str, Any]) -> str:
    """A file name for ``ident``: readable start, hash of the whole."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    isa = ident["isa"]
    top = next((f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "asimddp", "asimd")
                if f in isa), "base")  # fmt: skip
    return f"{ident['machine']}-{top}-{digest}"


def profile_dir(target: str) -> Path:
    """``$EDGECOMPRESS_PROFILES/<target>`` (default: the cache's ``profiles/``)."""
    root = os.environ.get("EDGECOMPRESS_PROFILES")
    return (Path(root) if root else cache_root() / "profiles") / target


def _check_probeable(profile: TargetProfile, device: str) -> None:
    if profile.runtime != "onnxruntime":
        raise ConfigError(
            f"probe --target {profile.name}: its files run on {profile.runtime}, and the probe "
            "times ONNX Runtime (CPU targets: host, android-arm64); the static profile "
            f"({profile.source}) is what a build uses"
        )
    if not profile.on_this_machine and device == "local":
        raise ConfigError(
            f"probe --target {profile.name}: that target is a device, not this machine; "
            "name it with --device ssh://user@board or adb://SERIAL"
        )


def probe(
    target: str = "host",
    device: str = "local",
    *,
    threads: int = 1,
    python: str | None = None,
    ssh_options: tuple[str, ...] = (),
    rounds: int = 5,
    log: Log = print,
) -> MeasuredProfile:
    """Time the probe suite on ``device`` (this machine by default, or a board through the
    agent: torch-free, the board's own Python and ONNX Runtime) and cache the result."""
    from edgecompress.runtime.harness import BenchOptions, run_agent
    from edgecompress.runtime.transports import parse_device

    profile = get_target(target)
    _check_probeable(profile, device)
    opts = BenchOptions(threads=threads, python=python, ssh_options=ssh_options, timeout_s=900)
    transport = parse_device(device, python=python, ssh_options=ssh_options)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgecompress-probe-") as tmp:
        suite = build_suite(Path(tmp))
        by_name = {m.name: m for m in suite}
        pair = ("block_int8_s8_all", "block_int8_u8_all")
        job = {
            "suite": {
                "models": [m.job("suite") for m in suite],
                "rounds": rounds,
                "runs": 30,
                "compare": [list(pair)] if all(p in by_name for p in pair) else [],
            },
            "options": {"threads": threads},
            "max_s": opts.timeout_s,
        }
        log(f"probe: timing {len(suite)} models on {device} ({rounds} rounds)")
        files = [(f"suite/{m.path.name}", m.path) for m in suite]
        run = run_agent(transport, None, job, opts, files=files)
    assert run.result is not None
    found = analyse(run.result["suite"], suite)
    ident = identity(run.hello, threads)
    measured = MeasuredProfile(
        target=target,
        key=machine_key(ident),
        identity=ident,
        choices={k: v for k, v in found.items() if k != "evidence"},
        evidence=found["evidence"],
        probed_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=round(time.perf_counter() - start, 1),
        edgecompress_version=edgecompress.__version__,
    )
    path = profile_dir(target) / f"{measured.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    measured = replace(measured, path=str(path))
    atomic_write_json(path, asdict(measured))
    return measured


def cached(target: str, ident: dict[str, Any]) -> MeasuredProfile | None:
    """The measured profile of ``target`` on the machine ``ident`` describes, if probed."""
    path = profile_dir(target) / f"{machine_key(ident)}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = MeasuredProfile(**{**data, "path": str(path)})
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a measured profile this version reads ({exc}); delete it and run "
            f"`edgecompress probe --target {target}` again"
        ) from exc
    return found if found.identity == ident else None


def local_identity(threads: int) -> dict[str, Any]:
    """This machine's identity, read in this process (what the agent would say)."""
    from edgecompress.runtime.agent import hello_info

    return identity(hello_info(), threads)


def resolve_target(
    profile: TargetProfile,
    *,
    device: str | None = None,
    probe_missing: bool = False,
    threads: int = 1,
    python: str | None = None,
    ssh_options: tuple[str, ...] = (),
    log: Log = print,
) -> TargetProfile:
    """The profile a build uses: the measured one when the machine the target runs on was
    probed (this machine for ``host``; for a device target, the ``device`` the build
    names), probing it first with ``probe_missing``; else the static one, its
    ``int8_weights: auto`` resolved (this CPU's rule here, int8 on a device)."""
    where = "local" if profile.on_this_machine else device
    if where is not None and profile.runtime == "onnxruntime":
        if where == "local":
            ident = local_identity(threads)
        else:
            from edgecompress.runtime.harness import BenchOptions, probe_device

            opts = BenchOptions(python=python, ssh_options=ssh_options)
            try:
                ident = identity(probe_device(where, opts), threads)
            except EdgeCompressError as exc:  # unreachable devices are reported, not fatal
                log(f"probe: {where} is unreachable ({exc}); the static profile is used")
                return _static(profile)
        found = cached(profile.name, ident)
        if found is None and probe_missing:
            found = probe(profile.name, where, threads=threads, python=python,
                          ssh_options=ssh_options, log=log)  # fmt: skip
        if found is not None:
            return found.apply(profile)
    return _static(profile)


def _static(profile: TargetProfile) -> TargetProfile:
    """``profile`` as written, its ``int8_weights: auto`` resolved: this CPU's rule for a
    target that runs here, int8 on a device elsewhere (a phone's Arm CPU)."""
    if profile.int8_weights != "auto":
        return profile
    weights = static_int8_weights() if profile.on_this_machine else "s8"
    return profile.model_copy(update={"int8_weights": weights})
