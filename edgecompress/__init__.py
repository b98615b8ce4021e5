"""edgecompress: compress a trained PyTorch model for a named edge device and prove it there.

The library API, on in-memory modules and any iterable of batches (a DataLoader works)::

    import edgecompress as ec

    pruned, plan = ec.prune(model, example, keep=0.5, align=16)
    ec.distill(pruned, model, train_loader, val_loader, ec.FitConfig(epochs=5))
    qat = ec.quantize(pruned, example, ladder=(8,), train=train_loader, val=val_loader).model
    artifacts = ec.export(qat, example, "out/", target="host", calibration=calib)
    print(ec.bench(artifacts[0])["latency"]["p50_ms"])

``ec.build(model, "images/", target="rk3588")`` runs the whole pipeline, as the command
line does. Importing the package is cheap: names resolve on first use, so no torch and no
toolchain is imported until needed, and ``edgecompress.runtime`` runs on a board with
only numpy and the device runtime.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute", imported on first access (PEP 562).
_API = {
    "prune": "edgecompress.prune.api:prune",
    "replay_plan": "edgecompress.prune.api:replay_plan",
    "PrunePlan": "edgecompress.prune.api:PrunePlan",
    "distill": "edgecompress.distill.api:distill",
    "merge": "edgecompress.merge.api:merge",
    "quantize": "edgecompress.quantize.api:quantize",
    "export": "edgecompress.exporters.api:export",
    "bench": "edgecompress.runtime.api:bench",
    "build": "edgecompress.api:build",
    "probe": "edgecompress.probe.api:probe",
    "convert": "edgecompress.convert:convert",
    "evaluate": "edgecompress.distill.api:evaluate",
    "FitConfig": "edgecompress.distill.config:FitConfig",
    "LossConfig": "edgecompress.distill.config:LossConfig",
    "Rung": "edgecompress.quantize.config:Rung",
    "FolderDataset": "edgecompress.distill.data:FolderDataset",
    "scan_image_folder": "edgecompress.calibration.dataset:scan_image_folder",
    "PreprocessSpec": "edgecompress.calibration.preprocess:PreprocessSpec",
    "Recipe": "edgecompress.recipe:Recipe",
    "TARGETS": "edgecompress.targets:TARGETS",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
    module, attr = _API[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """``ec.prune`` is the function even after ``edgecompress.prune`` (the subpackage)
    has been imported: the import system's binding of a subpackage onto its parent is
    skipped for the API's names (the subpackages stay importable by their full names)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
