"""The built-in example: scikit-learn's digits written as an image folder, and a small
ResNet trained on it once and cached, so the demo takes the same path a user's model does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC, ensure_digits_folder
from edgecompress.distill.loop import TrainConfig, train_classifier
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.testing.models import digits_resnet

ARCH = "edgecompress.testing.models:digits_resnet"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def prepare_digits_example(
    cache: Path | None = None, epochs: int = 15, progress: bool = True
) -> tuple[Path, Path]:
    """Return (model state_dict path, image folder), training the model if not cached."""
    cache = cache or cache_dir()
    data = ensure_digits_folder(cache)
    model_path = cache / "digits_resnet.pt"
    meta_path = cache / "digits_resnet.json"
    if model_path.exists() and meta_path.exists():
        return model_path, data
    bundle = DataBundle(data, DIGITS_SPEC, DataConfig())
    train = bundle.train_arrays()
    val = (bundle.val_inputs, bundle.val_labels)
    model = digits_resnet()
    result = train_classifier(model, train, val, TrainConfig(epochs=epochs, progress=progress))
    tmp = temp_path_for(model_path)
    torch.save(model.state_dict(), tmp)
    tmp.replace(model_path)
    atomic_write_json(
        meta_path, {"arch": ARCH, "val_top1": result.best_val_top1, "history": result.history}
    )
    return model_path, data


def example_info(cache: Path | None = None) -> dict[str, object]:
    meta = (cache or cache_dir()) / "digits_resnet.json"
    return json.loads(meta.read_text()) if meta.exists() else {}
