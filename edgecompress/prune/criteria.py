"""Channel importance criteria: each scores the channels of one dependency group (the
channels that must go together), Torch-Pruning's ``Importance.__call__(group) -> Tensor``
interface. Higher is more important. Registered by name.

- ``l1``, ``l2``: filter magnitude;
- ``bn_scale``: |gamma| of the BatchNorm after the convolution (network slimming, Liu et
  al. 2017; sparsify first with ``slimming`` in the prune stage);
- ``taylor``: first-order Taylor expansion |w * dL/dw| (Molchanov et al. 2019), from a few
  batches of data;
- ``apoz``: 1 - average percentage of zero activations after BN+ReLU (Hu et al. 2016);
- ``entropy``: entropy of each filter's binned weight values (filter grafting, Meng 2020);
- ``svd``: each filter's energy in the layer's dominant singular subspace (EFPF-style);
- ``random``: the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgecompress.registry import Registry

CRITERIA: Registry[Callable[..., Any]] = Registry("pruning criterion")


def _out_channel_weights(group: Any) -> list[tuple[nn.Module, list[int]]]:
    """(module, channel indices) for every conv/linear whose output channels the group prunes."""
    found = []
    for dep, idxs in group:
        mod = dep.target.module
        if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            found.append((mod, list(idxs)))
    return found


def _root_out_weights(group: Any) -> tuple[nn.Module, list[int]]:
    """The first out-channel conv/linear of the group: the layer the group is named after."""
    outs = _out_channel_weights(group)
    return outs[0] if outs else (group[0][0].target.module, list(group[0][1]))


class _PerFilter:
    """Scores computed from each output filter's weights, averaged over the group's layers."""

    def filter_scores(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, group: Any) -> Tensor:
        scores = []
        for mod, idxs in _out_channel_weights(group):
            w = mod.weight.detach().flatten(1)[idxs]  # type: ignore[operator]
            scores.append(self.filter_scores(w.float()))
        if not scores:
            return tp.importance.MagnitudeImportance(p=2)(group)
        n = min(len(s) for s in scores)
        return torch.stack([s[:n] for s in scores]).mean(0)


class Entropy(_PerFilter):
    def __init__(self, bins: int = 16) -> None:
        self.bins = bins

    def filter_scores(self, w: Tensor) -> Tensor:
        out = torch.empty(len(w))
        for i, row in enumerate(w.cpu().numpy()):
            hist, _ = np.histogram(row, bins=self.bins)
            p = hist[hist > 0] / hist.sum()
            out[i] = float(-(p * np.log(p)).sum())
        return out


class SvdEnergy(_PerFilter):
    """Energy of each filter (row) in the span of the singular vectors that hold ``energy``
    of the layer's total: filters outside the dominant subspace are redundant."""

    def __init__(self, energy: float = 0.9) -> None:
        self.energy = energy

    def filter_scores(self, w: Tensor) -> Tensor:
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        cum = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-12)
        k = int(torch.searchsorted(cum, torch.tensor(self.energy)).item()) + 1
        return ((u[:, :k] * s[:k]) ** 2).sum(1)


def layer_rank_ratio(weight: Tensor, energy: float = 0.9) -> float:
    """Fraction of a layer's filters needed to hold ``energy`` of its spectral energy: how
    much the layer can lose (used by the ``svd`` allocation)."""
    s = torch.linalg.svdvals(weight.detach().flatten(1).float())
    cum = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-12)
    k = int(torch.searchsorted(cum, torch.tensor(energy)).item()) + 1
    return k / weight.shape[0]


class Apoz:
    """1 - APoZ of the channels, measured after each BatchNorm followed by ReLU semantics."""

    def __init__(self) -> None:
        self.zero_fraction: dict[nn.Module, Tensor] = {}

    def observe(self, model: nn.Module, batches: list[Tensor]) -> None:
        sums: dict[nn.Module, Tensor] = {}
        count = [0]
        handles = []
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):

                def hook(m: nn.Module, _i: object, out: Tensor) -> None:
                    z = (out <= 0).float().mean(dim=(0, 2, 3))
                    sums[m] = sums.get(m, torch.zeros_like(z)) + z

                handles.append(mod.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            for x in batches:
                model(x)
                count[0] += 1
        for h in handles:
            h.remove()
        self.zero_fraction = {m: s / max(count[0], 1) for m, s in sums.items()}

    def __call__(self, group: Any) -> Tensor:
        for dep, idxs in group:
            mod = dep.target.module
            if mod in self.zero_fraction and dep.handler == tp.prune_batchnorm_out_channels:
                return 1.0 - self.zero_fraction[mod][list(idxs)]
        return tp.importance.MagnitudeImportance(p=1)(group)


CRITERIA.register("l1")(lambda: tp.importance.MagnitudeImportance(p=1))
CRITERIA.register("l2")(lambda: tp.importance.MagnitudeImportance(p=2))


class BnScale:
    """|gamma| of the group's BatchNorm; ties (an untrained BN has every gamma at 1, where a
    global ranking would prune nothing) are broken by the filters' L2 magnitude."""

    def __init__(self) -> None:
        self.bn, self.l2 = tp.importance.BNScaleImportance(), tp.importance.MagnitudeImportance(p=2)

    def __call__(self, group: Any) -> Tensor:
        gamma, mag = self.bn(group), self.l2(group)
        if gamma is None:
            return mag
        return gamma + 1e-3 * gamma.abs().max() * mag / mag.max().clamp_min(1e-12)


CRITERIA.register("bn_scale")(BnScale)
CRITERIA.register("taylor")(lambda: tp.importance.TaylorImportance())
CRITERIA.register("apoz")(Apoz)
CRITERIA.register("entropy")(Entropy)
CRITERIA.register("svd")(SvdEnergy)
CRITERIA.register("random")(lambda: tp.importance.RandomImportance())

DATA_CRITERIA = frozenset({"taylor", "apoz"})


def prepare_criterion(name: str, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Any:
    """Build the criterion; data criteria see ``batches`` (Taylor accumulates gradients)."""
    crit = CRITERIA.get(name)()
    if name == "taylor":
        model.zero_grad()
        model.eval()
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
    elif name == "apoz":
        crit.observe(model, [x for x, _ in batches])
    return crit
