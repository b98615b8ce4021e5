"""Every accepted model form loads and computes what was saved; every bad file gets an
error that says what was found and what is accepted."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from edgecompress.errors import ConfigError, ModelLoadError
from edgecompress.model_io import detect_format, load_checkpoint, load_model, save_checkpoint
from edgecompress.testing.models import tiny_cnn

ARCH = "edgecompress.testing.models:tiny_cnn"


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = tiny_cnn().eval()
    with torch.no_grad():  # non-trivial BN statistics so a wrong load shows
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(X), b(X), rtol=1e-5, atol=1e-5)


def test_torchscript_traced_and_scripted(model: torch.nn.Module, tmp_path: Path) -> None:
    for how, mod in (("trace", torch.jit.trace(model, X)), ("script", torch.jit.script(model))):
        path = tmp_path / f"{how}.pt"
        torch.jit.save(mod, str(path))
        loaded = load_model(path)
        assert loaded.format == "torchscript" and loaded.is_scripted
        _same(model, loaded.module)


def test_exported_program(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (X,)), str(path))
    loaded = load_model(path)
    assert loaded.format == "pt2"
    _same(model, loaded.module)


def test_state_dict_with_factory_arch(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": model.state_dict()}, path)  # a common training-script wrapper
    loaded = load_model(path, ARCH)
    assert loaded.format == "state_dict"
    _same(model, loaded.module)


def test_state_dict_with_torchvision_arch_infers_classes(tmp_path: Path) -> None:
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=7).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, "torchvision:mobilenet_v3_small")
    with torch.no_grad():
        out = loaded.module(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 7)
    _same(net, loaded.module)


def test_pickled_module_needs_trust(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickle"
    _same(model, loaded.module)


def test_state_dict_without_arch(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(path)


def test_state_dict_wrong_arch_names_the_mismatch(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"missing .*unexpected|does not fit"):
        load_model(path, "torchvision:resnet18")


def test_bad_arch_strings(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ConfigError, match="module:factory"):
        load_model(path, "tiny_cnn")
    with pytest.raises(ConfigError, match="no model 'resnet999'"):
        load_model(path, "torchvision:resnet999")
    with pytest.raises(ConfigError, match="cannot import"):
        load_model(path, "no_such_module_xyz:build")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty"),
        (b"hello, I am a text file", "not a model file"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a model file"),
    ],
)
def test_unknown_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=expected) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message
    assert "accepted forms" in message or expected == "empty"


def test_truncated_files(model: torch.nn.Module, tmp_path: Path) -> None:
    full = tmp_path / "full.pt"
    torch.jit.save(torch.jit.trace(model, X), str(full))
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as err:
        load_model(cut)
    assert str(cut) in str(err.value)


def test_zip_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ModelLoadError, match="not a PyTorch model"):
        load_model(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


def test_onnx_loads_as_an_editable_module(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (X,), str(path), dynamo=False)
    assert detect_format(path).value == "onnx"
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.input_shape == tuple(X.shape)
    assert any(isinstance(m, torch.nn.Conv2d) for m in loaded.module.modules())
    _same(model, loaded.module)


def test_onnx_symbolic_dim_needs_an_example(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(
        model,
        (X,),
        str(path),
        dynamo=False,
        input_names=["pixels"],
        dynamic_axes={"pixels": {0: "batch"}},
    )
    with pytest.raises(ModelLoadError, match=r"input 'pixels' dimension 0 is symbolic \(batch\)"):
        load_model(path)
    loaded = load_model(path, example=X)
    assert loaded.input_shape == tuple(X.shape)
    _same(model, loaded.module)


def test_checkpoint_roundtrip_keeps_edited_modules(model: torch.nn.Module, tmp_path: Path) -> None:
    # A pruned layer has no constructor call that rebuilds it: checkpoints keep the module.
    model[0] = torch.nn.Conv2d(3, 8, 3, 1, 1, bias=True)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, path)
    assert not list(tmp_path.glob("*.tmp"))
    _same(model, load_checkpoint(path))


@pytest.mark.parametrize("name", ["mnasnet0_5", "googlenet", "inception_v3", "regnet_x_400mf"])
def test_torchvision_state_dicts_load_as_trainable_deployable_models(
    name: str, tmp_path: Path
) -> None:
    """MNASNet refuses weights without torch.save's per-module versions (kept); GoogLeNet
    and Inception v3 carry training-only aux classifiers (dropped: training then returns
    plain logits, and the eval model is unchanged); RegNet's constructor reads tensor
    values, so it cannot be built on the meta device to read the class count."""
    torch.manual_seed(0)
    original = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    torch.save(original.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", f"torchvision:{name}").module
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x))
        assert isinstance(loaded.train()(x), torch.Tensor)


THIRD_PARTY = """
import torch
from torch import nn


class MnistNet(nn.Module):  # a public MNIST net's shape: its head's width follows the size
    def __init__(self, input_size: int = 28, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * (input_size // 2) ** 2, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.max_pool2d(self.conv(x).relu(), 2), 1))


def needs_arguments(depth, width):
    return MnistNet()
"""


def test_a_third_party_factory_with_an_int_size_builds_and_a_bad_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory from a user's own module whose ``input_size`` is one int gets an int (it
    got a tuple: a raw TypeError); one that cannot be called as --arch calls it is named."""
    (tmp_path / "thirdparty_mnist.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import thirdparty_mnist  # type: ignore[import-not-found]

    path = tmp_path / "mnist.pth"
    torch.save(thirdparty_mnist.MnistNet(20).state_dict(), path)
    loaded = load_model(path, "thirdparty_mnist:MnistNet", input_size=(20, 20))
    assert loaded.module(torch.zeros(1, 3, 20, 20)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"square images.*--input-size N N"):
        load_model(path, "thirdparty_mnist:MnistNet", input_size=(20, 24))
    with pytest.raises(ConfigError, match=r"calling needs_arguments\(no arguments\) failed"):
        load_model(path, "thirdparty_mnist:needs_arguments", input_size=(20, 20))
