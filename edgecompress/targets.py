"""One profile per device, as data. Device quirks live here, not in ``if`` statements
scattered through the passes."""

from __future__ import annotations

import platform
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecompress.errors import ConfigError
from edgecompress.exporters.registry import EXPORTERS, deployed_suffixes, writes


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    int4 = "int4"


class BuildDefaults(BaseModel):
    """What the default build does for a target when the recipe names no stages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep: float = Field(0.5, gt=0, lt=1, description="fraction of MACs the pruning keeps")
    distill_epochs: int = Field(10, ge=1, description="recovery after pruning")
    qat_epochs: int = Field(2, ge=1, description="per rung of the bit-width ladder")
    ladder: tuple[int, ...] = Field(
        (8,), description="weight bits, stepped down; the last is what the device executes"
    )


class TargetProfile(BaseModel):
    """What a device can execute and what it costs there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    precisions: tuple[Precision, ...]
    default_precision: Precision
    channel_alignment: int = Field(1, ge=1, description="widths are best as multiples of this")
    exporters: tuple[str, ...] = Field(
        description="registered exporters (edgecompress.exporters.registry), in order; the "
        "last writes the file the device runs"
    )
    runtime: str = Field(description="the runtime that executes the artifact on the device")
    onnx_opset: int = 17
    peak_ops_per_s: float = Field(description="peak arithmetic throughput at default precision")
    power_envelope_w: tuple[float, float] = Field(description="(idle, peak) board power, watts")
    quant_symmetric_weights: bool = True
    quant_symmetric_activations: bool = False
    # How INT8 QDQ ONNX stores weights: "s8" (int8, what vendor toolchains read), "u8"
    # (the same values as uint8: exact where uint8 x int8 kernels saturate, but on AVX2
    # no faster than FP32), "s7" (int8 holding 7-bit values, which cannot saturate: the
    # ladder's last rung trains them), or "auto": measured by `edgecompress probe`, else
    # s7 on a CPU whose uint8 x int8 kernels saturate and s8 elsewhere.
    int8_weights: str = Field("s8", pattern="^(s8|u8|s7|auto)$")
    # INT8 files carry biases as int32 behind a DequantizeLinear (ONNX Runtime's integer
    # kernels, RKNN) or float (TensorRT's explicit quantization reads int8 Q/DQ only).
    int8_bias: bool = True
    rknn_platform: str | None = None
    defaults: BuildDefaults = BuildDefaults()
    source: str = Field("", description="where the numbers come from")
    # The target is the machine the build runs on: it can be probed and timed here.
    on_this_machine: bool = False
    # Conv/linear layers with fewer input channels stay float in INT8 files (a first layer
    # on 1-3 channels, where a CPU's INT8 kernel ran slower than FP32): measured.
    int8_min_in_channels: int = Field(1, ge=1)
    # ONNX Runtime's graph optimisation level the deployed file is timed at.
    graph_optimization: str = Field("all", pattern="^(basic|extended|all)$")
    # What `edgecompress probe` measured, where the profile came from a probe.
    measured: dict[str, Any] | None = None

    @field_validator("exporters")
    @classmethod
    def _registered(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in EXPORTERS]
        if unknown or not names:
            raise ValueError(
                f"unknown exporter(s) {', '.join(unknown) or '(none given)'}; registered: "
                f"{', '.join(EXPORTERS)} (edgecompress.exporters.registry.register_exporter)"
            )
        return names

    @property
    def suffixes(self) -> tuple[str, ...]:
        """How the files the device runs are named (what its last exporter writes)."""
        return deployed_suffixes(self.exporters)


TARGETS: dict[str, TargetProfile] = {
    t.name: t
    for t in (
        TargetProfile(
            name="host",
            description="this machine's CPU through ONNX Runtime",
            precisions=(Precision.fp32, Precision.int8),
            default_precision=Precision.fp32,
            # ONNX Runtime's x86 convolutions work on 16-channel blocks with AVX-512 (8 with
            # AVX2): measured here in two runs, L1 pruning to 50% MACs ran at 0.95-1.03x the
            # unpruned latency with free widths and 0.49-0.52x rounded to 16 (BENCHMARKS.md).
            channel_alignment=16,
            exporters=("onnx",),
            runtime="onnxruntime",
            int8_weights="auto",
            peak_ops_per_s=1.0e12,
            power_envelope_w=(10.0, 150.0),
            source="nominal server CPU; alignment measured with ONNX Runtime on AVX-512 "
            "(`edgecompress probe` measures this machine)",
            on_this_machine=True,
        ),
        TargetProfile(
            name="rk3588",
            description="Rockchip RK3588 NPU (3 cores) through RKNN",
            precisions=(Precision.int8, Precision.fp16),
            default_precision=Precision.int8,
            channel_alignment=16,
            exporters=("onnx", "rknn"),
            runtime="rknn",
            onnx_opset=17,
            peak_ops_per_s=6.0e12,
            power_envelope_w=(1.5, 8.0),
            quant_symmetric_weights=False,
            quant_symmetric_activations=False,
            rknn_platform="rk3588",
            source="Rockchip RK3588 datasheet: 6 TOPS INT8 NPU; RKNN asymmetric int8",
        ),
        TargetProfile(
            name="jetson-orin",
            description="NVIDIA Jetson Orin GPU through TensorRT",
            precisions=(Precision.fp16, Precision.int8, Precision.fp32),
            default_precision=Precision.fp16,
            channel_alignment=8,
            exporters=("onnx", "tensorrt"),
            runtime="tensorrt",
            peak_ops_per_s=2.75e14,
            power_envelope_w=(5.0, 60.0),
            quant_symmetric_weights=True,
            quant_symmetric_activations=True,
            int8_bias=False,
            source="Jetson AGX Orin 64GB module datasheet: 275 TOPS sparse INT8, 15-60 W",
        ),
        TargetProfile(
            name="android-arm64",
            description="phone CPU (Arm64) through ONNX Runtime",
            precisions=(Precision.fp32, Precision.int8),
            default_precision=Precision.fp32,
            channel_alignment=4,
            exporters=("onnx",),
            runtime="onnxruntime",
            int8_weights="auto",
            peak_ops_per_s=2.0e11,
            power_envelope_w=(0.5, 5.0),
            source="nominal big-core Arm64 phone CPU; NEON 128-bit lanes hold 4 fp32",
        ),
    )
}


def u8s8_saturates() -> bool:
    """True on an x86-64 CPU without VNNI (AVX2, AVX-512F): ONNX Runtime multiplies
    uint8 activations by int8 weights there with VPMADDUBSW, whose int16 pair sums
    saturate for weights beyond +-64, so results drift by many quantization steps
    (measured here on an AVX2 EPYC: 14 output steps on a two-conv model; none with uint8
    weights, 7-bit weights or VNNI). The static guess; `edgecompress probe` measures it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # cannot tell: keep the faster format
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


def static_int8_weights() -> str:
    """``int8_weights: auto`` without a measurement, for this CPU: 7-bit int8 weights
    where uint8 x int8 kernels saturate (exact, and on AVX2 the fast kernels: uint8
    weights ran no faster than FP32 there), else int8."""
    return "s7" if u8s8_saturates() else "s8"


def target_for_file(path: Path) -> str:
    """The first profile whose device runs a file named like ``path`` (``host`` for an
    ONNX file, ``rk3588`` for ``.rknn``, ``jetson-orin`` for ``.engine``)."""
    for profile in TARGETS.values():
        if writes(Path(path), profile.exporters):
            return profile.name
    known = sorted({s for t in TARGETS.values() for s in t.suffixes})
    raise ConfigError(f"{path}: no target runs such a file (known: {', '.join(known)})")


def get_target(name: str) -> TargetProfile:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown target {name!r}; known targets: {', '.join(TARGETS)} "
            "(`edgecompress targets` lists them)"
        ) from None
