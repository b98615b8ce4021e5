"""Device runtimes the agent can time, one per module, chosen by the artifact's suffix.

A backend loads one artifact and exposes ``run()`` (one inference on fixed inputs) and
``info()``; it imports its runtime inside ``load`` so that a board without, say,
TensorRT can still run the others. Registered by name; a duplicate name is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgecompress.errors import ConfigError


class Backend(Protocol):
    name: str

    def run(self) -> object: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


if TYPE_CHECKING:  # aliases only in annotations: the agent also runs on Python 3.8
    Loader = Callable[[Path, dict[str, Any]], Backend]
_LOADERS: dict[str, Loader] = {}
SUFFIXES = {".onnx": "onnxruntime", ".rknn": "rknnlite", ".engine": "tensorrt", ".plan": "tensorrt"}


def register_backend(name: str) -> Callable[[Loader], Loader]:
    def wrap(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"backend {name!r} is registered twice")
        _LOADERS[name] = loader
        return loader

    return wrap


def backend_for(path: Path) -> str:
    """The runtime that executes an artifact, from its suffix."""
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"{path}: cannot tell which runtime runs a {path.suffix or 'suffix-less'} file; "
            f"benchmarkable: {', '.join(f'{s} ({r})' for s, r in SUFFIXES.items())}"
        ) from None


def load_backend(name: str, path: Path, options: dict[str, Any]) -> Backend:
    """Import the backend module (and so its runtime) only when it is asked for."""
    import importlib

    module = {"onnxruntime": "onnx", "rknnlite": "rknnlite", "tensorrt": "tensorrt"}.get(name)
    if module is None:
        raise ConfigError(f"unknown runtime {name!r}; known: onnxruntime, rknnlite, tensorrt")
    importlib.import_module(f"edgecompress.runtime.backends.{module}")
    return _LOADERS[name](path, options)


def available_runtimes() -> dict[str, str | None]:
    """Runtime name -> its version where importable here, else None (cheap: no model)."""
    import importlib

    found: dict[str, str | None] = {}
    for name, module in (
        ("onnxruntime", "onnxruntime"),
        ("rknnlite", "rknnlite.api"),
        ("tensorrt", "tensorrt"),
    ):
        try:
            mod = importlib.import_module(module)
        except Exception:  # a broken install is as absent as a missing one
            found[name] = None
            continue
        found[name] = str(getattr(mod, "__version__", "unknown"))
    return found


def random_input(shape: list[int], dtype: str, seed: int) -> Any:
    """Inputs do not change latency for these models: normal floats, integers in {0, 1}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np_dtype)
    if np_dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.integers(0, 2, size=shape).astype(np_dtype)
