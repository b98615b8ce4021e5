"""The one fine-tuning loop: the student trains against a frozen teacher with any mix of
registered losses. Pruning, merging and quantization recover accuracy through it.

- validation every epoch, the best weights kept, early stop on a patience;
- gradient accumulation; mixed precision on a GPU; a progress bar (one line per epoch
  when not on a terminal);
- a checkpoint every epoch: ``resume=True`` continues and gives the same result as an
  uninterrupted run with the same seed (shuffling and augmentation are seeded per epoch);
- under ``torchrun`` the same loop runs DistributedDataParallel (gloo on CPU, NCCL on GPU):
  data sharded per rank, metrics reduced across ranks, only rank 0 writes files.
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress.distill import dist
from edgecompress.distill.config import FitConfig
from edgecompress.distill.data import (
    Data,
    eval_batches,
    first_inputs,
    is_arrays,
    steps_per_epoch,
    train_batches,
)
from edgecompress.distill.features import FeatureTap, make_adapters, match_layers
from edgecompress.distill.losses import Batch, build_losses, combined
from edgecompress.errors import ConfigError, TrainingDivergedError
from edgecompress.progress import duration, say
from edgecompress.progress import progress as show

STATE_FILE = "train_state.pt"


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False
    seconds_per_epoch: float = 0.0
    micro_batch: int | None = None  # samples per forward/backward, where a batch was split


class _Student(nn.Module):
    """Student plus adapters, so one DDP wrapper syncs both and forward returns the
    adapted features beside the logits."""

    def __init__(self, net: nn.Module, adapters: nn.ModuleList, layers: list[str]) -> None:
        super().__init__()
        self.net, self.adapters = net, adapters
        self.tap = FeatureTap(net, layers)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if not self.tap.names:
            return self.net(x), []
        with self.tap.active():
            logits = self.net(x)
        return logits, [a(f) for a, f in zip(self.adapters, self.tap.get(), strict=True)]


def _device(cfg: FitConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("distill: device 'cuda' asked for but no CUDA device is visible")
        return torch.device("cuda", dist.local_rank())
    return torch.device("cpu")


def _optimizer(params: list[nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: FitConfig, steps_per_epoch: int) -> Any:
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


def validate(
    student: nn.Module, val: Data, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """top-1 and cross-entropy over the validation data, reduced across ranks."""
    student.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.inference_mode():
        for x, y in eval_batches(val, batch_size):
            x, y = x.to(device), y.to(device)
            logits = student(x).float()
            sums += torch.tensor(
                [
                    (logits.argmax(1) == y).sum().item(),
                    nn.functional.cross_entropy(logits, y, reduction="sum").item(),
                    len(y),
                ],
                dtype=torch.float64,
            )
    sums = dist.all_reduce_sum(sums)
    if sums[2] == 0:
        raise ConfigError("validation data: no batch to validate on")
    return {"val_top1": float(sums[0] / sums[2] * 100), "val_loss": float(sums[1] / sums[2])}


def fit(
    student: nn.Module,
    teacher: nn.Module | None,
    train: Data,
    val: Data,
    cfg: FitConfig,
    *,
    workdir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``student`` in place (its best weights on val top-1 are loaded at the end).

    ``train`` / ``val``: any iterable of (inputs, labels) batches, such as a DataLoader
    (then ``cfg.batch_size`` and ``augment_shift`` are the loader's business), or a pair
    of arrays."""
    losses = build_losses(list(cfg.losses))
    if teacher is None and any(loss.needs_teacher for loss in losses):
        raise ConfigError("distill: the losses ask for a teacher, and none was given")
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    first = first_inputs(train, 1 << 30)  # the first batch (all of it, for arrays: no copy)
    example = first[:2]
    # Layers are matched on CPU: a teacher an earlier (or interrupted) fit left on the GPU
    # would meet CPU inputs.
    student.to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    layers: list[tuple[str, str]] = []
    if teacher is not None and (any(loss.needs_features for loss in losses) or cfg.layers):
        layers = match_layers(student, teacher, example, cfg.layers)
    elif teacher is not None and any(
        loss.name in ("similarity", "rkd_distance", "rkd_angle") for loss in losses
    ):
        layers = match_layers(student, teacher, example, cfg.layers)[-1:]
    adapters = (
        make_adapters(student, teacher, layers, example)
        if layers and teacher is not None
        else nn.ModuleList()
    )
    wrapped = _Student(student, adapters, [s for s, _ in layers]).to(device)
    t_tap = FeatureTap(teacher, [t for _, t in layers]) if teacher is not None else None
    if teacher is not None:
        teacher.to(device).eval()  # frozen: it only runs under no_grad; its flags stay as given
    model: nn.Module = dist.wrap(wrapped, device)
    opt = _optimizer([p for p in wrapped.parameters() if p.requires_grad], cfg)
    steps = math.ceil(steps_per_epoch(train, cfg.batch_size) / cfg.accumulate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    result, best_state, start_epoch = FitResult(), None, 0
    state_path = workdir / STATE_FILE if workdir else None
    if resume and state_path and state_path.exists():
        start_epoch, best_state = _load_state(state_path, wrapped, opt, sched, result)
    batch = cfg.batch_size if is_arrays(train) else len(first)
    micro = min(batch, _micro_batch(wrapped, first[:4].to(device), cfg, device))
    if micro < batch and dist.initialised():
        # Every process must run the same forwards (DDP syncs buffers in each): the batch
        # per process is the user's to size.
        if dist.is_main():
            print(
                f"training: a batch of {batch} per process may not fit in memory (about "
                f"{micro} would); lower train.batch_size if a process is killed",
                file=sys.stderr,
            )
        micro = batch
    elif micro < batch:
        result.micro_batch = micro
        if progress:
            print(
                f"training: a batch of {batch} would hold more than the memory budget; run "
                f"in micro-batches of {micro} (gradients accumulated per batch)",
                file=sys.stderr,
            )
    elapsed = []
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            row = _train_epoch(
                model, teacher, t_tap, losses, train, cfg, epoch, opt, sched, scaler, device,
                progress, micro, cfg.epochs - start_epoch if epoch == start_epoch else 0,
            )  # fmt: skip
            row.update(validate(wrapped.net, val, device))
            elapsed.append(time.perf_counter() - t0)
            row["seconds"] = elapsed[-1]
            result.history.append(row)
            if row["val_top1"] > result.best_top1:
                result.best_top1, result.best_epoch = row["val_top1"], epoch + 1
                best_state = _snapshot(wrapped.net)
            if state_path and dist.is_main():
                _save_state(state_path, wrapped, opt, sched, result, best_state, epoch + 1)
            _log_epoch(epoch, cfg, row, progress)
            dist.barrier()
            if cfg.patience and epoch + 1 - result.best_epoch >= cfg.patience:
                result.stopped_early = True
                break
        if best_state is not None:
            wrapped.net.load_state_dict(best_state)
    finally:  # on CPU again, however training ended (a caller may restore and go on)
        student.to("cpu").eval()
        if teacher is not None:
            teacher.to("cpu")
    result.seconds_per_epoch = float(np.mean(elapsed)) if elapsed else 0.0
    return result


def _saved_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``model(x)``: the
    activations a training step holds (each storage once)."""
    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(sizes.values())


def _micro_batch(model: nn.Module, example: Tensor, cfg: FitConfig, device: torch.device) -> int:
    """The most samples one forward/backward may take: saved activations (at twice their
    size, for the backward's gradients) within ``cfg.memory_gb`` or half the memory free
    now. Measured on two and four samples of ``example`` in training mode (BatchNorm
    needs two), the model's state and the random generators left as they were; a model
    the probe cannot run is not limited (training then says what is wrong)."""
    unlimited = 1 << 30
    if len(example) < 4:
        return unlimited
    if cfg.memory_gb is not None:
        budget = cfg.memory_gb * 1e9
    elif device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] / 2
    else:
        import psutil

        budget = psutil.virtual_memory().available / 2
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = torch.random.get_rng_state()
    training = model.training
    model.train()
    try:
        two, four = _saved_bytes(model, example[:2]), _saved_bytes(model, example[:4])
    except Exception:
        return unlimited
    finally:
        torch.random.set_rng_state(rng)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        model.train(training)
    per_sample = max((four - two) / 2, 1.0)
    return max(1, int(budget // (2 * per_sample)))


def _train_epoch(
    model: nn.Module,
    teacher: nn.Module | None,
    t_tap: FeatureTap | None,
    losses: list,
    train: Data,
    cfg: FitConfig,
    epoch: int,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    progress: bool,
    micro: int,
    plan_epochs: int = 0,
) -> dict[str, float]:
    """One epoch; ``plan_epochs`` > 0 (the first epoch of a fit): after its first batches,
    one line with the whole training's expected duration."""
    model.train()
    n_batches = steps_per_epoch(train, cfg.batch_size)
    batches = train_batches(train, cfg.batch_size, cfg.seed, epoch, cfg.augment_shift)
    # A bar on a terminal; in a CI log or under nohup, a plain line every few seconds.
    bar = show(
        batches,
        total=n_batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        enabled=progress and dist.is_main(),
    )
    t0 = time.monotonic()
    totals: dict[str, float] = {}
    seen = 0
    amp = torch.autocast(device.type, enabled=scaler.is_enabled())
    for i, (x_cpu, y_cpu) in enumerate(bar):
        # A batch past the memory budget runs in micro-batches: each one's mean loss,
        # weighted by its share of the batch, sums to the batch's mean loss.
        for x_part, y_part in zip(x_cpu.split(micro), y_cpu.split(micro), strict=True):
            x, y = x_part.to(device), y_part.to(device)
            share = len(y) / len(y_cpu)
            with amp:
                logits, s_feats = model(x)
                t_logits, t_feats = None, []
                if teacher is not None and t_tap is not None:
                    with torch.no_grad(), t_tap.active():
                        t_logits = teacher(x)
                        t_feats = t_tap.get()
                loss, parts = combined(losses, Batch(y, logits, t_logits, s_feats, t_feats))
                if cfg.bn_l1:
                    gammas = [
                        m.weight.abs().sum()
                        for m in model.modules()
                        if isinstance(m, nn.BatchNorm2d) and m.weight is not None
                    ]
                    loss = loss + cfg.bn_l1 * torch.stack(gammas).sum()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1} (loss {float(loss)}); lower the "
                    f"learning rate (lr {cfg.lr}) or the gradient clipping (clip_grad_norm "
                    f"{cfg.clip_grad_norm})"
                )
            scaler.scale(loss * share / cfg.accumulate).backward()
            seen += len(y)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v * len(y)
        if (i + 1) % cfg.accumulate == 0 or i + 1 == n_batches:
            if cfg.clip_grad_norm is not None:
                scaler.unscale_(opt)
                params = [p for g in opt.param_groups for p in g["params"]]
                nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
        spent = time.monotonic() - t0
        rate = seen / max(spent, 1e-9)
        bar.set_postfix_str(f"loss {totals['loss'] / seen:.4f}, {rate:.0f} images/s", False)
        if plan_epochs and (i + 1 == n_batches or (i + 1 >= 10 and spent >= 2.0)):
            if progress and dist.is_main():
                per_epoch = spent / (i + 1) * n_batches
                say(
                    f"training: {plan_epochs} epoch(s) of {n_batches} batches of "
                    f"{cfg.batch_size} planned; at {rate:.0f} images/s about "
                    f"{duration(per_epoch * plan_epochs)} ({duration(per_epoch)} per epoch, "
                    "validation not counted)"
                )
            plan_epochs = 0
    bar.close()
    sums = dist.all_reduce_sum(torch.tensor([*totals.values(), seen], dtype=torch.float64))
    return {f"train_{k}": float(v / sums[-1]) for k, v in zip(totals, sums[:-1], strict=True)}


def _log_epoch(epoch: int, cfg: FitConfig, row: dict[str, float], progress: bool) -> None:
    if progress and dist.is_main():
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss "
            f"{row['val_loss']:.4f}, val top-1 {row['val_top1']:.2f}% ({row['seconds']:.1f} s)",
            file=sys.stderr,
        )


def _snapshot(net: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``net``'s state_dict that keeps its per-module versions (MNASNet
    refuses to load a state without them)."""
    state = net.state_dict()
    snap: OrderedDict[str, Tensor] = OrderedDict(
        (k, v.detach().cpu().clone()) for k, v in state.items()
    )
    snap._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return snap


def _save_state(
    path: Path,
    wrapped: _Student,
    opt: torch.optim.Optimizer,
    sched: Any,
    result: FitResult,
    best_state: dict[str, Tensor] | None,
    epoch: int,
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "epoch": epoch,
            "model": wrapped.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "history": result.history,
            "best_top1": result.best_top1,
            "best_epoch": result.best_epoch,
            "best_state": best_state,
        },
        tmp,
    )
    tmp.replace(path)


def _load_state(
    path: Path, wrapped: _Student, opt: torch.optim.Optimizer, sched: Any, result: FitResult
) -> tuple[int, dict[str, Tensor] | None]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    wrapped.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    result.history = list(state["history"])
    result.best_top1, result.best_epoch = float(state["best_top1"]), int(state["best_epoch"])
    return int(state["epoch"]), state["best_state"]
