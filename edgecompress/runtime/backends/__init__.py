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
# Runtime -> the module of its backend; suffix -> runtime, as the exporters that write
# those files registered them (edgecompress.exporters.registry): the built-ins' here, so
# that a file can be timed without importing the exporters.
_MODULES = {"onnxruntime": "onnx", "rknnlite": "rknnlite", "tensorrt": "tensorrt"}
SUFFIXES = {".onnx": "onnxruntime", ".rknn": "rknnlite", ".engine": "tensorrt", ".plan": "tensorrt"}


def register_backend(name: str) -> Callable[[Loader], Loader]:
    def wrap(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"backend {name!r} is registered twice")
        _LOADERS[name] = loader
        return loader

    return wrap


def register_suffix(suffix: str, runtime: str) -> None:
    """Files ending in ``suffix`` run on ``runtime`` (an exporter's registration says so)."""
    if runtime not in _MODULES:
        raise ConfigError(f"unknown runtime {runtime!r}; known: {', '.join(_MODULES)}")
    if SUFFIXES.setdefault(suffix.lower(), runtime) != runtime:
        raise ValueError(f"{suffix} files run on {SUFFIXES[suffix.lower()]}, not {runtime}")


def backend_for(path: Path) -> str:
    """The runtime that executes an artifact, from how its name ends (the longest
    registered suffix: ``.opt.onnx`` before ``.onnx``)."""
    name = path.name.lower()
    found = [s for s in SUFFIXES if name.endswith(s)]
    if found:
        return SUFFIXES[max(found, key=len)]
    raise ConfigError(
        f"{path}: cannot tell which runtime runs a {path.suffix or 'suffix-less'} file; "
        f"benchmarkable: {', '.join(f'{s} ({r})' for s, r in SUFFIXES.items())}"
    )


def load_backend(name: str, path: Path, options: dict[str, Any]) -> Backend:
    """Import the backend module (and so its runtime) only when it is asked for."""
    import importlib

    module = _MODULES.get(name)
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
