"""Every torchvision classification architecture through the default pipeline.

Random weights (nothing is downloaded) with a 10-class head, saved as a state_dict and
built by ``edgecompress build --arch torchvision:NAME`` as a user would, on a small image
folder at a small input size, with one epoch per training stage: the question is which
stages each architecture gets through, not accuracy. Used by the matrix test and by
``benchmarks/torchvision_matrix.py`` for the table in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Smallest input each architecture runs at, where 32x32 is too small or not a multiple of
# what it needs (ViT patches, MaxViT's 7x7 partitions at stride 32, Inception's stem,
# AlexNet's three stride-2 max pools, which need 63 px). VGG's and AlexNet's adaptive
# pools (7x7, 6x6) of a map they do not divide export with the dynamo exporter only.
INPUT_SIZE = {"inception_v3": 80, "maxvit_t": 224, "alexnet": 64}
FAST: dict[str, dict[str, Any]] = {
    "prune": {"keep": 0.5},
    "distill": {"train": {"epochs": 1}},
    "quantize": {"rungs": [{"w_bits": 8, "epochs": 1}]},
    # A pass/fail run: the timings are not read, so a few calls per file.
    "bench": {"runs": 20, "rounds": 1, "warmup": 2, "min_time_s": 0.1, "idle_s": 0},
}


def small_digits_folder(root: Path) -> Path:
    """scikit-learn's digits as a 16x16 image folder: 16/6/6 images per class in
    train/val/test (the tests' ``tiny`` data); returns the folder."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 16), ("val", 6), ("test", 6)):
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in rng.choice(np.flatnonzero(digits.target == c), per_class, replace=False):
                img = (digits.images[i] * 255 / 16).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(img, (16, 16)))
    return root


def architectures() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    if name.startswith("vit_") and name.endswith("_14"):
        return 28
    return INPUT_SIZE.get(name, 32)


# The stages that check an export against its reference. Random weights under fake
# quantization can make the reference itself unstable there (docs/BENCHMARKS.md): such a
# row is built again from the same start trained for TRAIN_EPOCHS epochs, as a user's is.
PARITY_STAGES = ("export_onnx", "export_rknn")
TRAIN_EPOCHS = 10


@dataclass
class MatrixResult:
    arch: str
    input_size: int
    params_m: float
    stages: list[str]
    passed: list[str] = field(default_factory=list)
    failed: str | None = None  # the stage that stopped the build (or "load")
    error: str = ""
    seconds: float = 0.0
    measured: str = ""  # UTC time of the run (the table may gather several runs)
    cosine: float | None = None  # the INT8 ONNX against the QAT model, where it got there
    train_epochs: int = 0  # epochs on the data's train split before the build (0: random)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_arch(
    name: str, data: Path, work: Path, target: str = "rk3588", train_epochs: int = 0
) -> MatrixResult:
    """Build ``torchvision:name`` through ``target``'s default stages (one epoch each) on
    ``data`` in ``work``; which stages finished, and the error of the one that did not.
    ``train_epochs``: train the random model on ``data``'s train split first (a user's
    model is a trained one)."""
    import torch
    import torchvision
    import yaml

    from edgecompress.cli import main
    from edgecompress.recipe import default_recipe

    size = input_size(name)
    preprocess = {"input_size": [size, size], "resize": "stretch", "mean": [0.3] * 3,
                  "std": [0.3] * 3}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"image_size": size} if name.startswith("vit_") else {}
    if name == "maxvit_t":
        kwargs = {"input_size": (size, size)}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    # Random weights with BatchNorm statistics of their own activations, as a trained
    # model has: with the initial (0, 1) statistics deep nets such as MobileNetV3 give
    # the same output for every input, and no parity check can say anything about them.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:  # a plain average over the batches (MNASNet's momentum is 0.0003)
        m.reset_running_stats()
        m.momentum = None
    # GoogLeNet's and Inception's auxiliary classifiers run in training mode only, and at a
    # small input their pooling has nothing to pool: they sit out (the build drops them).
    heads = {n: getattr(model, n, None) for n in ("aux1", "aux2", "AuxLogits")}
    aux = {n: head for n, head in heads.items() if head is not None}
    for n in aux:
        setattr(model, n, None)
    model.train()
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(16, 3, size, size))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    if train_epochs:
        _train(model, data / "train", preprocess, train_epochs)
    for n, head in aux.items():
        setattr(model, n, head)
    torch.save(model.eval().state_dict(), work / "model.pt")
    names = [e.name for e in default_recipe(target).stages]
    recipe = {
        "target": target,
        "preprocess": preprocess,
        "data": {"calibration_images": 20},
        "stages": [{"name": n, **FAST.get(n, {})} for n in names],
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = MatrixResult(name, size, sum(p.numel() for p in model.parameters()) / 1e6, names)
    result.train_epochs = train_epochs
    del model
    args = ["build", str(work / "model.pt"), "--arch", f"torchvision:{name}"]
    args += ["--recipe", str(work / "recipe.yaml"), "--data", str(data)]
    args += ["-o", str(work / "out"), "--force", "--quiet"]
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    result.seconds = time.perf_counter() - start
    result.measured = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for i, stage in enumerate(names):
        if (work / "out" / "stages" / f"{i + 1:02d}_{stage}" / "done.json").exists():
            result.passed.append(stage)
        else:
            result.failed = stage if i or code == 0 else "load"
            break
    if code != 0:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and "%" not in ln]
        errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
        lines = errors or lines  # the message may quote a traced graph, full of "%"
        result.error = lines[-1][:800] if lines else f"exit code {code}"
        result.failed = result.failed or names[-1]
    elif result.failed:  # exit 0 yet a stage unfinished would be a bug of its own
        result.error = "build exited 0 with this stage unfinished"
    result.cosine = _onnx_cosine(work / "out", result.error)
    return result


def error_cosine(error: str) -> float | None:
    """The cosine a parity error reports (``cosine X < min_cosine``), if it is one."""
    import re

    found = re.search(r"cosine ([0-9.]+) < min_cosine", error)
    return float(found.group(1)) if found else None


def _onnx_cosine(out: Path, error: str) -> float | None:
    """The INT8 ONNX's parity cosine: from the export_onnx stage's error, or from the
    report of a build that got past it."""
    found = error_cosine(error)
    report = out / "report.json"
    if found is not None or not report.exists():
        return found
    cos = json.loads(report.read_text()).get("parity", {}).get("onnx", {}).get("cosine")
    return float(cos["value"]) if cos else None


def _train(model: Any, folder: Path, preprocess: dict[str, Any], epochs: int) -> None:
    """Plain supervised training (AdamW lr 1e-3, batch 32, cross-entropy) on an image
    folder, preprocessed as the build's recipe (``preprocess``) says."""
    import torch

    from edgecompress.calibration.preprocess import PreprocessSpec

    spec = PreprocessSpec(**preprocess)
    files = sorted(folder.glob("*/*.png"))
    x = torch.stack([torch.from_numpy(spec.load(f)) for f in files])
    y = torch.tensor([int(f.parent.name) for f in files])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            out = model(x[idx])
            loss = torch.nn.functional.cross_entropy(
                out if isinstance(out, torch.Tensor) else out[0], y[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main_table(results: list[MatrixResult]) -> str:
    """The markdown table: one row per architecture, a mark per stage."""
    stages = results[0].stages if results else []
    head = ["architecture", "params (M)", "input", *stages, "s", "measured (UTC)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        marks = ["ok" if s in r.passed else ("**fails**" if s == r.failed else "") for s in stages]
        rows.append(
            f"| {r.arch} | {r.params_m:.1f} | {r.input_size} | " + " | ".join(marks)
            + f" | {r.seconds:.0f} | {r.measured or 'before the fixes'} |"
        )  # fmt: skip
    return "\n".join(rows)


def save(results: list[MatrixResult], path: Path) -> None:
    path.write_text(json.dumps([r.to_json() for r in results], indent=1))
