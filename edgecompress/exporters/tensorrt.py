"""ONNX -> TensorRT engine, built where it will run: a TensorRT engine is specific to the
GPU and the TensorRT version that built it, so the engine for a Jetson is built on the
Jetson (``trtexec`` over the device's transport: ssh, adb, or this machine when it has
TensorRT), copied back into ``out/`` and timed by ``trtexec`` in the same call.

The ONNX it reads is the build's: FP32 (built with ``--fp16``, TensorRT's default
precision on Orin) or INT8 QDQ with symmetric per-channel weights and symmetric int8
activations, which TensorRT runs as explicit quantization (``--int8 --fp16``: the Q/DQ
pairs fix what runs in INT8, the layers between may take FP16). Torch-free.

>>> trtexec_args("model.int8.onnx", "model.engine", "int8")
['--onnx=model.int8.onnx', '--saveEngine=model.engine', '--int8', '--fp16']
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import DeviceError, EdgeCompressError, MissingToolchainError
from edgecompress.io import external_data_path, temp_path_for
from edgecompress.runtime.transports.base import Transport

# Where JetPack installs trtexec (not on PATH there); PATH first.
TRTEXEC = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
_FIND = (  # run as `sh -c _FIND trtexec ARGS...`: the first trtexec found gets ARGS
    "for t in " + " ".join(TRTEXEC) + "; do "
    'if command -v "$t" >/dev/null 2>&1; then exec "$t" "$@"; fi; done; '
    'echo "trtexec: not on PATH and not in /usr/src/tensorrt/bin" >&2; exit 127'
)
_STAT = re.compile(r"(min|max|mean|median|percentile\(\d+%\))\s*=?\s*([0-9.eE+-]+) ms")


class EngineBuildError(EdgeCompressError):
    """trtexec ran and could not build the engine (an op TensorRT has no kernel for, a
    shape it cannot take): the message carries its own error lines."""


@dataclass(frozen=True)
class EngineResult:
    path: Path
    where: str  # the device URL it was built on
    command: str
    tensorrt: str | None
    device: str | None
    throughput_qps: float | None
    latency_ms: dict[str, float] = field(default_factory=dict)  # host latency, end to end
    gpu_compute_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def trtexec_args(onnx: str, engine: str, precision: str) -> list[str]:
    """trtexec's arguments for ``precision`` ("int8": an explicit-quantization QDQ file;
    "fp16": a float one)."""
    args = [f"--onnx={onnx}", f"--saveEngine={engine}"]
    return args + (["--int8", "--fp16"] if precision == "int8" else ["--fp16"])


def how_to_build(onnx: str, precision: str, engine: str = "model.engine") -> str:
    """The line a user without a board attached is given."""
    return (
        f"no TensorRT device attached, so no engine was built: on the Jetson run `trtexec "
        f"{' '.join(trtexec_args(onnx, engine, precision))}` (JetPack installs it as "
        "/usr/src/tensorrt/bin/trtexec), or build again with --device ssh://user@jetson to "
        "have the engine built, copied back and timed there"
    )


def parse_trtexec(text: str) -> dict[str, Any]:
    """What trtexec printed about itself and its timing (TensorRT 8.x and 10.x formats:
    ``TensorRT version: 8.6.3`` or ``[TensorRT v100200]``, ``=== Performance summary ===``
    lines ``Throughput: N qps``, ``Latency: min = ... ms, ..., median = ... ms``, ``GPU
    Compute Time: ...``)."""
    got: dict[str, Any] = {"latency_ms": {}, "gpu_compute_ms": {}}
    for raw in text.splitlines():
        line = _bare(raw)
        if m := re.search(r"TensorRT version:\s*(\S+)", line):
            got["tensorrt"] = m.group(1)
        elif (m := re.search(r"\[TensorRT v(\d+)\]", raw)) and "tensorrt" not in got:
            v = int(m.group(1))  # 100200 -> 10.2.0, 8601 -> 8.6.1
            got["tensorrt"] = (
                f"{v // 10000}.{v // 100 % 100}.{v % 100}"
                if v >= 10000
                else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
            )
        elif m := re.match(r"Selected Device:\s*(.+)", line):
            got["device"] = m.group(1).strip()
        elif m := re.match(r"Throughput:\s*([0-9.eE+-]+)\s*qps", line):
            got["throughput_qps"] = float(m.group(1))
        elif line.startswith("Latency:"):
            got["latency_ms"] = _stats(line)
        elif line.startswith("GPU Compute Time:"):
            got["gpu_compute_ms"] = _stats(line)
    return got


def _bare(line: str) -> str:
    """A trtexec log line without its "[date] [I] " prefixes."""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())


def _stats(line: str) -> dict[str, float]:
    return {
        (f"p{k[11:-2]}" if k.startswith("percentile") else k): float(v)
        for k, v in _STAT.findall(line)
    }


def build_engine(
    onnx: Path, out: Path, precision: str, transport: Transport, timeout_s: float = 1800
) -> EngineResult:
    """Build ``out`` from ``onnx`` with trtexec on ``transport``'s device and copy it back
    (atomically: a failed build leaves nothing at ``out``)."""
    import time

    with tempfile.TemporaryDirectory(prefix="ec-trt-") as tmp:
        staged = Path(tmp) / "job"
        staged.mkdir()
        shutil.copy2(onnx, staged / "model.onnx")
        if external_data_path(onnx).exists():  # a large model's weights, beside it
            shutil.copy2(external_data_path(onnx), staged / external_data_path(onnx).name)
        args = trtexec_args("model.onnx", "model.engine", precision)
        remote = transport.stage(staged, timeout_s=min(timeout_s, 300))
        try:
            argv, cwd = transport.command(["sh", "-c", _FIND, "trtexec", *args], remote)
            start = time.perf_counter()
            try:
                res = subprocess.run(
                    argv,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"{transport.url}: trtexec did not finish within {timeout_s:.0f} s "
                    "(raise export_tensorrt's timeout_s for a large model)"
                ) from None
            seconds = time.perf_counter() - start
            text = res.stdout + res.stderr
            _check(res.returncode, text, res.stderr, onnx, transport)
            tmp_out = temp_path_for(out)
            transport.fetch(f"{remote}/model.engine", tmp_out, timeout_s=min(timeout_s, 300))
            tmp_out.replace(out)
        finally:
            transport.cleanup(remote, timeout_s=30)
    info = parse_trtexec(text)
    return EngineResult(
        out,
        transport.url,
        "trtexec " + " ".join(args),
        info.get("tensorrt"),
        info.get("device"),
        info.get("throughput_qps"),
        info["latency_ms"],
        info["gpu_compute_ms"],
        seconds,
    )


def _check(code: int, text: str, stderr: str, onnx: Path, transport: Transport) -> None:
    if code == 0 and "&&&& FAILED" not in text:
        return
    lost = transport.lost(code, stderr)
    if lost:
        raise DeviceError(f"{transport.url}: the connection was lost building the engine: {lost}")
    if code == 127:
        raise MissingToolchainError(
            f"{transport.url}: no trtexec on the device (not on PATH, not in "
            "/usr/src/tensorrt/bin): install TensorRT there (JetPack on a Jetson)"
        )
    lines = [_bare(ln) for ln in text.splitlines()]
    errors = [ln for ln, raw in zip(lines, text.splitlines(), strict=True) if "[E]" in raw]
    # TensorRT's own reason ("[TRT] ... ERROR: No importer registered for op: X", the
    # node it was parsing) comes before trtexec's generic "Engine set up failed"
    told = [ln for ln in errors if "ERROR" in ln or "While parsing" in ln or "TensorRT" in ln]
    last = (told or errors)[-3:] or [ln for ln in lines if ln][-3:]
    raise EngineBuildError(
        f"{onnx.name}: TensorRT could not build an engine on {transport.url} (trtexec exit "
        f"status {code}): {' | '.join(last)}. Check the op it names against TensorRT's "
        "supported ONNX operators, or deploy the ONNX file with ONNX Runtime instead"
    )
