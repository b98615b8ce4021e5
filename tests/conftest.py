"""Shared fixtures: small real models and the built-in digits data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the user's cache unless asked: a per-session cache keeps them hermetic,
# except the rknn environment, which is made once by `make test` (edgecompress setup rknn).
_USER_CACHE = Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))
os.environ.setdefault("EDGECOMPRESS_RKNN_PYTHON", str(_USER_CACHE / "rknn-venv" / "bin" / "python"))


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_example(digits_cache: Path) -> tuple[Path, Path]:
    """(state_dict path, image folder) of the digits example, trained once per test session."""
    from edgecompress.example import prepare_digits_example

    return prepare_digits_example(digits_cache, epochs=4, progress=False)


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
