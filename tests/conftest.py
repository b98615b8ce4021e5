"""Shared fixtures: small real models, the built-in digits data and the detection example."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's cache unless asked: a per-session cache keeps them hermetic,
# except the rknn environment, which is made once by `make test` (edgecompress setup rknn).
_USER_CACHE = Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))
os.environ.setdefault("EDGECOMPRESS_RKNN_PYTHON", str(_USER_CACHE / "rknn-venv" / "bin" / "python"))
# Nor a measured profile of this machine (`edgecompress probe`): builds use the static
# profile unless a test probes into this folder itself.
os.environ["EDGECOMPRESS_PROFILES"] = tempfile.mkdtemp(prefix="edgecompress-profiles-")


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_example(digits_cache: Path) -> tuple[Path, Path]:
    """(state_dict path, image folder) of the digits example, trained once per test session.
    The same model whichever test asks first: its initial weights come from the global
    generator and its training from the thread count, both pinned here and restored (the
    two-process distillation test's gap to one process ranged 1.1-3.6 points over the
    models test order used to give)."""
    import torch

    from edgecompress.example import prepare_digits_example

    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.set_num_threads(1)
        try:
            return prepare_digits_example(digits_cache, epochs=4, progress=False)
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_host_build(
    digits_example: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """One default ``build --target host`` of the digits example (examples/digits.yaml),
    shared by the tests that read what it wrote (a full build is a minute or more):
    (its output folder, what it printed). Tests must not change the folder."""
    import contextlib
    import io

    from edgecompress.cli import main

    model, data = digits_example
    out = tmp_path_factory.mktemp("host_build") / "out"
    recipe = Path(__file__).parent.parent / "examples" / "digits.yaml"
    argv = ["build", str(model), "--arch", "edgecompress.testing.models:digits_resnet"]
    argv += ["--recipe", str(recipe), "--data", str(data), "--target", "host", "-o", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ONNX model (conv-bn-relu x2, pool, linear at 3x32x32) to benchmark."""
    import torch

    from edgecompress.testing.models import tiny_cnn

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17
    )
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(state_dict of a briefly trained tiny CNN, a small digits image folder at 16x16
    with train/val/test): builds of every stage order take seconds on it."""
    import cv2
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from edgecompress.testing.models import tiny_cnn

    root = tmp_path_factory.mktemp("tiny")
    digits = load_digits()
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 16), ("val", 6), ("test", 6)):
        for c in range(10):
            folder = root / "data" / split / str(c)
            folder.mkdir(parents=True)
            idx = rng.choice(np.flatnonzero(digits.target == c), per_class, replace=False)
            for i in idx:
                img = (digits.images[i] * 255 / 16).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(img, (16, 16)))
    torch.manual_seed(0)
    model = tiny_cnn()
    x = torch.from_numpy(((digits.images[:400] / 16 - 0.3) / 0.3).astype(np.float32))
    x = torch.nn.functional.interpolate(x[:, None].repeat(1, 3, 1, 1), size=(16, 16))
    y = torch.from_numpy(digits.target[:400]).long()
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), root / "tiny.pt")
    return root / "tiny.pt", root / "data"


DETECT_SIZES = {"train": 8, "val": 4, "test": 4}


@pytest.fixture(scope="session")
def detect_sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Fashion-MNIST detection example at 8 / 4 / 4 images (COCO, 160x160 canvases)."""
    from edgecompress.calibration import fashion_mnist as fm
    from edgecompress.detect.coco import read_coco_splits
    from edgecompress.detect.example import ensure_fashion_detect

    if not fm.DEFAULT_SOURCE.is_dir():
        if os.environ.get("EDGECOMPRESS_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(f"EDGECOMPRESS_REQUIRE_FASHION_MNIST=1 but {fm.DEFAULT_SOURCE} is missing")
        pytest.skip(f"{fm.DEFAULT_SOURCE} is missing (apt-get install dataset-fashion-mnist)")
    cache = tmp_path_factory.mktemp("detect") / "cache"
    return read_coco_splits(ensure_fashion_detect(cache, fm.DEFAULT_SOURCE, sizes=DETECT_SIZES))


@pytest.fixture(scope="session")
def overfit_detector(detect_sets: dict) -> tuple:
    """(``fashion_detector`` trained for 60 steps on the first 4 train images, those 4
    images): a detector that finds what it saw, so agreements between runtimes mean
    something (~6 s). Shared: tests copy it before changing it."""
    import torch

    from edgecompress.detect.data import DetectionSet
    from edgecompress.detect.model import fashion_detector
    from edgecompress.detect.train import DetectorTrainConfig, train_detector

    train = detect_sets["train"]
    seen = DetectionSet(train.images[:4], train.class_names)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = fashion_detector()
    cfg = DetectorTrainConfig(
        epochs=60, batch_size=4, lr=0.01, warmup_epochs=5, flip=0.0, ema=0.0, eval_every=60,
        progress=False,
    )  # fmt: skip
    train_detector(model, seen, seen, cfg)
    return model.eval(), seen


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``matrix`` cases (hours) run only when ``-m`` names them (make test-matrix)."""
    if "matrix" in (config.getoption("-m") or ""):
        return
    chosen = [i for i in items if i.get_closest_marker("matrix") is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen
