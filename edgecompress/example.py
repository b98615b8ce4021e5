"""The built-in example: scikit-learn's digits written as an image folder, and a small
ResNet trained on it once and cached, so the demo takes the same path a user's model does.

The model is trained on train/, its best epoch chosen on val/ only; test/ is evaluated
once, after training, and recorded (``test_top1`` with its 95% interval) in the metadata
next to the weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC, LAYOUT_VERSION, ensure_digits_folder
from edgecompress.distill.loop import TrainConfig, train_classifier
from edgecompress.evaluate import classification_metrics
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.measure import evaluate_logits
from edgecompress.models import digits_resnet

ARCH = "edgecompress.testing.models:digits_resnet"
# Bump when the cached model would differ (its data, its training): an older one is
# retrained. Tracks the digits folder's layout, which decides what the model trained on.
EXAMPLE_VERSION = LAYOUT_VERSION


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def _cached(model_path: Path, meta_path: Path) -> bool:
    if not model_path.exists():
        return False
    try:
        return json.loads(meta_path.read_text()).get("version") == EXAMPLE_VERSION
    except (OSError, ValueError):
        return False


def prepare_digits_example(
    cache: Path | None = None, epochs: int = 15, progress: bool = True
) -> tuple[Path, Path]:
    """Return (model state_dict path, image folder), training the model if not cached."""
    cache = cache or cache_dir()
    data = ensure_digits_folder(cache)
    model_path = cache / "digits_resnet.pt"
    meta_path = cache / "digits_resnet.json"
    if _cached(model_path, meta_path):
        return model_path, data
    bundle = DataBundle(data, DIGITS_SPEC, DataConfig())
    model = digits_resnet()
    result = train_classifier(
        model,
        bundle.train_arrays(),
        (bundle.val_inputs, bundle.val_labels),
        TrainConfig(epochs=epochs, progress=progress),
    )
    # Test is read only here, after the weights are final.
    test = classification_metrics(evaluate_logits(model, bundle.test_inputs), bundle.test_labels)
    tmp = temp_path_for(model_path)
    torch.save(model.state_dict(), tmp)
    tmp.replace(model_path)
    atomic_write_json(
        meta_path,
        {
            "version": EXAMPLE_VERSION,
            "arch": ARCH,
            "epochs": epochs,
            "val_top1": result.best_val_top1,
            "test_top1": test["top1"],
            "test_top1_ci": [test["top1_ci_low"], test["top1_ci_high"]],
            "splits": {s: bundle.summary()[s] for s in ("train", "val", "test")},
            "history": result.history,
        },
    )
    return model_path, data


def example_info(cache: Path | None = None) -> dict[str, object]:
    """The cached example's metadata: ``val_top1`` (best epoch, chosen on val),
    ``test_top1`` and ``test_top1_ci`` (95%, %), split sizes and the training history."""
    meta = (cache or cache_dir()) / "digits_resnet.json"
    return json.loads(meta.read_text()) if meta.exists() else {}
