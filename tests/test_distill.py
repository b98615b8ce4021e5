"""Distillation losses and the one training loop."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.distill import trainer
from edgecompress.distill.features import FeatureTap, make_adapters, match_layers
from edgecompress.distill.losses import LOSSES, Batch, LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.testing.models import DigitsResNet, tiny_cnn

TEACHER_LOSSES = [n for n in LOSSES.names() if n != "ce"]
X = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _batch(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> Batch:
    pairs = match_layers(student, teacher, x)
    adapters = make_adapters(student, teacher, pairs, x)
    s_tap, t_tap = (
        FeatureTap(student, [s for s, _ in pairs]),
        FeatureTap(teacher, [t for _, t in pairs]),
    )
    with s_tap.active():
        s_logits = student(x)
    with torch.no_grad(), t_tap.active():
        t_logits = teacher(x)
    s_feats = [a(f) for a, f in zip(adapters, s_tap.get(), strict=True)]
    return Batch(torch.zeros(len(x), dtype=torch.long), s_logits, t_logits, s_feats, t_tap.get())


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_loss_is_zero_when_student_equals_teacher(name: str) -> None:
    teacher = DigitsResNet().eval()
    student = copy.deepcopy(teacher).eval()
    value = LOSSES.get(name)(LossConfig(name=name))(_batch(student, teacher, X))
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_loss_decreases_under_training(name: str) -> None:
    torch.manual_seed(0)
    teacher = DigitsResNet(widths=(16, 32, 64)).eval()
    student = DigitsResNet(widths=(8, 16, 32)).eval()  # narrower: adapters in play
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss_fn = LOSSES.get(name)(LossConfig(name=name))
    pairs = match_layers(student, teacher, x)
    adapters = make_adapters(student, teacher, pairs, x)
    opt = torch.optim.Adam([*student.parameters(), *adapters.parameters()], lr=3e-3)
    values = []
    for _ in range(40):
        b = _batch_with(student, teacher, adapters, pairs, x)
        loss = loss_fn(b)
        values.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < 0.7 * values[0], f"{name}: {values[0]:.4g} -> {values[-1]:.4g}"


def _batch_with(student, teacher, adapters, pairs, x):  # type: ignore[no-untyped-def]
    s_tap, t_tap = (
        FeatureTap(student, [s for s, _ in pairs]),
        FeatureTap(teacher, [t for _, t in pairs]),
    )
    with s_tap.active():
        s_logits = student(x)
    with torch.no_grad(), t_tap.active():
        t_logits = teacher(x)
    feats = [a(f) for a, f in zip(adapters, s_tap.get(), strict=True)]
    return Batch(torch.zeros(len(x), dtype=torch.long), s_logits, t_logits, feats, t_tap.get())


def test_adapters_only_where_shapes_differ() -> None:
    teacher = DigitsResNet(widths=(32, 64, 128))
    student = DigitsResNet(widths=(32, 16, 128))  # as if layer2 had been pruned
    pairs = match_layers(student, teacher, X)
    assert pairs == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    adapters = make_adapters(student, teacher, pairs, X)
    kinds = [type(a.proj).__name__ for a in adapters]  # type: ignore[union-attr]
    assert kinds == ["Identity", "Conv2d", "Identity"]
    assert adapters[1].proj.weight.shape == (64, 16, 1, 1)  # type: ignore[union-attr, index]


def test_named_layer_pairs_are_checked() -> None:
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="student has no layer 'layer9'"):
        match_layers(tiny_cnn(), tiny_cnn(), X, {"layer9": "0"})


def _data(n: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.normal(size=(n, 3, 32, 32)).astype(np.float32) * 0.5
    x[np.arange(n), 0, y, y] += 4.0  # a learnable signal: a bright pixel per class
    return x, y


def test_resume_gives_the_same_result_as_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    teacher, init = tiny_cnn().eval(), tiny_cnn()
    train, val = _data(), _data(64, 1)
    cfg = FitConfig(
        epochs=3,
        batch_size=32,
        lr=0.05,
        losses=(LossConfig(name="ce"), LossConfig(name="kd"), LossConfig(name="hint")),
    )
    straight = copy.deepcopy(init)
    fit(straight, teacher, train, val, cfg, progress=False)

    interrupted = copy.deepcopy(init)
    real_log = trainer._log_epoch

    def stop_after_two(epoch: int, *args: object) -> None:
        real_log(epoch, *args)  # type: ignore[arg-type]
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_log_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, teacher, train, val, cfg, workdir=tmp_path, progress=False)
    monkeypatch.setattr(trainer, "_log_epoch", real_log)
    resumed = copy.deepcopy(init)
    result = fit(resumed, teacher, train, val, cfg, workdir=tmp_path, resume=True, progress=False)
    assert len(result.history) == 3
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_early_stop_and_best_weights() -> None:
    torch.manual_seed(0)
    model = tiny_cnn()
    cfg = FitConfig(epochs=30, batch_size=32, lr=0.05, patience=2, losses=(LossConfig(name="ce"),))
    result = fit(model, None, _data(), _data(64, 1), cfg, progress=False)
    assert result.stopped_early and len(result.history) < 30
    assert result.best_top1 == max(r["val_top1"] for r in result.history)
    assert len(result.history) - result.best_epoch == 2


def test_gradient_accumulation_matches_a_bigger_batch() -> None:
    # Without BatchNorm in train mode mixing batches, accumulating 2x16 equals one step of 32.
    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

    train, val = _data(64), _data(32, 1)
    base = dict(
        epochs=1,
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        augment_shift=0,
        losses=(LossConfig(name="ce"),),
    )
    a, b = net(), net()
    fit(a, None, train, val, FitConfig(batch_size=32, **base), progress=False)  # type: ignore[arg-type]
    fit(b, None, train, val, FitConfig(batch_size=16, accumulate=2, **base), progress=False)  # type: ignore[arg-type]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_a_batch_past_the_memory_budget_runs_in_micro_batches_with_the_same_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # MaxViT-T's QAT at 224 px in batches of 64 ran a 23 GB machine out of memory: a batch
    # whose activations pass the budget is split, and the step it makes is the same.
    def net() -> torch.nn.Module:  # no BatchNorm: micro-batches would change its statistics
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(8 * 32 * 32, 10),
        )  # fmt: skip

    train, val = _data(64), _data(32, 1)
    base = dict(epochs=1, batch_size=32, lr=0.05, augment_shift=1, losses=(LossConfig(name="ce"),))
    # One sample holds 8x32x32 conv outputs and their ReLU (~64 KB): 0.3 MB fits 2 of them.
    a, b = net(), net()
    whole = fit(a, None, train, val, FitConfig(**base), progress=True)  # type: ignore[arg-type]
    assert whole.micro_batch is None and "micro-batches" not in capsys.readouterr().err
    split = fit(b, None, train, val, FitConfig(memory_gb=3e-4, **base), progress=True)  # type: ignore[arg-type]
    assert split.micro_batch is not None and 1 <= split.micro_batch < 8
    assert f"micro-batches of {split.micro_batch}" in capsys.readouterr().err
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    # 1e-4: on a GPU, autocast's fp16 rounds the two losses apart by ~2e-5 (weights 6e-6).
    assert whole.history[0]["train_loss"] == pytest.approx(split.history[0]["train_loss"], 1e-4)


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_band_of_one(
    digits_example: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = digits_example
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    mod = "edgecompress.testing.ddp_fit"
    subprocess.run(
        [sys.executable, "-m", mod, str(data), str(model), str(one)], check=True, env=env
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            mod,
            str(data),
            str(model),
            str(two),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r1["best_top1"] > 85 and abs(r1["best_top1"] - r2["best_top1"]) <= 3.0, (
        r1["best_top1"],
        r2["best_top1"],
    )


def test_teacher_is_left_as_it_was_given() -> None:
    # A teacher is often the original model that later stages copy and train.
    teacher, student = tiny_cnn(), tiny_cnn()
    fit(
        student,
        teacher,
        _data(64),
        _data(32, 1),
        FitConfig(epochs=1, batch_size=32),
        progress=False,
    )
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_training_in_a_log_prints_plain_progress_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal (CI, nohup) an epoch printed nothing until it ended (17.6 min
    once): now a plain line at a steady interval says batches done, images/s and ETA."""
    import functools

    from edgecompress.progress import progress

    monkeypatch.setattr(trainer, "show", functools.partial(progress, interval_s=0.0))
    torch.manual_seed(0)
    cfg = FitConfig(epochs=1, batch_size=16, lr=0.05, losses=(LossConfig(name="ce"),))
    fit(tiny_cnn(), None, _data(64), _data(16, 1), cfg, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch 1/1: ")]
    assert lines[0].startswith("epoch 1/1: 1/4 (25%)") and "ETA" in lines[0]
    assert "images/s" in lines[0] and "\r" not in "".join(lines)
    assert any(ln.startswith("epoch 1/1: finished 4 in") for ln in lines)


def test_training_says_its_expected_duration_after_its_first_batches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A default build planned 10 epochs (~20 min each) and said nothing of the time it
    would take: the first epoch now prints the plan with an estimate, once per fit."""
    torch.manual_seed(0)
    cfg = FitConfig(epochs=3, batch_size=16, lr=0.05, losses=(LossConfig(name="ce"),))
    fit(tiny_cnn(), None, _data(64), _data(16, 1), cfg, progress=True)
    plans = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training: ")]
    assert len(plans) == 1, plans
    assert re.match(r"training: 3 epoch\(s\) of 4 batches of 16 planned; at \d+ images/s about "
                    r"\d+ s \(\d+ s per epoch", plans[0]), plans[0]  # fmt: skip
