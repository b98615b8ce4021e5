"""Saying which class each model output is (``data.classes`` / ``--classes``): a renamed,
reordered or partial set of class folders is scored against the right outputs, and a list
that does not fit the folders or the model is refused with the numbers and names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.calibration.bundle import DataBundle, DataConfig, read_classes
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.cli import main
from edgecompress.errors import ConfigError
from edgecompress.report.schema import value
from edgecompress.testing.models import tiny_cnn

ARCH = "edgecompress.testing.models:tiny_cnn"
PRE = {"input_size": [16, 16], "resize": "stretch", "mean": [0.3] * 3, "std": [0.3] * 3}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def model(tiny: tuple[Path, Path]) -> nn.Module:
    """tiny_cnn trained on the tiny folder's train images as the build reads them (the
    fixture's own model is near chance on them): a wrong mapping has to show."""
    bundle = DataBundle(tiny[1], PreprocessSpec.model_validate(PRE), DataConfig())
    x, y = (torch.from_numpy(a) for a in bundle.train_arrays())
    torch.manual_seed(0)
    net = tiny_cnn()
    opt = torch.optim.Adam(net.parameters(), 0.01)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _evaluate(
    model: nn.Module, data: Path, out: Path, classes: list[str] | None = None
) -> dict[str, Any]:
    recipe = {"preprocess": PRE, "data": {"classes": classes}, "stages": ["evaluate"]}
    return ec.build(model, data, recipe=recipe, out=out, log=lambda _m: None).data


def _cli(state: Path, data: Path, out: Path, *extra: str) -> int:
    """``edgecompress build --stages evaluate`` of the tiny fixture's state_dict."""
    args = ["build", str(state), "--arch", ARCH, "--target", "host", "--data", str(data)]
    pre = ["--input-size", "16", "16", "--mean", *["0.3"] * 3, "--std", *["0.3"] * 3]
    return main([*args, *pre, "--stages", "evaluate", "-o", str(out), "--quiet", *extra])


def _acc(report: dict[str, Any], key: str = "top1") -> Any:
    return value(report["accuracy"]["pytorch"][key])


def _flat_copy(data: Path, dest: Path, names: dict[str, str]) -> Path:
    """All images of the ``names`` class folders in one flat folder, each class folder
    renamed to ``names[folder]``: the scan carves the splits, seeded per label, so a
    renamed folder mapped to the same output gets the same test images."""
    for split in ("train", "val", "test"):
        for folder, name in names.items():
            (dest / name).mkdir(parents=True, exist_ok=True)
            for png in (data / split / folder).glob("*.png"):
                shutil.copy(png, dest / name / f"{split}_{png.name}")
    return dest


def test_renamed_and_reordered_folders_score_as_the_plain_ones(
    tiny: tuple[Path, Path], model: nn.Module, tmp_path: Path
) -> None:
    data = tiny[1]
    plain = _flat_copy(data, tmp_path / "plain", {str(c): str(c) for c in range(10)})
    # Sorted, the words are eight, five, four, ...: folder i is no longer output i.
    words = _flat_copy(data, tmp_path / "words", {str(c): WORDS[c] for c in range(10)})
    assert sorted(WORDS) != WORDS

    base = _evaluate(model, plain, tmp_path / "out-plain")
    mapped = _evaluate(model, words, tmp_path / "out-words", WORDS)

    top1 = _acc(base)
    assert top1 > 50  # a model that has learned something: a wrong mapping would show
    assert _acc(mapped) == top1 and _acc(mapped, "samples") == _acc(base, "samples")
    assert mapped["data"]["class_outputs"] == {w: i for i, w in enumerate(WORDS)}
    assert mapped["data"]["labels"] == "data.classes" and mapped["data"]["outputs"] == 10
    # Without the mapping, output i is scored as the i-th word in sorted order: wrong.
    unmapped = _evaluate(model, words, tmp_path / "out-unmapped")
    assert _acc(unmapped) < top1 - 30


def test_a_folder_the_list_does_not_name_is_refused_by_name(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = tiny
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(["sieben" if c == 7 else str(c) for c in range(10)]) + "\n\n")
    assert _cli(state, data, tmp_path / "out", "--classes", str(names)) == 2
    err = capsys.readouterr().err
    assert "class folder(s) ['7'] are not in the classes list" in err and "--classes" in err


def test_a_list_whose_length_is_not_the_model_outputs_names_both_numbers(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = tiny
    eleven = ",".join([*map(str, range(10)), "ten"])
    assert _cli(state, data, tmp_path / "out", "--classes", eleven) == 2
    err = capsys.readouterr().err
    assert "the model has 10 outputs but the classes list" in err and "names 11" in err


def test_a_ten_output_model_on_three_of_its_classes(
    tiny: tuple[Path, Path], model: nn.Module, tmp_path: Path
) -> None:
    data = tiny[1]
    subset = tmp_path / "subset"
    for split in ("train", "val", "test"):
        for c in ("2", "5", "7"):
            shutil.copytree(data / split / c, subset / split / c)

    report = _evaluate(model, subset, tmp_path / "out", [str(c) for c in range(10)])

    # The expected top-1: the model's own predictions on those test images, computed here.
    spec = PreprocessSpec.model_validate(PRE)
    full = DataBundle(data, spec, DataConfig())
    keep = np.isin(full.test_labels, [2, 5, 7])
    with torch.no_grad():
        pred = model(torch.from_numpy(full.test_inputs[keep])).argmax(1).numpy()
    expected = float((pred == full.test_labels[keep]).mean() * 100)
    assert _acc(report, "samples") == int(keep.sum()) == 18
    assert _acc(report) == pytest.approx(expected)
    assert report["data"]["class_outputs"] == {"2": 2, "5": 5, "7": 7}
    assert any("3 of 10 model outputs have images" in n for n in report["summary"]["notes"])


def test_a_classes_file_with_a_blank_line_inside_is_refused(tmp_path: Path) -> None:
    names = tmp_path / "imagenet_classes.txt"
    names.write_text("tench\n\ngoldfish\n")  # a skipped line would shift every later output
    with pytest.raises(ConfigError, match=r"line\(s\) \[2\] are blank"):
        read_classes(str(names))
    names.write_text("tench\r\ngoldfish\r\n\r\n")  # Windows line ends and a trailing blank
    assert read_classes(str(names)) == ["tench", "goldfish"]
    with pytest.raises(ConfigError, match="no such file"):
        read_classes(str(tmp_path / "missing.txt"))
