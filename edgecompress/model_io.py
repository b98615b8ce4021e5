"""Reading a trained model in every form users ship, with an error that says what was
found and which forms are accepted when a file is none of them.

Accepted: TorchScript (``torch.jit.save``), ``torch.export`` programs (``.pt2``), a
``state_dict`` plus ``arch`` (``module:factory`` or ``torchvision:NAME``), a whole
pickled module only with ``trust_pickle=True`` (unpickling runs arbitrary code), and ONNX
(converted to an editable module at a fixed input shape, see ``edgecompress.editable``).
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import ConfigError, ModelLoadError

ACCEPTED = (
    "accepted forms: TorchScript (torch.jit.save), a torch.export program (.pt2), "
    "a state_dict with --arch module:factory or --arch torchvision:NAME, "
    "a pickled nn.Module with --trust-pickle, or ONNX"
)


class ModelFormat(StrEnum):
    torchscript = "torchscript"
    exported_program = "pt2"
    torch_save = "torch.save"  # a state_dict or a pickled module; told apart on load
    onnx = "onnx"


@dataclass
class LoadedModel:
    module: nn.Module
    format: str  # "torchscript" | "pt2" | "state_dict" | "pickle" | "onnx"
    source: Path
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None  # fixed by the file (ONNX), else None

    @property
    def is_scripted(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)


def detect_format(path: Path) -> ModelFormat:
    """Tell the form of a model file from its bytes, not its suffix."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected a model file ({ACCEPTED})")
    head = path.read_bytes()[:8]
    if not head:
        raise ModelLoadError(f"{path}: the file is empty; {ACCEPTED}")
    if head.startswith(b"PK"):
        return _zip_format(path)
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return ModelFormat.torch_save  # legacy (non-zip) torch.save pickle
    if _looks_like_onnx(path):
        return ModelFormat.onnx
    raise ModelLoadError(
        f"{path}: not a model file this tool knows (starts with {head!r}); {ACCEPTED}"
    )


def _zip_format(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"{path}: a zip archive that is truncated or corrupt ({exc}); "
            "re-save or re-copy the model"
        ) from None
    if bad is not None:
        raise ModelLoadError(f"{path}: archive member {bad!r} is corrupt; re-copy the model")
    # A .pt2 keeps its programs in ARCHIVE/models/; TorchScript keeps a module's code under
    # ARCHIVE/code/__torch__/<its Python module path>, which may also contain "models".
    if any(
        n.endswith(("serialized_exported_program.json", "/archive_format"))
        or n.split("/")[1:2] == ["models"]
        for n in names
    ):
        return ModelFormat.exported_program
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return ModelFormat.torchscript
    if any(n.endswith("data.pkl") for n in names):
        return ModelFormat.torch_save
    raise ModelLoadError(f"{path}: a zip archive but not a PyTorch model; {ACCEPTED}")


def _looks_like_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def load_model(
    path: Path,
    arch: str | None = None,
    *,
    trust_pickle: bool = False,
    example: torch.Tensor | None = None,
    input_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load a model for compression (eval mode, on the CPU).

    An ONNX file becomes an editable ``torch.fx.GraphModule`` at the input shape of
    ``example``, or at the graph's own shape when that is static. A state_dict's
    architecture is built for ``input_size`` (H, W) where it takes one (ViT, MaxViT).

    >>> loaded = load_model(Path("model.pt"), arch="torchvision:resnet18")  # doctest: +SKIP
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is ModelFormat.onnx:
        return _load_onnx(path, arch, example)
    if fmt is ModelFormat.torchscript:
        module: nn.Module = _load_checked(path, "TorchScript", lambda: torch.jit.load(str(path)))
        return LoadedModel(module.eval(), "torchscript", path, arch)
    if fmt is ModelFormat.exported_program:
        program = _load_checked(path, "torch.export", lambda: torch.export.load(str(path)))
        return LoadedModel(program.module(), "pt2", path, arch)
    return _load_torch_save(path, arch, trust_pickle, input_size)


def recorded_input(path: Path) -> tuple[tuple[int, ...], str]:
    """(the input shape a model file records, 0 for a symbolic dimension; the file's
    format): an ONNX graph's first input, a ``torch.export`` program's example input; ()
    for a TorchScript file (its shapes are not saved) and the formats whose architecture
    is code."""
    fmt = detect_format(Path(path))
    shape: tuple[int, ...] = ()
    if fmt is ModelFormat.onnx:
        import onnx

        proto = _load_checked(path, "ONNX", lambda: onnx.load(str(path), load_external_data=False))
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
        shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    elif fmt is ModelFormat.exported_program:
        program = _load_checked(path, "torch.export", lambda: torch.export.load(str(path)))
        args = (program.example_inputs or ((),))[0]
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
    return shape, fmt.value


def recorded_input_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """((H, W) or None, the file's format): the image size of :func:`recorded_input`,
    None where the file records none or its H/W are symbolic."""
    shape, fmt = recorded_input(path)
    if len(shape) == 4 and shape[2] > 0 and shape[3] > 0:
        return (int(shape[2]), int(shape[3])), fmt
    return None, fmt


def input_channels(module: nn.Module, size: tuple[int, int]) -> int | None:
    """The image channels ``module`` takes, read from its first layer: a convolution's
    input channels (times its groups), or a first Linear on H*W (grey) or 3*H*W inputs
    (a flattened image, ``size`` = (H, W)); None where neither tells."""
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
            continue
        if weight.ndim == 4:
            return int(weight.shape[1]) * int(getattr(m, "groups", 1))
        pixels = size[0] * size[1]
        return {pixels: 1, 3 * pixels: 3}.get(int(weight.shape[1]))
    return None


def _load_onnx(path: Path, arch: str | None, example: torch.Tensor | None) -> LoadedModel:
    import onnx

    from edgecompress.editable import input_shape, load_onnx_editable

    proto = _load_checked(path, "ONNX", lambda: onnx.load(str(path)))
    shape = tuple(example.shape) if example is not None else input_shape(proto, str(path))
    module = load_onnx_editable(proto, example, source=str(path))
    return LoadedModel(module.eval(), "onnx", path, arch, input_shape=shape)


def _load_checked(path: Path, kind: str, load: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return load()
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: looks like a {kind} file but could not be loaded: {_first_line(exc)}; "
            "it may be truncated or saved by an incompatible PyTorch"
        ) from exc


def _load_torch_save(
    path: Path, arch: str | None, trust_pickle: bool, input_size: tuple[int, int] | None
) -> LoadedModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise ModelLoadError(
                f"{path}: a torch.save file that could not be read: {_first_line(exc)}; "
                "it may be truncated or corrupt"
            ) from exc
        if not trust_pickle:
            raise ModelLoadError(
                f"{path}: a pickled Python object (a whole nn.Module?), not a state_dict. "
                "Unpickling runs code from the file: pass --trust-pickle if you trust it, "
                "or save the model with torch.jit.save / torch.export.save / its state_dict"
            ) from None
        obj = _load_checked(
            path, "pickle", lambda: torch.load(str(path), map_location="cpu", weights_only=False)
        )
        if not isinstance(obj, nn.Module):
            raise ModelLoadError(
                f"{path}: unpickled a {type(obj).__name__}, not an nn.Module; {ACCEPTED}"
            ) from None
        return LoadedModel(obj.eval(), "pickle", path, arch)
    state = _unwrap_state_dict(obj, path)
    if arch is None:
        raise ModelLoadError(
            f"{path}: a state_dict ({len(state)} tensors) holds weights but no architecture; "
            "pass --arch module:factory or --arch torchvision:NAME"
        )
    module = build_arch(arch, state, input_size)
    _load_weights(module, state, path, arch)
    _drop_training_heads(module)
    return LoadedModel(module.eval(), "state_dict", path, arch)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...}.
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = {k.removeprefix("module."): v for k, v in obj.items()}
        # The per-module versions torch.save keeps (MNASNet refuses weights without them).
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            state = OrderedDict(state)
            state._metadata = {k.removeprefix("module."): v for k, v in meta.items()}  # type: ignore[attr-defined]
        return state
    raise ModelLoadError(
        f"{path}: a torch.save file holding {type(obj).__name__}, not a state_dict of tensors; "
        f"{ACCEPTED}"
    )


def build_arch(
    arch: str,
    state: dict[str, torch.Tensor] | None = None,
    input_size: tuple[int, int] | None = None,
) -> nn.Module:
    """Instantiate ``module:factory`` or ``torchvision:NAME`` with random weights.

    The class count of a torchvision model is read from the state_dict at the tensors that
    hold its classes (found on the 1000-class default model, so a convolutional classifier
    such as SqueezeNet's counts too). ``input_size`` (H, W) is passed to architectures
    whose constructor takes one (``image_size`` of a ViT, ``input_size`` of MaxViT, and
    the same keywords of a ``module:factory``).
    """
    if ":" not in arch:
        raise ConfigError(
            f"--arch {arch!r}: expected 'module:factory' (e.g. mypkg.models:build) "
            "or 'torchvision:NAME' (e.g. torchvision:resnet18)"
        )
    where, name = arch.split(":", 1)
    if where == "torchvision":
        return _torchvision_arch(arch, name, state, input_size)
    try:
        factory = getattr(importlib.import_module(where), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"--arch {arch!r}: cannot import {name!r} from {where!r}: {exc}"
        ) from None
    kwargs = _size_kwargs(factory, input_size, arch)
    try:
        module = factory(**kwargs)
    except TypeError as exc:  # the factory's own signature, not a bug of the tool's
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ConfigError(
            f"--arch {arch!r}: calling {name}({given}) failed: {exc}. Point --arch at a "
            "function of yours that takes no arguments (or only input_size) and returns "
            "the model"
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"--arch {arch!r}: the factory returned {type(module).__name__}, not nn.Module"
        )
    return module


def _torchvision_arch(
    arch: str,
    name: str,
    state: dict[str, torch.Tensor] | None,
    input_size: tuple[int, int] | None,
) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ConfigError(
            f"--arch {arch!r}: torchvision has no model {name!r}; see "
            "torchvision.models.list_models()"
        )
    try:
        with torch.device("meta"):  # shapes only: the 1000-class default is never run
            default = torchvision.models.get_model(name, weights=None)
    except (NotImplementedError, RuntimeError):
        # A constructor that reads tensor values (RegNet's width schedule) cannot run on
        # the meta device: build the default for real, once.
        default = torchvision.models.get_model(name, weights=None)
    kwargs = _size_kwargs(type(default).__init__, input_size, arch)
    classes = _num_classes(default, state) if state else None
    if classes is not None and classes != 1000:
        kwargs["num_classes"] = classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _size_kwargs(factory: Any, input_size: tuple[int, int] | None, arch: str) -> dict[str, Any]:
    """The input-size keyword ``factory`` takes, set to ``input_size``; none if it takes
    none (a convolutional model runs at any size)."""
    if input_size is None:
        return {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if "image_size" in params:
        if input_size[0] != input_size[1]:
            raise ConfigError(
                f"--arch {arch!r} takes square images only (image_size); the input size "
                f"is {input_size[0]}x{input_size[1]}: pass --input-size N N"
            )
        return {"image_size": input_size[0]}
    if "input_size" in params:
        param = params["input_size"]
        if param.annotation in (int, "int") or isinstance(param.default, int):
            if input_size[0] != input_size[1]:  # one int: a square input
                raise ConfigError(
                    f"--arch {arch!r} takes one input_size (an int: square images); the "
                    f"input size is {input_size[0]}x{input_size[1]}: pass --input-size N N"
                )
            return {"input_size": input_size[0]}
        return {"input_size": tuple(input_size)}
    return {}


def _num_classes(default: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Where the 1000-class default has its 1000 outputs, the file has its class count."""
    heads = [k for k, v in default.state_dict().items() if v.ndim and v.shape[0] == 1000]
    found = [k for k in heads if k in state]
    return int(state[found[-1]].shape[0]) if found else None


def _load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise ModelLoadError(
            f"{path}: the state_dict does not fit --arch {arch}: {'; '.join(parts)}. "
            "Check that --arch names the architecture the weights were trained with"
        )
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: the state_dict does not load into --arch {arch}: {_first_line(exc)}"
        ) from exc


def _drop_training_heads(module: nn.Module) -> None:
    """torchvision's GoogLeNet and Inception v3 run auxiliary classifiers in training only:
    they are not in the deployed (eval) model, and pruning, which traces the eval model,
    cannot keep them consistent, so they go."""
    if getattr(module, "aux_logits", False):
        module.aux_logits = False  # type: ignore[assignment]
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(module, name):
                setattr(module, name, None)


def save_checkpoint(module: nn.Module, path: Path) -> None:
    """Save a stage's model so a stopped build resumes; written atomically.

    These files are written by this tool for itself, so they keep the whole module
    (pruned layers have no class of their own to rebuild them from).
    """
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, str(tmp))
    else:
        torch.save(module, str(tmp))
    tmp.replace(path)


def load_checkpoint(path: Path) -> nn.Module:
    fmt = detect_format(path)
    if fmt is ModelFormat.torchscript:
        return torch.jit.load(str(path)).eval()
    module = torch.load(str(path), map_location="cpu", weights_only=False)  # our own file
    return module.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
