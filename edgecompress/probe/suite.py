"""The probe's models: small ONNX graphs whose timings answer what a build has to choose
on a machine. Built with ``onnx`` and NumPy only (no torch, no ONNX Runtime
quantizer), written once per probe and timed on the device by the agent.

- ``align_fp32_wN`` / ``align_int8_wN``: one 3x3 convolution N -> N channels at 28x28
  (+ ReLU), N over a sweep of widths, FP32 and INT8 QDQ: where the runtime's kernels
  step (x86 NCHWc blocks of 8 with AVX2, 16 with AVX-512).
- ``block_*``: three convolutions at 64 channels, 28x28 (3x3, 3x3, 1x1, ReLUs), FP32 and
  INT8 QDQ with the weights stored three ways: ``s8`` (int8, the full 8-bit range),
  ``u8`` (the same values as uint8 with zero point 128) and ``s7`` (int8 holding 7-bit
  values, |q| <= 64). ``s8`` and ``u8`` hold identical integers: if their outputs differ
  the runtime's uint8 x int8 kernel saturates (x86 without VNNI: VPMADDUBSW sums pairs
  of u8 x s8 products into int16, and 2 x 255 x 127 does not fit; 2 x 255 x 64 does).
- ``stem_fp32_cN`` / ``stem_int8_cN``: a 3x3 convolution from N input channels to 32
  (a network's first layer), FP32 and INT8: below some N the INT8 kernel's fixed costs
  outweigh its arithmetic (ONNX Runtime on AVX2: 41 us INT8 against 21 us FP32 for the
  digits ResNet's 3 -> 16 stem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALIGN_WIDTHS = tuple(range(24, 65))
STEM_CHANNELS = (1, 3, 4, 8, 16)  # input channels of a first layer (grey, RGB, ...)
STEM_WIDTH = 32
BLOCK_WIDTH = 64
SIZE = 28
WEIGHT_FORMS = ("s8", "u8", "s7")
LEVELS = ("basic", "extended", "all")  # ONNX Runtime's graph optimisation levels
# Input scale: random normal inputs span most of uint8 (0..255), so s8 saturates where
# the kernel can.
X_SCALE, X_ZERO = 0.02, 128


@dataclass(frozen=True)
class SuiteModel:
    name: str
    path: Path
    level: str  # ONNX Runtime graph optimisation level to time it at
    kind: str  # "align", "block", "stem"
    precision: str  # "fp32", "int8"
    width: int = BLOCK_WIDTH  # output channels ("align"), input channels ("stem")
    weights: str = ""  # an INT8 model's weight storage: s8, u8, s7

    def job(self, folder: str) -> dict[str, str]:
        return {"name": self.name, "file": f"{folder}/{self.path.name}", "level": self.level}


def build_suite(folder: Path, levels: tuple[str, ...] = LEVELS) -> list[SuiteModel]:
    """Write every probe model into ``folder``; the list says what each one is."""
    folder.mkdir(parents=True, exist_ok=True)
    models: list[SuiteModel] = []

    def add(name: str, graph: bytes, level: str, **kw: object) -> None:
        path = folder / f"{name}.onnx"
        path.write_bytes(graph)
        models.append(SuiteModel(name, path, level, **kw))  # type: ignore[arg-type]

    for w in ALIGN_WIDTHS:
        add(f"align_fp32_w{w}", _convs(w, ((3, w),), None), "all", kind="align",
            precision="fp32", width=w)  # fmt: skip
        add(f"align_int8_w{w}", _convs(w, ((3, w),), "s7"), "all", kind="align",
            precision="int8", width=w)  # fmt: skip
    for c in STEM_CHANNELS:
        stem = ((3, STEM_WIDTH),)
        add(f"stem_fp32_c{c}", _convs(c, stem, None), "all", kind="stem", precision="fp32",
            width=c)  # fmt: skip
        add(f"stem_int8_c{c}", _convs(c, stem, "s7"), "all", kind="stem", precision="int8",
            width=c)  # fmt: skip
    layers = ((3, BLOCK_WIDTH), (3, BLOCK_WIDTH), (1, BLOCK_WIDTH))
    for level in levels:
        add(f"block_fp32_{level}", _convs(BLOCK_WIDTH, layers, None), level, kind="block",
            precision="fp32")  # fmt: skip
        for form in WEIGHT_FORMS:
            add(f"block_int8_{form}_{level}", _convs(BLOCK_WIDTH, layers, form), level,
                kind="block", precision="int8", weights=form)  # fmt: skip
    return models


def _convs(c_in: int, layers: tuple[tuple[int, int], ...], form: str | None) -> bytes:
    """Convolutions (kernel, out channels) with ReLUs on a 1 x c_in x 28 x 28 input; INT8
    QDQ (uint8 activations, per-channel symmetric weights stored as ``form``) or FP32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(c_in)
    nodes: list[Any] = []
    inits: list[Any] = []
    x = "x"
    if form:
        x = _qdq(nodes, inits, x, "in", X_SCALE, X_ZERO)
    c = c_in
    for i, (k, out) in enumerate(layers):
        w = (rng.standard_normal((out, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
        wname = f"w{i}"
        if form:
            wname = _quantized_weight(nodes, inits, w, f"w{i}", form)
        else:
            inits.append(numpy_helper.from_array(w, wname))
        nodes.append(helper.make_node("Conv", [x, wname], [f"c{i}"], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
        if form:
            x = _qdq(nodes, inits, x, f"a{i}", 0.05, 0)
        c = out
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, SIZE, SIZE])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, SIZE, SIZE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the ONNX Runtime releases boards still ship
    return bytes(model.SerializeToString())


def _qdq(nodes: list, inits: list, x: str, name: str, scale: float, zero: int) -> str:
    from onnx import helper, numpy_helper

    inits += [
        numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
        numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_z"),
    ]
    nodes += [
        helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                         [f"{name}_dq"]),
    ]  # fmt: skip
    return f"{name}_dq"


def _quantized_weight(nodes: list, inits: list, w: np.ndarray, name: str, form: str) -> str:
    """Per-output-channel symmetric weights at 127 levels a side (64 for ``s7``), stored
    as int8 or (``u8``) as uint8 with zero point 128, behind a DequantizeLinear."""
    from onnx import helper, numpy_helper

    levels = 64 if form == "s7" else 127
    scale = np.abs(w).reshape(len(w), -1).max(1) / levels
    q = np.clip(np.round(w / scale[:, None, None, None]), -levels, levels)
    if form == "u8":
        stored, zero = (q + 128).astype(np.uint8), np.full(len(w), 128, np.uint8)
    else:
        stored, zero = q.astype(np.int8), np.zeros(len(w), np.int8)
    inits += [
        numpy_helper.from_array(stored, f"{name}_q"),
        numpy_helper.from_array(scale.astype(np.float32), f"{name}_s"),
        numpy_helper.from_array(zero, f"{name}_z"),
    ]
    nodes.append(
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name],
                         axis=0)
    )  # fmt: skip
    return name
