"""An ONNX graph's dynamic input dimensions fixed at given shapes, simplified (onnxslim's
constant folding and shape inference) and written atomically: every toolchain here
compiles for one shape. Torch-free.

>>> proto = onnx.load("det.onnx")  # doctest: +SKIP
>>> fix_input_shapes(proto, {"x": (1, 3, 640, 640)}, "det.onnx")  # doctest: +SKIP
{'x': (1, 3, 640, 640)}
>>> save_onnx(simplify(proto, "det.onnx"), Path("out/model.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, EdgeCompressError, ModelLoadError
from edgecompress.io import external_data_path as external_data_path
from edgecompress.io import onnx_size_bytes as onnx_size_bytes


def graph_inputs(proto: Any) -> list[Any]:
    """The graph's real inputs (initializers listed as inputs are weights)."""
    weights = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in weights]


def input_dims(value: Any) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    ]


def fix_input_shapes(
    proto: Any, shapes: Mapping[str, Sequence[int]], source: str
) -> dict[str, tuple[int, ...]]:
    """Set every input's dimensions in ``proto`` (in place) and return name -> shape.

    A shape given without a name (key "") is the model's one input. A given shape must
    agree with the dims the file fixes. With no shape given, a dynamic batch alone (the
    first dim) is fixed at 1, what an edge runtime runs; any other dynamic dim is an
    error that names the input and the dim and shows the flag."""
    inputs = graph_inputs(proto)
    given = _by_name(shapes, [i.name for i in inputs], source)
    fixed: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        dims, shape = input_dims(value), given.get(value.name)
        if shape is None:
            dynamic = [(a, d) for a, d in enumerate(dims) if isinstance(d, str)]
            if [a for a, _ in dynamic] == [0] and len(dims) > 1:
                dims, dynamic = [1, *dims[1:]], []
            if dynamic:
                which = ", ".join(f"{a} ({d})" for a, d in dynamic)
                raise ConfigError(
                    f"{source}: input {value.name!r} has dynamic dimension(s) {which} "
                    f"({shape_text(dims)}); say what size to convert at: --input-shape "
                    f"{value.name}={_hint(dims)} (every toolchain compiles for one shape)"
                )
            shape = tuple(int(d) for d in dims)
        _check_given(value.name, dims, shape, source)
        for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=True):
            dim.Clear()
            dim.dim_value = int(size)
        fixed[value.name] = tuple(int(s) for s in shape)
    del proto.graph.value_info[:]  # inferred again at the fixed shapes
    for out in proto.graph.output:  # stale symbolic output dims: inferred again too
        for dim in out.type.tensor_type.shape.dim:
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.Clear()
    return fixed


def _by_name(
    shapes: Mapping[str, Sequence[int]], names: list[str], source: str
) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if not name:
            if len(names) != 1:
                raise ConfigError(
                    f"{source}: the model has {len(names)} inputs ({', '.join(names)}); name "
                    "the one each shape is for: --input-shape NAME=1x3x224x224"
                )
            name = names[0]
        elif name not in names:
            raise ConfigError(f"{source}: no input named {name!r}; its inputs: {', '.join(names)}")
        if not shape or min(shape) < 1:
            raise ConfigError(f"{source}: input {name!r}: sizes must be positive, got {shape}")
        out[name] = tuple(int(s) for s in shape)
    return out


def _check_given(name: str, dims: list[int | str], shape: Sequence[int], source: str) -> None:
    if len(shape) != len(dims):
        raise ConfigError(
            f"{source}: input {name!r} has {len(dims)} dimensions ({shape_text(dims)}); the shape "
            f"given for it, {shape_text(shape)}, has {len(shape)}"
        )
    for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
        if isinstance(dim, int) and dim != size:
            raise ConfigError(
                f"{source}: input {name!r} dimension {axis} is fixed at {dim} in the model; "
                f"the shape given for it, {shape_text(shape)}, says {size}"
            )


def _hint(dims: list[int | str]) -> str:
    """1x3xHxW for an NCHW image, else N for each dynamic dim after the batch."""
    image = len(dims) == 4 and dims[1] == 3
    names = {0: "1", 2: "H", 3: "W"} if image else {0: "1"}
    return "x".join(str(d) if isinstance(d, int) else names.get(a, "N") for a, d in enumerate(dims))


def shape_text(shape: Sequence[Any]) -> str:
    return "x".join(str(d) for d in shape)


def shapes_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{k}={shape_text(v)}" for k, v in shapes.items())


def simplify(proto: Any, model: str | Path) -> Any:
    import onnx
    import onnxslim

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(proto)
        onnx.checker.check_model(slim)
    except Exception as exc:
        raise ModelLoadError(
            f"{model}: the graph at the fixed input shapes does not simplify or check "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the shapes given with --input-shape"
        ) from exc
    return slim


# protobuf serialises at most 2 GiB. A model whose weights come near that keeps them in
# one external data file beside it (ONNX's large-model layout, ``model.onnx`` +
# ``model.onnx.data``), which onnx.load, ONNX Runtime and TensorRT read from the folder.
PROTOBUF_LIMIT = 2**31 - 2**26  # less 64 MiB for the graph itself


def weight_bytes(proto: Any) -> int:
    """Bytes of ``proto``'s initializers (those held in memory)."""
    return sum(len(t.raw_data) if t.raw_data else t.ByteSize() for t in proto.graph.initializer)


def is_large(proto: Any) -> bool:
    """Whether ``proto``'s weights are too big for a single protobuf file."""
    return weight_bytes(proto) >= PROTOBUF_LIMIT


def save_onnx(proto: Any, out: Path, *, check: bool = False) -> None:
    """Write ``proto`` to ``out`` atomically: a temporary file, checked with
    ``onnx.checker`` (full check) first when ``check``, then renamed into place. A large
    model (:func:`is_large`) goes with its weights in ``out.name + ".data"``; its ``proto``
    has its weights moved out of memory once written."""
    import onnx

    large = is_large(proto)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    tmp, data = tmp_dir / out.name, external_data_path(out)
    try:
        if large:
            onnx.save(
                proto,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
                size_threshold=1024,  # shape constants stay in the graph for checks
            )
        else:
            onnx.save(proto, str(tmp))
        if check:
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as exc:
                raise EdgeCompressError(
                    f"the exported ONNX graph for {out} fails onnx.checker: {exc}"
                ) from exc
        if large:
            os.replace(tmp_dir / data.name, data)
        else:
            data.unlink(missing_ok=True)  # a larger model's weights written here before
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
