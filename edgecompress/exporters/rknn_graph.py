"""What rknn-toolkit2 is handed for an INT8 QDQ file: the same graph, rewritten around
the patterns its converter (2.5.0) dies on. Each was found by cutting a crashing
torchvision model of the matrix down to the node that kills the toolkit's native code;
each rewrite is exact or leaves one tensor in float16 on the NPU, and the RKNN stage's
parity gate compares the result with ONNX Runtime on the unchanged file.

- A Conv whose kernel equals its stride, 8 or more (ViT's patch embedding): SIGSEGV in
  ``build`` (strides 8, 10, 12, 14 and 16; 32 is a KeyError). Rewritten as SpaceToDepth
  and a 1x1 conv with the same weights rearranged: exact.
- Q/DQ on attention's output, ``MatMul(Softmax(q @ k), v)`` through Transpose/Reshape, as
  the output projection's input (ViT): SIGSEGV in ``RKNNSubgraphManager``.
- Q/DQ inside an erf GELU, between the Erf and the product with x (ConvNeXt, where ONNX
  Runtime's quantizer puts them on every elementwise op): SIGFPE in ``OpEmit``.
- Q/DQ on a tensor that comes from a Concat through data movement only (Swin's shifted
  window, a roll written as Slice + Concat): SIGABRT, "Failed to config layer
  '...2gather_2conv'" in ``RKNNTilingPass``.

The last three are removed: that tensor is computed in float16 (torchvision models at
32 px, RKNN simulator vs ONNX Runtime on the QDQ file: ViT cosine 0.99995, ConvNeXt-T
0.9994, Swin-T 0.9986).

>>> for_rknn(Path("model.int8.onnx"), Path("work/for_rknn.onnx"))  # doctest: +SKIP
['conv_proj: 16x16 stride-16 conv as SpaceToDepth + 1x1 conv (exact)', ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MOVES = ("Reshape", "Transpose", "Slice", "Pad", "Squeeze", "Unsqueeze")
QDQ = ("QuantizeLinear", "DequantizeLinear")
MIN_PATCH_STRIDE = 8


def for_rknn(onnx_path: Path, out: Path) -> list[str]:
    """Rewrite ``onnx_path`` into ``out`` where rknn-toolkit2 would crash on it; returns
    what was changed, one line each. Nothing is written when nothing needs changing
    (a float graph is never changed)."""
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    if not any(n.op_type == "QuantizeLinear" for n in graph.node):
        return []
    changes = _patch_convs(model)
    for why, tensors in (
        ("attention output", _attention_outputs(graph)),
        ("inside GELU", _gelu_insides(graph)),
        ("after a Concat (a roll)", _after_concat(graph)),
    ):
        dropped = [t for t in tensors if _drop_qdq(graph, t)]
        if dropped:
            names = ", ".join(dropped[:3]) + (
                f" and {len(dropped) - 3} more" if dropped[3:] else ""
            )
            changes.append(f"Q/DQ removed {why} ({names}): float16 there")
    if changes:
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(out))
    return changes


def _patch_convs(model: Any) -> list[str]:
    """Conv(kernel == stride >= 8, no padding) -> SpaceToDepth + 1x1 Conv, in place."""
    from onnx import helper, numpy_helper, shape_inference

    graph = model.graph
    shapes = _shapes(shape_inference.infer_shapes(model).graph)
    weights = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    changes = []
    for node in list(graph.node):
        if node.op_type != "Conv":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        kernel, stride = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        size = shapes.get(node.input[0], [])
        if (
            len(kernel) != 2
            or kernel[0] != kernel[1]
            or kernel != stride
            or kernel[0] < MIN_PATCH_STRIDE
            or any(a.get("pads", [0])) or a.get("group", 1) != 1
            or any(d != 1 for d in a.get("dilations", [1, 1]))
            or len(size) != 4 or min(size[2:]) <= 0
        ):  # fmt: skip
            continue
        p = kernel[0]
        dq = producers.get(node.input[1])
        name = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else node.input[1]
        if name not in weights:
            continue
        w = numpy_helper.to_array(weights[name])
        # SpaceToDepth's channel (dy * p + dx) * C + c holds pixel (dy, dx) of channel c.
        rearranged = w.transpose(0, 2, 3, 1).reshape(w.shape[0], p * p * w.shape[1], 1, 1)
        weights[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rearranged), name))
        before = _space_to_depth(graph, node, size, p)
        del node.attribute[:]
        node.attribute.extend(
            [
                helper.make_attribute("kernel_shape", [1, 1]),
                helper.make_attribute("strides", [1, 1]),
            ]
        )
        at = list(graph.node).index(node)
        for i, added in enumerate(before):
            graph.node.insert(at + i, added)
        changes.append(f"{node.name}: {p}x{p} stride-{p} conv as SpaceToDepth + 1x1 conv (exact)")
    if changes:
        del graph.value_info[:]  # the weights' shapes changed
    return changes


def _space_to_depth(graph: Any, conv: Any, size: list[int], p: int) -> list[Any]:
    """The nodes that feed ``conv`` its input as SpaceToDepth(p), cropped first to whole
    blocks as the strided conv was (it ignored the remainder)."""
    from onnx import helper, numpy_helper

    x, nodes = conv.input[0], []
    h, w = size[2] // p * p, size[3] // p * p
    if (h, w) != (size[2], size[3]):
        names = [f"{conv.name}_crop_{k}" for k in ("starts", "ends", "axes")]
        for k, v in zip(names, ([0, 0], [h, w], [2, 3]), strict=True):
            graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), k))
        nodes.append(helper.make_node("Slice", [x, *names], [f"{conv.name}_crop"]))
        x = f"{conv.name}_crop"
    nodes.append(helper.make_node("SpaceToDepth", [x], [f"{conv.name}_s2d"], blocksize=p))
    conv.input[0] = f"{conv.name}_s2d"
    return nodes


def _attention_outputs(graph: Any) -> list[str]:
    """``MatMul(Softmax(...), v)``'s output followed through Transpose/Reshape."""
    producers = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        source = _source(producers, node.input[0], QDQ) if node.op_type == "MatMul" else None
        if source is not None and source.op_type == "Softmax":
            found.append(_follow(graph, node.output[0]))
    return found


def _gelu_insides(graph: Any) -> list[str]:
    """The tensors from an Erf up to (not including) the GELU's product with x."""
    found = []
    for node in graph.node:
        if node.op_type != "Erf":
            continue
        chain, tensor = [], node.output[0]
        for _ in range(4):  # erf -> + 1 -> * 0.5 -> * x (the order of the last two varies)
            chain.append(tensor)
            after = _consumers_past_qdq(graph, tensor)
            if len(after) != 1 or after[0].op_type not in ("Add", "Mul"):
                break
            tensor = after[0].output[0]
        found += chain[:-1] if len(chain) == 4 else []
    return found


def _after_concat(graph: Any) -> list[str]:
    """Quantized tensors moved (Reshape, Transpose...) from a roll: a Concat of Slices of
    one tensor, which the toolkit turns into a gather and then a conv."""
    producers = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in producers:
            continue
        source = _source(producers, node.input[0], MOVES)
        if source is None or source.op_type != "Concat":
            continue
        parts = [producers.get(t) for t in source.input]
        if all(p is not None and p.op_type == "Slice" for p in parts) and (
            len({p.input[0] for p in parts if p is not None}) == 1
        ):
            found.append(node.input[0])
    return found


def _source(producers: dict[str, Any], tensor: str, skip: tuple[str, ...]) -> Any:
    """The node that made ``tensor``, looking through ``skip`` ops (None for an input)."""
    node = producers.get(tensor)
    while node is not None and node.op_type in skip:
        node = producers.get(node.input[0])
    return node


def _follow(graph: Any, tensor: str) -> str:
    """``tensor`` followed through a chain of single Transpose/Reshape consumers."""
    while True:
        after = [n for n in graph.node if tensor in n.input]
        if len(after) != 1 or after[0].op_type not in ("Transpose", "Reshape"):
            return tensor
        tensor = after[0].output[0]


def _consumers_past_qdq(graph: Any, tensor: str) -> list[Any]:
    after = [n for n in graph.node if tensor in n.input]
    if after and all(n.op_type == "QuantizeLinear" for n in after):
        dqs = [d for q in after for d in graph.node if q.output[0] in d.input]
        after = [n for d in dqs for n in graph.node if d.output[0] in n.input]
    return after


def _drop_qdq(graph: Any, tensor: str) -> bool:
    """Remove the QuantizeLinear of ``tensor`` and the DequantizeLinears after it, so that
    their readers read ``tensor``; False (nothing changed) where that is not the shape."""
    outputs = {o.name for o in graph.output}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    if len(quantize) != 1 or tensor in outputs:
        return False
    dequantize = [n for n in graph.node if quantize[0].output[0] in n.input]
    if not dequantize or any(
        n.op_type != "DequantizeLinear" or n.output[0] in outputs for n in dequantize
    ):
        return False
    gone = {n.output[0] for n in dequantize}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in gone:
                node.input[i] = tensor
    for node in [*quantize, *dequantize]:
        graph.node.remove(node)
    return True


def _shapes(graph: Any) -> dict[str, list[int]]:
    values = [*graph.value_info, *graph.input, *graph.output]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
