"""Which teacher and student layers feature losses compare, and the adapters between them.

By default layers are matched at the outputs of the networks' resolution stages: for each
spatial size a network passes through, the module whose output of that size comes last.
That survives pruning (names stay, widths change) and works across architectures with
the same number of stages. Pairs may also be named in the recipe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from edgecompress.errors import ConfigError


def _output_shapes(model: nn.Module, example: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, output shape) in the order the modules' calls finish."""
    order: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, Tensor):
                order.append((name, tuple(out.shape)))

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def stage_outputs(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the stage-output modules, from the largest resolution to the smallest
    (1x1 maps excluded: after global pooling there is nothing spatial left to match)."""
    last: dict[tuple[int, int], tuple[int, str]] = {}
    for idx, (name, shape) in enumerate(_output_shapes(model, example)):
        if len(shape) != 4 or shape[-1] * shape[-2] <= 1:
            continue
        res = (shape[-2], shape[-1])
        prev = last.get(res)
        # Latest call wins; when a block and its last child finish together, the block
        # (fewer dots) is the stage output.
        if prev is None or idx > prev[0]:
            last[res] = (idx, name)
    ordered = sorted(last.items(), key=lambda kv: -(kv[0][0] * kv[0][1]))
    return [name for _res, (_idx, name) in ordered]


def match_layers(
    student: nn.Module, teacher: nn.Module, example: Tensor, pairs: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(student layer, teacher layer) pairs: as given, else the stage outputs of both,
    deepest stages paired first when the counts differ."""
    if pairs:
        s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
        for s, t in pairs.items():
            if s not in s_names:
                raise ConfigError(f"distill: student has no layer {s!r}")
            if t not in t_names:
                raise ConfigError(f"distill: teacher has no layer {t!r}")
        return list(pairs.items())
    s_stages, t_stages = stage_outputs(student, example), stage_outputs(teacher, example)
    n = min(len(s_stages), len(t_stages))
    if n == 0:
        raise ConfigError(
            "distill: found no spatial stage outputs to match; name layer pairs in the recipe"
        )
    return list(zip(s_stages[-n:], t_stages[-n:], strict=True))


class Adapter(nn.Module):
    """Maps a student feature map onto the teacher's shape: a 1x1 convolution where channel
    counts differ (as after pruning), average pooling where resolutions differ."""

    def __init__(self, c_student: int, c_teacher: int, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.proj: nn.Module = (
            nn.Conv2d(c_student, c_teacher, 1, bias=False)
            if c_student != c_teacher
            else nn.Identity()
        )
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None:
            x = nn.functional.adaptive_avg_pool2d(x, self.size)
        return self.proj(x)


def make_adapters(
    student: nn.Module, teacher: nn.Module, pairs: list[tuple[str, str]], example: Tensor
) -> nn.ModuleList:
    """One adapter per pair; an identity (no parameters) where shapes already agree."""
    s_shapes = dict(_output_shapes(student, example))
    t_shapes = dict(_output_shapes(teacher, example))
    adapters = nn.ModuleList()
    for s, t in pairs:
        ss, ts = s_shapes[s], t_shapes[t]
        if len(ss) != len(ts):
            raise ConfigError(
                f"distill: student {s} output {ss} and teacher {t} output {ts} differ in rank"
            )
        size = (ts[-2], ts[-1]) if len(ts) == 4 and ss[-2:] != ts[-2:] else None
        adapters.append(Adapter(ss[1], ts[1], size) if len(ss) == 4 else nn.Identity())
    return adapters


class FeatureTap:
    """Keeps the latest output of each named module while registered."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model, self.names = model, names
        self.outputs: dict[str, Tensor] = {}

    @contextmanager
    def active(self) -> Iterator[FeatureTap]:
        modules = dict(self.model.named_modules())
        handles = []
        for name in self.names:

            def hook(_m: nn.Module, _i: object, out: Tensor, name: str = name) -> None:
                # Inplace activations later in the block would overwrite the map in place.
                self.outputs[name] = out.clone() if isinstance(out, Tensor) else out

            handles.append(modules[name].register_forward_hook(hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def get(self) -> list[Tensor]:
        return [self.outputs[n] for n in self.names]
