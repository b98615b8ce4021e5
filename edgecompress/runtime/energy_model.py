"""Energy per inference without a power sensor: an analytic estimate from the ONNX graph
(MACs at each precision and bytes moved to and from DRAM) times per-target energy costs,
and a fit of those costs to runs measured with a sensor.

The tables are order-of-magnitude estimates from the literature, not measurements: they
leave out static (leakage, idle) power, caches and the runtime's own work. A fit to a few
measured runs (:func:`fit_from_files`, saved by :func:`save_fit`) replaces them for that
target, and every later estimate says which numbers it used.

>>> est = estimate_energy(Path("model.onnx"), "rk3588", "int8")  # doctest: +SKIP
>>> est["kind"], est["energy_per_inference_j"]  # doctest: +SKIP
('analytic', 2.3e-06)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError, DataError, ModelLoadError
from edgecompress.runtime.energy_tables import ENERGY_TABLES, PRECISIONS, EnergyTable

_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class LayerCost:
    """What one ONNX node costs: multiply-accumulates and the bytes it moves."""

    name: str
    op_type: str
    macs: int
    weight_bytes: int
    activation_bytes: int  # inputs read + outputs written
    precision: str  # "fp32" | "fp16" | "int8"

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


# --- Graph costs ---------------------------------------------------------------------------
# Ops that only reinterpret a tensor (views, shape queries) cost nothing; Q/DQ nodes are
# folded into the layer they feed, which reads the quantized tensor directly.
_FREE_OPS = {
    "Constant", "Identity", "Dropout", "Shape", "Size", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "QuantizeLinear", "DequantizeLinear",
}  # fmt: skip
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
# op -> index of the weight input, for ops that multiply-accumulate.
_WEIGHT_INPUT = {
    "Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1,
    "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3,
}  # fmt: skip
_INT8_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}


@dataclass
class _Graph:
    shapes: dict[str, tuple[int, ...] | None]
    dtypes: dict[str, int]
    nodes: list[Any]  # NodeProto, in graph order
    producer: dict[str, Any]  # tensor name -> NodeProto
    constant: set[str]
    notes: list[str]


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    what = "export it again, or pass the .onnx file the artifact was built from"
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such ONNX file; {what}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({exc}); {what}") from exc
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: the ONNX graph has no nodes (empty or corrupt); {what}")
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError or RuntimeError
        raise ModelLoadError(
            f"{path}: ONNX shape inference failed ({exc}); check the model with "
            "onnx.checker.check_model, or export it again with static input shapes"
        ) from exc


def _index(model: Any) -> _Graph:
    g = model.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    dtypes: dict[str, int] = {}
    dynamic: list[str] = []
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        dtypes[vi.name] = t.elem_type
        if not t.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:  # a symbolic dimension (batch): priced at 1
                dims.append(1)
                dynamic.append(vi.name)
        shapes[vi.name] = tuple(dims)
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        dtypes[init.name] = init.data_type
    producer: dict[str, Any] = {}
    constant = {init.name for init in g.initializer}
    for node in g.node:
        for out in node.output:
            producer[out] = node
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)  # a runtime folds it: its output is a weight
    notes = []
    if any(a.type in (5, 10) for n in g.node for a in n.attribute):  # GRAPH, GRAPHS
        notes.append("control-flow subgraphs (If/Loop/Scan) are not costed")
    if dynamic:
        names = ", ".join(list(dict.fromkeys(dynamic))[:3])
        notes.append(f"symbolic dimensions priced as 1 (export with static shapes): {names}")
    return _Graph(shapes, dtypes, list(g.node), producer, constant, notes)


def _elements(graph: _Graph, name: str) -> int:
    shape = graph.shapes.get(name)
    if shape is None:
        graph.notes.append(f"shape of {name!r} unknown; its bytes are not counted")
        return 0
    return math.prod(shape)


def _from_int8(graph: _Graph, name: str, depth: int = 0) -> bool:
    """Whether ``name`` is a DequantizeLinear of an int8/uint8 tensor (through views)."""
    node = graph.producer.get(name)
    if node is None or depth > 8:
        return False
    if node.op_type == "DequantizeLinear":
        return graph.dtypes.get(node.input[0]) in (2, 3)  # TensorProto.UINT8, INT8
    if node.op_type in _PASS_THROUGH:
        return _from_int8(graph, node.input[0], depth + 1)
    return False


def _detect(graph: _Graph, node: Any, acts: list[str], weights: list[str]) -> str:
    if node.op_type in _INT8_OPS:
        return "int8"
    if node.op_type in _WEIGHT_INPUT:
        w = node.input[_WEIGHT_INPUT[node.op_type]]
        if _from_int8(graph, w):
            return "int8"
    elif any(_from_int8(graph, a) for a in acts):
        return "int8"
    if any(graph.dtypes.get(t) in (10, 16) for t in [*node.output, *acts, *weights]):
        return "fp16"  # FLOAT16 (10) or BFLOAT16 (16): both 2 bytes, half-precision units
    return "fp32"


def _macs(graph: _Graph, node: Any) -> int:
    op = node.op_type
    if op not in _WEIGHT_INPUT:
        return 0
    w = graph.shapes.get(node.input[_WEIGHT_INPUT[op]])
    x = graph.shapes.get(node.input[0])
    y = graph.shapes.get(node.output[0])
    if w is None or y is None or (x is None and op != "Conv"):
        graph.notes.append(f"{node.name or op}: shapes unknown, MACs not counted")
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        # weight is (Cout, Cin/group, *k): N*Cout*H*W outputs, each (Cin/group)*kh*kw MACs
        return math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        # weight is (Cin, Cout/group, *k): every input element is scattered to
        # (Cout/group)*kh*kw outputs, so counting by output positions would count stride^2 x
        return math.prod(x or ()) * math.prod(w[1:])
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = (x or (0, 0))[0 if trans_a else -1]
        return math.prod(y) * k
    # MatMul family, batched and broadcast: each output element is a K-long dot product
    return math.prod(y) * (x or (0,))[-1]


def _graph_costs(onnx_path: Path, precision: str | None) -> tuple[list[LayerCost], list[str]]:
    graph = _index(_load(Path(onnx_path)))
    costs = []
    for i, node in enumerate(graph.nodes):
        if node.op_type in _FREE_OPS or all(o in graph.constant for o in node.output):
            continue
        inputs = [t for t in node.input if t]
        weights = [t for t in inputs if t in graph.constant]
        acts = [t for t in inputs if t not in graph.constant]
        prec = precision or _detect(graph, node, acts, weights)
        size = _BYTES[prec]
        w_elems = sum(_elements(graph, t) for t in weights)
        a_elems = sum(_elements(graph, t) for t in [*acts, *(o for o in node.output if o)])
        costs.append(
            LayerCost(
                name=node.name or f"{node.op_type}_{i}",
                op_type=node.op_type,
                macs=_macs(graph, node),
                weight_bytes=w_elems * size,
                activation_bytes=a_elems * size,
                precision=prec,
            )
        )
    return costs, list(dict.fromkeys(graph.notes))


def layer_costs(onnx_path: Path, precision: str | None = None) -> list[LayerCost]:
    """MACs and bytes of every node in the ONNX graph that does work, in graph order.

    ``precision`` prices every layer at it (an FP32 graph run at fp16/int8 on a target);
    ``None`` detects it per layer: int8 behind DequantizeLinear of int8/uint8 (QDQ), fp16
    for half-precision tensors, else fp32. Q/DQ nodes and views are folded away.
    """
    _check_precision(precision)
    return _graph_costs(onnx_path, precision)[0]


def _check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} has no energy costs; use one of {', '.join(PRECISIONS)}"
        )


# --- Estimate -------------------------------------------------------------------------------
def default_fit_path(target: str) -> Path:
    """``$EDGECOMPRESS_CACHE/energy/<target>.json`` (cache default ``~/.cache/edgecompress``)."""
    cache = os.environ.get("EDGECOMPRESS_CACHE", str(Path.home() / ".cache" / "edgecompress"))
    return Path(cache) / "energy" / f"{target}.json"


def _table(target: str) -> EnergyTable:
    try:
        return ENERGY_TABLES[target]
    except KeyError:
        raise ConfigError(
            f"no energy table for target {target!r}; known: {', '.join(ENERGY_TABLES)}"
        ) from None


def _table_coefficients(table: EnergyTable) -> dict[str, Any]:
    return {
        "pj_per_mac": dict(table.pj_per_mac),
        "pj_per_byte": table.pj_per_byte,
        "fixed_uj": table.fixed_uj,
    }


def estimate_energy(
    onnx_path: Path,
    target: str,
    precision: str | None = None,
    coefficients: Path | None = None,
) -> dict[str, Any]:
    """Energy per inference of ``onnx_path`` on ``target``, as a JSON-able dict.

    Uses the fit at ``coefficients``, else the target's fit in the cache when there is
    one (``kind: "fitted"``), else the literature table (``kind: "analytic"``).
    """
    _check_precision(precision)
    kind, coef, source = _coefficients_for(target, coefficients)
    costs, notes = _graph_costs(Path(onnx_path), precision)
    mac_j = {p: float(coef["pj_per_mac"][p]) * 1e-12 for p in PRECISIONS}
    byte_j = float(coef["pj_per_byte"]) * 1e-12
    per_layer = [c.macs * mac_j[c.precision] + c.bytes * byte_j for c in costs]
    compute_j = sum(c.macs * mac_j[c.precision] for c in costs)
    memory_j = sum(c.bytes for c in costs) * byte_j
    fixed_j = float(coef["fixed_uj"]) * 1e-6
    features = _features(costs)
    top = sorted(zip(per_layer, costs, strict=True), key=lambda t: -t[0])[:5]
    return {
        "kind": kind,
        "target": target,
        "precision": precision or _dominant(features),
        "precision_source": "given" if precision else "detected from the graph",
        "energy_per_inference_j": compute_j + memory_j + fixed_j,
        "compute_j": compute_j,
        "memory_j": memory_j,
        "fixed_j": fixed_j,
        "features": features,
        "top_layers": [_layer_row(c, e) for e, c in top],
        "coefficients": coef,
        "source": source,
        "notes": notes,
    }


def _coefficients_for(target: str, path: Path | None) -> tuple[str, dict[str, Any], str]:
    """(kind, coefficients, source): the fit at ``path``, else the cached fit, else the table."""
    table = _table(target)
    fit_path = Path(path) if path is not None else default_fit_path(target)
    if path is None and not fit_path.is_file():
        return "analytic", _table_coefficients(table), table.source
    fit = load_fit(fit_path)
    if fit["target"] != target:
        raise ConfigError(
            f"{fit_path}: coefficients were fitted for {fit['target']!r}, not {target!r}; "
            f"pass that target's fit file or fit {target} first"
        )
    runs = f"fitted to {fit['runs']} measured runs ({fit['method']})"
    return "fitted", fit["coefficients"], f"{fit_path}: {runs}; table: {table.source}"


def _layer_row(c: LayerCost, energy_j: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": c.name, "op_type": c.op_type, "macs": c.macs}
    return row | {"bytes": c.bytes, "precision": c.precision, "energy_j": energy_j}


def _features(costs: Sequence[LayerCost]) -> dict[str, Any]:
    macs = {p: sum(c.macs for c in costs if c.precision == p) for p in PRECISIONS}
    return {"macs": macs, "bytes": sum(c.bytes for c in costs)}


def _dominant(features: dict[str, Any]) -> str:
    used = [p for p in PRECISIONS if features["macs"][p] > 0]
    if len(used) > 1:
        return "mixed"
    return used[0] if used else "fp32"


# --- Fit ------------------------------------------------------------------------------------
# E = sum_p macs[p] * c_mac[p] + bytes * c_byte + c_fixed, all c >= 0.
_COLUMNS = (*(f"pj_per_mac.{p}" for p in PRECISIONS), "pj_per_byte", "fixed_uj")


def _to_vector(coef: dict[str, Any]) -> np.ndarray:
    """Coefficients in joules per MAC / byte / inference, in ``_COLUMNS`` order."""
    macs = [float(coef["pj_per_mac"][p]) * 1e-12 for p in PRECISIONS]
    return np.array([*macs, float(coef["pj_per_byte"]) * 1e-12, float(coef["fixed_uj"]) * 1e-6])


def _from_vector(v: np.ndarray) -> dict[str, Any]:
    return {
        "pj_per_mac": {p: float(v[i]) * 1e12 for i, p in enumerate(PRECISIONS)},
        "pj_per_byte": float(v[3]) * 1e12,
        "fixed_uj": float(v[4]) * 1e6,
    }


def _measurement(result: Any, where: str) -> tuple[list[float], float]:
    """(features row, measured joules) of one bench result; DataError naming ``where``."""
    energy = result.get("energy") if isinstance(result, dict) else None
    measured = (energy or {}).get("measured") or {}
    joules = measured.get("energy_per_inference_j") if isinstance(measured, dict) else None
    if not isinstance(joules, int | float) or not math.isfinite(joules) or joules <= 0:
        raise DataError(
            f"{where}: no measured energy (energy.measured.energy_per_inference_j is "
            f"{joules!r}); bench with a power sensor (`edgecompress bench --sensor ...` or "
            "--host-sensor) to get results a fit can use"
        )
    features = ((energy or {}).get("analytic") or {}).get("features")
    try:
        macs = [float(features["macs"].get(p, 0)) for p in PRECISIONS]  # type: ignore[index]
        row = [*macs, float(features["bytes"]), 1.0]  # type: ignore[index]
    except (TypeError, KeyError, AttributeError, ValueError):
        raise DataError(
            f"{where}: no analytic features (energy.analytic.features with macs and bytes); "
            "bench an .onnx file, or pass --onnx with the graph behind the artifact"
        ) from None
    return row, float(joules)


def fit_coefficients(target: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fit the target's energy coefficients to bench results with measured energy.

    Non-negative least squares on relative error. Coefficients the runs cannot determine
    (a precision no run used) keep the table value; with fewer runs than free coefficients,
    or runs that do not separate them, one scale factor on the table's estimate is fitted.
    Results that carry another ``target`` are skipped with a note.
    """
    named = [(f"result {i} ({r.get('artifact', 'no artifact')})", r) for i, r in enumerate(results)]
    return _fit(target, named, [])


def _fit(target: str, named: list[tuple[str, dict[str, Any]]], notes: list[str]) -> dict[str, Any]:
    rows, ys, labels = [], [], []
    for label, result in named:
        if result.get("target") not in (None, target):
            notes.append(f"{label}: skipped, measured on target {result['target']!r}")
            continue
        row, joules = _measurement(result, label)
        rows.append(row)
        ys.append(joules)
        labels.append(label)
    if not rows:
        raise DataError(f"no bench results for target {target!r} to fit; {'; '.join(notes)}")
    return _report(target, np.array(rows), np.array(ys), labels, notes)


def _solve(
    target: str, x: np.ndarray, y: np.ndarray, t: np.ndarray, notes: list[str]
) -> tuple[np.ndarray, float | None, list[int]]:
    """(coefficients in J, the scale factor when only one was fitted, free columns)."""
    free = [j for j in range(len(_COLUMNS)) if j == len(_COLUMNS) - 1 or np.any(x[:, j] > 0)]
    # Unknowns are multipliers of a per-column scale (the table value where it has one) so
    # NNLS sees numbers near 1, not 1e-12; rows divided by y weight every run equally.
    scale = np.where(t > 0, t, y.mean() / np.maximum(x.mean(axis=0), 1e-30))
    a = x[:, free] * scale[free] / y[:, None]
    rank = int(np.linalg.matrix_rank(a))
    if len(y) >= len(free) and rank == len(free):
        from scipy.optimize import nnls

        v = t.copy()
        v[free] = nnls(a, np.ones(len(y)))[0] * scale[free]
        return v, None, free
    ratio = (x @ t) / y
    if not np.any(ratio > 0):
        raise DataError(f"{target}: the runs' features are all zero; nothing to fit")
    factor = float(ratio.sum() / (ratio * ratio).sum())  # least relative squared error
    notes.append(
        f"{len(y)} runs of rank {rank} cannot determine {len(free)} coefficients "
        f"({', '.join(_COLUMNS[j] for j in free)}): fitted one scale factor on the table"
    )
    return t * factor, factor, free


def _report(
    target: str, x: np.ndarray, y: np.ndarray, labels: list[str], notes: list[str]
) -> dict[str, Any]:
    table = _table(target)
    t = _to_vector(_table_coefficients(table))
    v, factor, free = _solve(target, x, y, t, notes)
    before, after = x @ t, x @ v
    err_before, err_after = (before - y) / y, (after - y) / y
    values = [[float(u) for u in c] for c in (y, before, after, err_before, err_after)]
    keys = ("run", "measured_j", "table_j", "fitted_j", "rel_error_table", "rel_error_fit")
    return {
        "target": target,
        "kind": "fitted",
        "method": "nnls" if factor is None else "scale",
        "runs": len(y),
        "coefficients": _from_vector(v),
        "table_coefficients": _table_coefficients(table),
        "fitted": [_COLUMNS[j] for j in free] if factor is None else ["scale"],
        "kept_from_table": [c for j, c in enumerate(_COLUMNS) if factor is None and j not in free],
        "scale": factor,
        "mean_abs_rel_error_table": float(np.abs(err_before).mean()),
        "mean_abs_rel_error_fit": float(np.abs(err_after).mean()),
        "residuals": [dict(zip(keys, r, strict=True)) for r in zip(labels, *values, strict=True)],
        "notes": notes,
        "table_source": table.source,
    }


def fit_from_files(target: str, paths: Sequence[Path]) -> dict[str, Any]:
    """Fit ``target`` to ``bench --json`` files (one result or a list of them per file).
    Results measured on another target, or left incomplete by a disconnect, are skipped
    with a note."""
    named, notes = [], []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable JSON bench result ({exc})") from exc
        entries = data if isinstance(data, list) else [data]
        for k, entry in enumerate(entries):
            where = str(path) if len(entries) == 1 else f"{path} [{k}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected a bench result object, found {entry!r:.60}")
            if entry.get("complete") is False:
                notes.append(f"{where}: skipped, incomplete run (device disconnected)")
                continue
            named.append((where, entry))
    fit = _fit(target, named, notes)
    fit["files"] = [str(p) for p in paths]
    return fit


def save_fit(fit: dict[str, Any], path: Path | None = None) -> Path:
    """Write a fit atomically (default: the target's file in the cache, which later
    estimates then use) and return where."""
    from edgecompress.io import atomic_write_json

    out = Path(path) if path is not None else default_fit_path(str(fit["target"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, fit)
    return out


def load_fit(path: Path) -> dict[str, Any]:
    """Read and validate a fit file written by :func:`save_fit`."""
    path = Path(path)
    fix = f"delete {path} or fit again (`edgecompress energy fit`)"
    try:
        fit = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable energy fit ({exc}); {fix}") from exc
    try:
        if not isinstance(fit["target"], str) or not isinstance(fit["runs"], int):
            raise TypeError("target must be a string and runs an integer")
        v = _to_vector(fit["coefficients"])
        fit.setdefault("method", "unknown")
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not an energy fit (missing or malformed: {exc}); {fix}") from None
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise DataError(f"{path}: coefficients must be finite and >= 0; {fix}")
    return dict(fit)
