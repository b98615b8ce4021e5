"""The benchmark data and its two reference models, shared by the Fashion-MNIST sections.

Fashion-MNIST as written by `edgecompress example --dataset fashion-mnist` (55,000 train,
5,000 val carved stratified from the original train set, the 10,000 original test
images), seen by the models at 28x28 as three equal channels (:data:`FASHION_SPEC`).

The reference models are trained once here and cached next to the data
(``<cache>/fashion_refs/<name>.pt`` with a JSON of how): best epoch on val, test read once
after training. ``python -m benchmarks.fashion`` trains whichever is missing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.dataset import load_samples, pick_calibration
from edgecompress.calibration.fashion_mnist import (
    FASHION_SPEC,
    default_cache,
    ensure_fashion_mnist_folder,
)
from edgecompress.distill.config import FitConfig, LossConfig
from edgecompress.distill.trainer import fit
from edgecompress.evaluate import classification_metrics
from edgecompress.io import atomic_write_json, temp_path_for
from edgecompress.measure import evaluate_logits
from edgecompress.model_io import build_arch

X28 = torch.randn(1, 3, 28, 28)
X224 = torch.randn(1, 3, 224, 224)


@dataclass(frozen=True)
class Reference:
    name: str
    arch: str
    train: FitConfig


# How every reference is trained once (hard labels; best epoch on val).
TRAIN = FitConfig(epochs=10, lr=0.05, batch_size=128, losses=(LossConfig(name="ce"),))

REFERENCES = {
    "resnet": Reference(
        "ResNet-8 (32-64-128)",
        "edgecompress.testing.models:digits_resnet",
        TRAIN,
    ),
    "mobilenet_v2": Reference(
        "MobileNetV2 (16-96, t=6)",
        "edgecompress.testing.models:small_mobilenet_v2",
        TRAIN,
    ),
    # The layer-merging section's two models.
    "vgg": Reference(
        "VGG-style (32-64-128)",
        "edgecompress.testing.models:vgg_digits",
        TRAIN,
    ),
    "inception": Reference(
        "inception-style",
        "edgecompress.testing.models:inception_digits",
        TRAIN,
    ),
}


@cache
def bundle() -> DataBundle:
    return DataBundle(ensure_fashion_mnist_folder(), FASHION_SPEC, DataConfig())


@cache
def train_arrays() -> tuple[np.ndarray, np.ndarray]:
    return bundle().train_arrays()


def val() -> tuple[np.ndarray, np.ndarray]:
    return bundle().val_inputs, bundle().val_labels


def test() -> tuple[np.ndarray, np.ndarray]:
    return bundle().test_inputs, bundle().test_labels


def calibration(seed: int, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``n`` train images, each class equally, picked by ``seed``: (uint8 as an NPU
    toolchain takes them, float model inputs)."""
    picked = pick_calibration(bundle().folder.train, n, seed)
    prepared, _ = load_samples(picked, FASHION_SPEC, prepared=True)
    return prepared, np.stack([FASHION_SPEC.normalize(im) for im in prepared])


def test_metrics(model: nn.Module) -> dict[str, float]:
    """top-1 on the 10,000 test images with its 95% interval: the only accuracy reported."""
    x, y = test()
    return classification_metrics(evaluate_logits(model.eval(), x), y)


def recover(student: nn.Module, teacher: nn.Module, epochs: int, seed: int) -> None:
    """The sections' shared recovery, in place: CE + KD against ``teacher``, SGD lr 0.01,
    cosine, batch 128, best epoch on val; ``seed`` moves the order and augmentation."""
    losses = (LossConfig(name="ce"), LossConfig(name="kd"))
    cfg = FitConfig(epochs=epochs, lr=0.01, batch_size=128, seed=seed, losses=losses)
    fit(student, teacher, train_arrays(), val(), cfg, progress=False)


def save_module(module: nn.Module, path: Path) -> None:
    """Pickle a whole module (pruned and merged models have no class to rebuild them
    from) atomically: a stopped run never leaves half a file to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    torch.save(module, tmp)
    os.replace(tmp, path)


def _paths(key: str) -> tuple[Path, Path]:
    folder = default_cache() / "fashion_refs"
    return folder / f"{key}.pt", folder / f"{key}.json"


def reference(key: str) -> tuple[nn.Module, dict]:
    """The trained reference model ``key`` and its record, training it if not cached."""
    ref = REFERENCES[key]
    weights, record = _paths(key)
    if weights.exists() and record.exists():
        info = json.loads(record.read_text())
        if info.get("arch") == ref.arch and info.get("train") == ref.train.model_dump(mode="json"):
            model = build_arch(ref.arch, None, (28, 28))
            model.load_state_dict(torch.load(weights, weights_only=True))
            return model.eval(), info
    torch.manual_seed(0)
    model = build_arch(ref.arch, None, (28, 28))
    start = time.perf_counter()
    result = fit(model, None, train_arrays(), val(), ref.train, progress=False)
    seconds = time.perf_counter() - start
    metrics = test_metrics(model)  # after the weights are final: test chose nothing
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(weights)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    info = {
        "arch": ref.arch,
        "train": ref.train.model_dump(mode="json"),
        "best_epoch": result.best_epoch,
        "val_top1": result.best_top1,
        "test_top1": metrics["top1"],
        "test_top1_ci": [metrics["top1_ci_low"], metrics["top1_ci_high"]],
        "train_seconds": seconds,
        "history": result.history,
    }
    atomic_write_json(record, info)
    return model.eval(), info


def resume(key: str, results: Path, bench: str) -> tuple[nn.Module, dict, dict]:
    """Reference ``key``, its record, and ``bench``'s results so far from ``results``
    (``{"runs": {}}`` when none): refuses to mix runs made against a reference that
    scored differently (a retrained one)."""
    model, info = reference(key)
    res = json.loads(results.read_text()) if results.exists() else {"runs": {}}
    if res.get("teacher_top1", info["test_top1"]) != info["test_top1"]:
        raise SystemExit(
            f"{bench}: the {key} reference scores {info['test_top1']:.2f}% on test, the "
            f"recorded runs used {res['teacher_top1']:.2f}%: move {results} aside to rerun"
        )
    res["teacher_top1"] = info["test_top1"]
    return model, info, res


if __name__ == "__main__":
    for key in REFERENCES:
        _, info = reference(key)
        print(key, {k: info[k] for k in ("best_epoch", "val_top1", "test_top1", "train_seconds")})
