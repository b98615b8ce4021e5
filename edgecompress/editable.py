"""Every accepted model form made editable: real ``nn.Conv2d``/``nn.Linear``/
``nn.BatchNorm2d`` layers that pruning (Torch-Pruning's dependency graph) and QAT
(torch.fx) can rewrite.

TorchScript modules take no forward hooks and a ``torch.export`` program's leaves are aten
calls, so both go through ONNX: exported (the TorchScript exporter keeps BatchNorm a node of
its own), constants folded to initializers by onnxslim (onnx2torch fails on Constant nodes),
rebuilt as a ``torch.fx.GraphModule`` by onnx2torch, and onnx2torch's wrappers for adds,
concats, pooling and reshapes swapped for plain torch ops. Every conversion is checked
numerically, and an op that cannot be converted is named before any training starts.
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from edgecompress.errors import ModelLoadError, UnsupportedOpError

TOLERANCE = 1e-4  # max abs diff relative to the output's largest magnitude
OPSET = 17  # onnx2torch 1.5.15 converts opset <= 17 (ReduceMean-18 takes axes as an input)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
WHAT_TO_DO = (
    "To compress it, give the PyTorch model instead: its state_dict with --arch "
    "module:factory (or torchvision:NAME), or the whole pickled module with --trust-pickle. "
    "To deploy it as it is, convert it with post-training quantization only "
    "(`edgecompress convert`)"
)


def needs_conversion(module: nn.Module) -> bool:
    """A ScriptModule, or a module with no conv/linear layers of its own (a ``torch.export``
    program's ``module()`` holds only parameters and aten calls)."""
    if isinstance(module, torch.jit.ScriptModule):
        return True
    return not any(isinstance(m, LAYERS) for m in module.modules())


def make_editable(module: nn.Module, example: Tensor, *, source: str) -> nn.Module:
    """Return ``module`` itself when pruning and QAT can already edit it, else an equivalent
    ``torch.fx.GraphModule`` with real layers, checked on ``example`` (whose shape it is
    fixed to). ``source`` names the model in errors. Runs no training."""
    if not needs_conversion(module):
        return module
    was_training = module.training
    _set_mode(module, False)
    try:
        proto = _to_onnx(module, example, source)
        with torch.no_grad():
            reference = module(example)
    finally:
        _set_mode(module, was_training)
    gm = onnx_to_editable(proto, example, source=source)
    check_close(reference, gm, example, source)
    return gm


def _set_mode(module: nn.Module, training: bool) -> None:
    # An exported program's module refuses eval(): its mode was fixed when it was exported.
    with contextlib.suppress(NotImplementedError):
        module.train(training)


def _to_onnx(module: nn.Module, example: Tensor, source: str) -> Any:
    """The TorchScript exporter first (it works on ScriptModules and on exported programs'
    modules, and keeps BatchNorm unfused); the dynamo exporter where it fails."""
    import onnx

    quiet = contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buf,  # type: ignore[arg-type]  # a BytesIO works
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE,  # eval BN stays a layer
            )
            return onnx.load_from_string(buf.getvalue())
        except Exception as exc:
            error = exc
        if not isinstance(module, torch.jit.ScriptModule):
            try:
                program = torch.onnx.export(module, (example,), dynamo=True, verbose=False)
                if program is not None:
                    return program.model_proto
            except Exception as exc:
                error = exc
    raise ModelLoadError(
        f"{source}: cannot be made editable: exporting it to ONNX (the route to editable "
        f"layers) failed: {_first_line(error)}. {WHAT_TO_DO}"
    ) from error


def onnx_to_editable(proto: Any, example: Tensor | None, *, source: str) -> fx.GraphModule:
    """ONNX graph -> GraphModule with real layers, its input fixed to ``example``'s shape
    (or the graph's own static shape when ``example`` is None)."""
    import onnx2torch

    proto = _fix_input_shape(proto, example, source)
    proto = _allow_no_zero(_downgrade(_simplify(proto)))
    unsupported_ops(proto, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx2torch.convert(proto)
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: cannot be made editable: onnx2torch cannot convert "
            f"{_failing_node(proto) or _first_line(exc)}. {WHAT_TO_DO}"
        ) from exc
    gm.eval()
    return _tidy(gm, torch.zeros(input_shape(proto, source)) if example is None else example)


def load_onnx_editable(proto: Any, example: Tensor | None, *, source: str) -> fx.GraphModule:
    """An ONNX model as an editable module, checked against ONNX Runtime on ``example``
    (random data of the graph's static input shape when None)."""
    import onnxruntime as ort

    if example is None:
        example = torch.randn(
            input_shape(proto, source), generator=torch.Generator().manual_seed(0)
        )
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(proto.SerializeToString(), opts, ["CPUExecutionProvider"])
        reference = sess.run(None, {_graph_input(proto, source).name: example.numpy()})[0]
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: ONNX Runtime cannot run the model on a {tuple(example.shape)} input: "
            f"{_first_line(exc)}"
        ) from exc
    gm = onnx_to_editable(proto, example, source=source)
    check_close(reference, gm, example, source)
    return gm


def _graph_input(proto: Any, source: str) -> Any:
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{source}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)});"
            " only single-input models can be compressed"
        )
    if inputs[0].type.tensor_type.elem_type != 1:  # TensorProto.FLOAT
        raise ModelLoadError(f"{source}: input {inputs[0].name!r} is not float32; it must be")
    return inputs[0]


def input_shape(proto: Any, source: str) -> tuple[int, ...]:
    """The graph input's static shape; a symbolic dimension is an error that names it."""
    value = _graph_input(proto, source)
    for i, d in enumerate(value.type.tensor_type.shape.dim):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise ModelLoadError(
                f"{source}: input {value.name!r} dimension {i} is symbolic "
                f"({d.dim_param or '?'}); give an example input of the shape to compress at "
                "(e.g. 1x3x224x224)"
            )
    return tuple(int(d.dim_value) for d in value.type.tensor_type.shape.dim)


def _fix_input_shape(proto: Any, example: Tensor | None, source: str) -> Any:
    if example is None:
        input_shape(proto, source)  # raises on a symbolic dimension
        return proto
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # the caller's stays as is
    value = _graph_input(proto, source)
    dims = value.type.tensor_type.shape.dim
    if len(dims) != example.dim():
        raise ModelLoadError(
            f"{source}: input {value.name!r} has {len(dims)} dimensions, the example "
            f"{tuple(example.shape)} has {example.dim()}"
        )
    for d, n in zip(dims, example.shape, strict=True):
        d.dim_value = int(n)
    del proto.graph.value_info[:]  # inferred again at the fixed shape
    return proto


def _simplify(proto: Any) -> Any:
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Keep BatchNorm a layer of its own (slimming and QAT folding want it); never tie
        # equal weights (two fresh layers would become one).
        return onnxslim.slim(
            proto, skip_fusion_patterns=["FusionConvBN"], skip_optimizations=["weight_tying"]
        )


def _downgrade(proto: Any) -> Any:
    """Opset 18+ graphs (the dynamo exporter's) down to the opset onnx2torch converts;
    with constants folded, Reduce* axes are initializers and this works. Where it does
    not, the graph stays as it is and unsupported_ops names what is left."""
    import onnx

    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version <= OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, OPSET)
    except Exception:
        return proto


def unsupported_ops(proto: Any, source: str) -> None:
    """Raise naming every op onnx2torch has no converter for (before converting anything)."""
    from onnx2torch.node_converters.registry import get_converter

    opset = {o.domain or "": o.version for o in proto.opset_import}
    missing: Counter[str] = Counter()
    first: dict[str, str] = {}
    for node in proto.graph.node:
        try:
            get_converter(node.op_type, opset.get(node.domain or "", OPSET), node.domain or "")
        except NotImplementedError:
            key = f"{node.domain + '.' if node.domain else ''}{node.op_type}"
            missing[key] += 1
            first.setdefault(key, node.name or node.output[0])
    if missing:
        ops = ", ".join(f"{op} (x{n}, e.g. node {first[op]!r})" for op, n in missing.items())
        raise ModelLoadError(
            f"{source}: cannot be made editable: onnx2torch has no converter for {ops} "
            f"(opset {opset.get('', '?')}). {WHAT_TO_DO}"
        )


def _failing_node(proto: Any) -> str | None:
    """Which node onnx2torch's converters refuse, and why (its own errors do not say)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    graph = OnnxGraph(safe_shape_inference(proto).graph)
    opset = {o.domain or "": o.version for o in proto.opset_import}
    for name, node in graph.nodes.items():
        try:
            convert = get_converter(node.operation_type, opset.get(node.domain, OPSET), node.domain)
            convert(node, graph)
        except Exception as exc:
            return f"{node.operation_type} (node {name!r}): {_first_line(exc)}"
    return None


def _allow_no_zero(proto: Any) -> Any:
    """The dynamo exporter writes Reshape with allowzero=1, which onnx2torch refuses; it only
    matters where the target shape holds a 0, so it is dropped where a constant one holds
    none."""
    from onnx import numpy_helper

    consts = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in consts:
            continue
        if not (numpy_helper.to_array(consts[node.input[1]]) == 0).any():
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return proto


def check_close(
    reference: Tensor | np.ndarray, gm: nn.Module, example: Tensor, source: str
) -> None:
    """The converted module must compute what the original did on ``example``."""
    with torch.no_grad():
        out = gm(example)
    ref = torch.as_tensor(reference).float()
    if not isinstance(out, Tensor) or out.shape != ref.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelLoadError(
            f"{source}: the converted module returns {got}, the original {tuple(ref.shape)}"
        )
    rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if not rel <= TOLERANCE:
        raise ModelLoadError(
            f"{source}: the editable module differs from the original by {rel:.2e} (max abs "
            f"diff relative to the output) > {TOLERANCE}; please report this model. {WHAT_TO_DO}"
        )


class FixedReshape(nn.Module):
    """A reshape to a shape written into the ONNX graph (fixed when the model was
    converted at one batch size). A shape that keeps its input's first dimension keeps the
    batch: any batch runs (the graph computed it with Shape -> Concat). Pruning channels
    that pass through it breaks it; the error then names it, not a raw shape mismatch."""

    def __init__(self, name: str, shape: tuple[int, ...], keeps_batch: bool = False) -> None:
        super().__init__()
        self.name, self.shape, self.keeps_batch = name, shape, keeps_batch

    def forward(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], *self.shape[1:]) if self.keeps_batch else self.shape
        try:
            return x.reshape(shape)
        except RuntimeError as exc:
            raise UnsupportedOpError(
                f"Reshape {self.name!r} reshapes to the fixed shape {list(shape)} recorded "
                f"when the model was converted, which no longer fits its input {tuple(x.shape)}"
                " (channels were pruned through it): add the layer that feeds it to the prune "
                "stage's `ignore` list"
            ) from exc


def _tidy(gm: fx.GraphModule, example: Tensor) -> fx.GraphModule:
    """Swap onnx2torch's wrappers for the plain ops pruning and the merge rules know."""
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.concat import OnnxConcat
    from onnx2torch.node_converters.global_average_pool import (
        OnnxGlobalAveragePool,
        OnnxGlobalAveragePoolWithKnownInputShape,
    )
    from onnx2torch.node_converters.reshape import OnnxReshape
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(example)
    ops = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        meta = node.meta.get("tensor_meta")
        new: Any = None
        with gm.graph.inserting_before(node):
            if isinstance(mod, OnnxBinaryMathOperation) and mod.broadcast is None:
                op = ops.get(mod.math_op_function)
                if mod.math_op_function.__name__ == "_onnx_div" and _floating(meta):
                    op = operator.truediv  # its integer branch is control flow fx can't trace
                if op is not None:
                    new = gm.graph.call_function(op, node.args)
            elif isinstance(mod, OnnxConcat):
                new = gm.graph.call_function(torch.cat, (list(node.args),), {"dim": mod.axis})
            elif isinstance(mod, OnnxGlobalAveragePool | OnnxGlobalAveragePoolWithKnownInputShape):
                if meta is not None and len(meta.shape) == 4:
                    gm.add_submodule(node.target, nn.AdaptiveAvgPool2d(1))
            elif isinstance(mod, OnnxReshape) and meta is not None:
                new = _reshape(gm, node, tuple(meta.shape))
        if new is not None:
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def _floating(meta: Any) -> bool:
    return meta is not None and getattr(meta, "dtype", torch.int64).is_floating_point


def _reshape(gm: fx.GraphModule, node: fx.Node, out: tuple[int, ...]) -> fx.Node:
    """A reshape that merges trailing dims is a flatten (it survives pruning); any other
    becomes a FixedReshape that names itself when pruning breaks it."""
    src = node.args[0]
    assert isinstance(src, fx.Node)
    meta = src.meta.get("tensor_meta")
    shape = tuple(meta.shape) if meta is not None else ()
    for k in range(1, len(shape) - 1):
        if out == (*shape[:k], math.prod(shape[k:])):
            return gm.graph.call_function(torch.flatten, (src,), {"start_dim": k})
    name = str(node.target)
    keeps_batch = bool(shape) and bool(out) and shape[0] == out[0]
    gm.add_submodule(name, FixedReshape(name, out, keeps_batch))
    return gm.graph.call_module(name, (src,))


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]
