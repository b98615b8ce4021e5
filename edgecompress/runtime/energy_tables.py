"""Per-target energy costs for the analytic estimate (:mod:`energy_model`): energy per MAC
at each precision, per byte of DRAM traffic, and per inference. Order-of-magnitude
estimates from the literature, each with its source; `edgecompress energy fit` replaces
them with coefficients fitted to measured runs."""

from __future__ import annotations

from dataclasses import dataclass, field

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EnergyTable:
    """Per-target energy costs. Estimates: see ``source`` and the comments above each."""

    pj_per_mac: dict[str, float]  # by precision
    pj_per_byte: float  # off-chip DRAM traffic
    fixed_uj: float  # per-inference overhead (0: the analytic model has none)
    source: str = field(default="")


# --- How the tables are built -------------------------------------------------------------
# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
# 45 nm, 0.9 V: 8b int add 0.03 pJ, mult 0.2 pJ; 32b int add 0.1 pJ, mult 3.1 pJ; fp16 add
# 0.4 pJ, mult 1.1 pJ; fp32 add 0.9 pJ, mult 3.7 pJ; 8 KB SRAM 10 pJ per 64-bit read;
# 64-bit DRAM access 1.3-2.6 nJ; ~70 pJ per instruction on a general-purpose core (fetch,
# decode, register file, control), which is why CPUs spend most energy on overhead.
# One MAC = one multiply + one add; int8 MACs accumulate in 32 bits (0.2 + 0.1 pJ).
_MAC_PJ_45NM = {"fp32": 3.7 + 0.9, "fp16": 1.1 + 0.4, "int8": 0.2 + 0.1}
_INSTRUCTION_PJ_45NM = 70.0
# Instructions issued per SIMD multiply-accumulate instruction in a GEMM/conv micro-kernel
# (the FMA itself plus loads, broadcasts and loop control, amortised): our assumption.
_INSTRUCTIONS_PER_VECTOR_MAC = 1.5
# Process scaling of energy per operation from 45 nm: factors chosen by us (not measured),
# in the spirit of A. Stillmaker and B. Baas, "Scaling equations for the accurate
# prediction of CMOS device performance from 180 nm to 7 nm", Integration, the VLSI
# Journal 58 (2017), whose tables stop at 7 nm: 0.25x for a 10 nm-class node (Samsung 8LPP
# is a 10 nm derivative), 0.2x for a 7 nm-class server CPU, 0.15x for a 4-5 nm phone SoC.
_SCALE_8NM, _SCALE_SERVER, _SCALE_4NM = 0.25, 0.2, 0.15
# DRAM energy per bit moved (array + I/O + PHY), our mid-range picks from typical published
# figures: Horowitz's DDR3-era 1.3-2.6 nJ per 64-bit access is 20-40 pJ/bit, an upper bound;
# server DDR4/DDR5 DIMMs ~10-20 pJ/bit; LPDDR4x (JEDEC JESD209-4-1, VDDQ 0.6 V) ~4-6 pJ/bit;
# LPDDR5 (JEDEC JESD209-5, VDDQ 0.5 V) ~3.5-4.5 pJ/bit.
_PJ_PER_BIT = {"ddr4/ddr5": 15.0, "lpddr4x": 5.0, "lpddr5": 4.0}


def _cpu_mac_pj(precision: str, lanes: int, scale: float) -> float:
    """Arithmetic plus the instruction overhead shared by ``lanes`` MACs per instruction."""
    overhead = _INSTRUCTION_PJ_45NM * _INSTRUCTIONS_PER_VECTOR_MAC / lanes
    return round((_MAC_PJ_45NM[precision] + overhead) * scale, 4)


def _accel_mac_pj(precision: str, overhead: float, scale: float) -> float:
    """Arithmetic times the on-chip overhead (local SRAM, register file, control)."""
    return round(_MAC_PJ_45NM[precision] * overhead * scale, 4)


def _cpu_source(node: str, scale: float, lanes: dict[str, int], dram: str) -> str:
    """Names the basis and each precision's overhead over the bare arithmetic."""
    x = {p: _cpu_mac_pj(p, n, 1.0) / _MAC_PJ_45NM[p] for p, n in lanes.items()}
    over = ", ".join(f"{p} {n} MACs/instr = {x[p]:.1f}x" for p, n in lanes.items())
    return (
        f"estimate: {_BASIS}, x{scale} for {node}; CPU instruction overhead "
        f"{_INSTRUCTION_PJ_45NM:g} pJ x {_INSTRUCTIONS_PER_VECTOR_MAC:g} instr per SIMD MAC "
        f"instruction over the arithmetic ({over}); DRAM {dram}; no fixed term"
    )


_BASIS = "Horowitz ISSCC 2014 45 nm op energies, scaled to the node (cf. Stillmaker & Baas 2017)"

ENERGY_TABLES: dict[str, EnergyTable] = {
    # Server CPU (7 nm-class), ONNX Runtime. AVX-512: 16 fp32 lanes per FMA, 64 int8 MACs
    # per VNNI vpdpbusd; most server cores lack fp16 arithmetic (ONNX Runtime computes it in
    # fp32), so fp16 costs what fp32 does.
    "host": EnergyTable(
        pj_per_mac={
            "fp32": _cpu_mac_pj("fp32", 16, _SCALE_SERVER),
            "fp16": _cpu_mac_pj("fp32", 16, _SCALE_SERVER),
            "int8": _cpu_mac_pj("int8", 64, _SCALE_SERVER),
        },
        pj_per_byte=_PJ_PER_BIT["ddr4/ddr5"] * 8,
        fixed_uj=0.0,
        source=_cpu_source(
            "a 7 nm-class server CPU (AVX-512; fp16 computed as fp32)",
            _SCALE_SERVER,
            {"fp32": 16, "int8": 64},
            "DDR4/DDR5 ~15 pJ/bit",
        ),
    ),
    # Rockchip RK3588 NPU, Samsung 8LPP, LPDDR4x on most boards (LPDDR5 boards: ~20% less
    # per bit). A MAC array reuses operands from local buffers; we charge 3x the bare
    # arithmetic for buffers and control. fp32 is not native on the NPU: priced as fp32
    # arithmetic with the same overhead.
    "rk3588": EnergyTable(
        pj_per_mac={p: _accel_mac_pj(p, 3.0, _SCALE_8NM) for p in PRECISIONS},
        pj_per_byte=_PJ_PER_BIT["lpddr4x"] * 8,
        fixed_uj=0.0,
        source=f"estimate: {_BASIS}, x{_SCALE_8NM} for Samsung 8 nm (8LPP); NPU overhead 3x "
        "the arithmetic (local SRAM, control); DRAM LPDDR4x ~5 pJ/bit (JEDEC JESD209-4-1 "
        "class); no fixed term",
    ),
    # Jetson Orin GPU, Samsung 8 nm, LPDDR5. Tensor cores (fp16, int8) amortise instruction
    # issue over a whole matrix tile: 2x for register file and shared memory. fp32 runs on
    # CUDA cores, one FFMA per lane per instruction: 4x.
    "jetson-orin": EnergyTable(
        pj_per_mac={
            "fp32": _accel_mac_pj("fp32", 4.0, _SCALE_8NM),
            "fp16": _accel_mac_pj("fp16", 2.0, _SCALE_8NM),
            "int8": _accel_mac_pj("int8", 2.0, _SCALE_8NM),
        },
        pj_per_byte=_PJ_PER_BIT["lpddr5"] * 8,
        fixed_uj=0.0,
        source=f"estimate: {_BASIS}, x{_SCALE_8NM} for Samsung 8 nm; GPU overhead 2x the "
        "arithmetic (tensor cores: fp16, int8) and 4x (CUDA-core fp32); DRAM LPDDR5 "
        "~4 pJ/bit (JEDEC JESD209-5 class); no fixed term",
    ),
    # Phone big core (4-5 nm), ONNX Runtime. NEON 128-bit: 4 fp32 / 8 fp16 lanes per FMLA,
    # 16 int8 MACs per SDOT.
    "android-arm64": EnergyTable(
        pj_per_mac={
            "fp32": _cpu_mac_pj("fp32", 4, _SCALE_4NM),
            "fp16": _cpu_mac_pj("fp16", 8, _SCALE_4NM),
            "int8": _cpu_mac_pj("int8", 16, _SCALE_4NM),
        },
        pj_per_byte=_PJ_PER_BIT["lpddr5"] * 8,
        fixed_uj=0.0,
        source=_cpu_source(
            "a 4-5 nm phone SoC (NEON FMLA/SDOT)",
            _SCALE_4NM,
            {"fp32": 4, "fp16": 8, "int8": 16},
            "LPDDR5 ~4 pJ/bit (JEDEC JESD209-5 class)",
        ),
    ),
}
