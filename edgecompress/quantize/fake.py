"""Fake quantization with learned scales (LSQ, Esser et al. 2020).

Weights are quantized per output channel and symmetrically; activations per tensor,
symmetric or asymmetric as the target profile says. Scales start from observed ranges
(min/max, a percentile, or the clipping that minimises MSE) and are then learned: the
rounding passes gradients straight through and the scale gets LSQ's scaled gradient.
BatchNorm is folded into the convolutions first, so training sees what the device runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

MIN_SCALE = 1e-8

INIT_METHODS = ("minmax", "percentile", "mse")


def _positive(s: Tensor) -> Tensor:
    """|s|, kept off zero: the gradient still flows, so a scale an optimizer pushed below
    zero keeps learning instead of flipping the quantization grid."""
    return s.abs().clamp_min(MIN_SCALE)


def _grad_scale(x: Tensor, g: float) -> Tensor:
    return (x - x * g).detach() + x * g


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with the straight-through
    gradient for ``x`` and LSQ's for ``s``, keeping only ``x``, ``s`` and ``z`` for the
    backward pass (recomputing the rest there). Plain autograd kept two more tensors of
    ``x``'s size per quantizer (the clamp's input and ``q - z``): with one per weight and
    one per activation that was several copies of a large model's weights, and of its
    activations, for the whole forward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, s: Tensor, z: Tensor, qmin: int, qmax: int) -> Tensor:
        ctx.save_for_backward(x, s, z)
        ctx.qmin, ctx.qmax = qmin, qmax
        q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
        return (q - z) * s

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, s, z = ctx.saved_tensors
        v = x / s
        # LSQ's gradients (its reference code clamps x / s + z, then rounds): through
        # where x / s + z lies inside the grid, whatever it rounds to.
        c = v + z
        inside = (c > ctx.qmin) & (c < ctx.qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            # d/ds of (q - z) * s: round(v) - v inside the grid, the clamped level outside.
            d = torch.where(inside, torch.round(v) - v, c.clamp(ctx.qmin, ctx.qmax) - z)
            grad_s = grad * d
            dims = [i for i, n in enumerate(s.shape) if n == 1 and grad_s.shape[i] != 1]
            grad_s = grad_s.sum(dims, keepdim=True) if dims else grad_s
        return grad_x, grad_s, None, None, None


class LsqQuantizer(nn.Module):
    """q = clamp(round(x / s) + z, qmin, qmax); returns (q - z) * s.

    ``channel_axis`` None: one scale for the tensor; else one per slice along that axis.
    The zero point is fixed at initialisation (an integer the exporter can write).
    """

    zero_point: Tensor
    initialised: Tensor

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        channels: int | None = None,
        channel_axis: int | None = None,
        signed: bool = True,
    ) -> None:
        super().__init__()
        self.symmetric, self.channel_axis, self.signed = (
            symmetric,
            channel_axis,
            signed or symmetric,
        )
        self.bits = bits
        n = channels if channel_axis is not None and channels else 1
        self.scale = nn.Parameter(torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("initialised", torch.tensor(False))
        self.enabled = True

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def set_bits(self, bits: int) -> None:
        """Move to another bit-width keeping the clipping range (the previous rung's)."""
        old_levels, self.bits = self.qmax, bits
        with torch.no_grad():
            self.scale.mul_(old_levels / self.qmax)
            if not self.symmetric:
                self.zero_point.copy_(
                    torch.clamp(
                        torch.round(self.zero_point * self.qmax / old_levels), self.qmin, self.qmax
                    )
                )

    def _shape(self, x: Tensor) -> list[int]:
        shape = [1] * x.dim()
        if self.channel_axis is not None:
            shape[self.channel_axis] = -1
        return shape

    @torch.no_grad()
    def initialise(self, x: Tensor, method: str = "minmax", percentile: float = 99.99) -> None:
        """Scales from the observed range of ``x``."""
        axis = self.channel_axis
        flat = x.detach().float()
        flat = flat.transpose(0, axis).flatten(1) if axis is not None else flat.flatten()[None]
        if method == "percentile":
            k = max(1, int(flat.shape[1] * percentile / 100))
            hi = flat.kthvalue(k, dim=1).values
            lo = (-flat).kthvalue(k, dim=1).values.neg()
        else:
            hi, lo = flat.max(1).values, flat.min(1).values
        if method == "mse":
            hi, lo = self._mse_clip(flat, lo, hi)
        self._set_range(lo, hi)
        self.initialised.fill_(True)

    def _set_range(self, lo: Tensor, hi: Tensor) -> None:
        if self.symmetric:
            s = torch.maximum(hi.abs(), lo.abs()) / self.qmax
            z = torch.zeros_like(s)
        else:
            lo, hi = (
                torch.minimum(lo, torch.zeros_like(lo)),
                torch.maximum(hi, torch.zeros_like(hi)),
            )
            s = (hi - lo) / (self.qmax - self.qmin)
            z = torch.round(self.qmin - lo / s.clamp_min(1e-12))
        self.scale.data.copy_(s.clamp_min(MIN_SCALE))
        self.zero_point.copy_(z.clamp(self.qmin, self.qmax))

    def _mse_clip(self, flat: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        best_err = torch.full_like(hi, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for frac in torch.linspace(0.3, 1.0, 15):
            self._set_range(lo * frac, hi * frac)
            err = (
                (
                    _FakeQuant.apply(
                        flat, self.scale[:, None], self.zero_point[:, None], self.qmin, self.qmax
                    )
                    - flat
                )
                .pow(2)
                .mean(1)
            )
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = (
                torch.where(better, lo * frac, best_lo),
                torch.where(better, hi * frac, best_hi),
            )
        return best_hi, best_lo

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if not bool(self.initialised):
            self.initialise(x)
        # LSQ: scale the scale's gradient by 1 / sqrt(elements per scale * qmax).
        per_scale = x.numel() / self.scale.numel()
        s = _grad_scale(self.scale, 1.0 / math.sqrt(per_scale * self.qmax))
        s = _positive(s).reshape(self._shape(x))
        z = self.zero_point.reshape(self._shape(x))
        return _FakeQuant.apply(x, s, z, self.qmin, self.qmax)

    def effective_scale(self) -> Tensor:
        """The scale the forward pass uses (and the exporter must write): an optimizer
        can push the learned parameter through zero; its magnitude is what counts."""
        return _positive(self.scale.detach())


class QuantWrapper(nn.Module):
    """A conv or linear layer with fake-quantized input and weights."""

    def __init__(
        self, layer: nn.Conv2d | nn.Linear, w_bits: int, a_bits: int, a_symmetric: bool
    ) -> None:
        super().__init__()
        self.layer = layer
        self.w_quant = LsqQuantizer(w_bits, True, layer.weight.shape[0], channel_axis=0)
        self.a_quant = LsqQuantizer(a_bits, a_symmetric, signed=a_symmetric)
        self.w_quant.initialise(layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        w = self.w_quant(self.layer.weight)
        x = self.a_quant(x)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return nn.functional.linear(x, w, self.layer.bias)


def prepare_qat(
    model: nn.Module,
    example: Tensor,
    w_bits: int = 8,
    a_bits: int = 8,
    a_symmetric: bool = False,
    init: str = "minmax",
    calibration: list[Tensor] | None = None,
    forward_loop: Callable[[nn.Module], Any] | None = None,
    float_below: int = 0,
) -> nn.Module:
    """BN folded into convs (exactly), then every conv/linear wrapped with fake quantizers
    (except those with fewer than ``float_below`` input channels, which stay float as the
    exporter leaves them); activation scales initialised with ``init`` on what the model
    sees while ``forward_loop(model)`` runs it (ModelOpt's convention), or on
    ``calibration`` batches."""
    from edgecompress.merge.engine import merge

    folded = merge(model, example, ("drop_noops", "bn_into_previous")).model
    for name, mod in list(folded.named_modules()):
        if isinstance(mod, nn.Conv2d | nn.Linear) and not isinstance(mod, QuantWrapper):
            if in_channels(mod) < float_below:
                continue
            folded.set_submodule(name, QuantWrapper(mod, w_bits, a_bits, a_symmetric))
    for q in quantizers(folded, "w"):
        q.initialise(q_weight(folded, q), init)
    if forward_loop is None:
        batches = calibration or [example]

        def forward_loop(m: nn.Module) -> None:
            for x in batches:
                m(x)

    _init_activations(folded, forward_loop, init)
    return folded


def in_channels(layer: nn.Conv2d | nn.Linear) -> int:
    """What a layer multiplies per output: its input channels (or features)."""
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def is_quantized(model: nn.Module) -> bool:
    """True for a model with fake quantizers in it (what ``prepare_qat`` returns)."""
    return any(isinstance(m, QuantWrapper) for m in model.modules())


def quantizers(model: nn.Module, kind: str) -> list[LsqQuantizer]:
    """Each ``kind`` ("w" or "a") quantizer once, in model order (layers reading the same
    tensor share one input quantizer)."""
    found = [getattr(w, f"{kind}_quant") for w in model.modules() if isinstance(w, QuantWrapper)]
    return list(dict.fromkeys(found))


def q_weight(model: nn.Module, q: LsqQuantizer) -> Tensor:
    return next(
        w.layer.weight for w in model.modules() if isinstance(w, QuantWrapper) and w.w_quant is q
    )


@torch.no_grad()
def _init_activations(
    model: nn.Module, forward_loop: Callable[[nn.Module], Any], method: str
) -> None:
    """Calibrate every input quantizer on what ``forward_loop`` feeds it. Layers that read
    the same tensor (a ResNet block's first conv and its downsample, Inception's
    branches) are given one quantizer between them: the INT8 graph quantizes that tensor
    once, so QAT must train the scale it will run with."""
    wrappers = [w for w in model.modules() if isinstance(w, QuantWrapper)]
    seen: dict[QuantWrapper, list[Tensor]] = {}
    readers: dict[int, tuple[Tensor, list[QuantWrapper]]] = {}  # the tensor kept: ids stay
    handles = []
    for w in wrappers:
        w.a_quant.enabled = False

        def hook(m: QuantWrapper, args: tuple) -> None:
            x = args[0].detach()
            if m not in seen:  # which layers share a tensor: the same in every batch
                readers.setdefault(id(args[0]), (args[0], []))[1].append(m)
            # minmax needs each batch's extremes only: every activation of every batch,
            # kept, took MaxViT-T at 224 px to 9.4 GB here.
            seen.setdefault(m, []).append(
                torch.stack([x.min(), x.max()]) if method == "minmax" and x.numel() else x
            )

        handles.append(w.register_forward_pre_hook(hook))
    model.eval()
    forward_loop(model)
    for h in handles:
        h.remove()
    for group in _shared_groups(wrappers, [ws for _, ws in readers.values()]):
        xs = [x.flatten() for w in group for x in seen[w]]
        q = group[0].a_quant
        q.initialise(torch.cat(xs), method)
        q.enabled = True
        for w in group[1:]:
            w.a_quant = q


def _shared_groups(
    wrappers: list[QuantWrapper], reads: list[list[QuantWrapper]]
) -> list[list[QuantWrapper]]:
    """The layers that ran, grouped so that two layers that ever read the same tensor are
    in one group (union-find over the reads), in model order."""
    parent = {w: w for ws in reads for w in ws}

    def root(w: QuantWrapper) -> QuantWrapper:
        while parent[w] is not w:
            parent[w] = parent[parent[w]]
            w = parent[w]
        return w

    for ws in reads:
        for w in ws[1:]:
            parent[root(w)] = root(ws[0])
    groups: dict[QuantWrapper, list[QuantWrapper]] = {}
    for w in wrappers:
        if w in parent:
            groups.setdefault(root(w), []).append(w)
    return list(groups.values())


def set_weight_bits(model: nn.Module, bits: int, keep: Mapping[str, int] | None = None) -> None:
    """Every layer's weights to ``bits``, except the layers ``keep`` names, which stay at
    (or move up to) the bits it gives them."""
    for name, mod in model.named_modules():
        if isinstance(mod, QuantWrapper):
            want = max(bits, keep.get(name, bits)) if keep else bits
            if mod.w_quant.bits != want:
                mod.w_quant.set_bits(want)


def float_copy(model: nn.Module, snap: bool = False) -> nn.Module:
    """The QAT model with its quantizers taken out: the trained float weights (``snap``:
    each weight as its fake-quantized value, which quantizing again with the learned scale
    gives back exactly), for export (the exporter re-applies the learned scales)."""
    import copy

    plain = copy.deepcopy(model)
    for name, mod in list(plain.named_modules()):
        if isinstance(mod, QuantWrapper):
            if snap:
                with torch.no_grad():
                    mod.layer.weight.copy_(mod.w_quant(mod.layer.weight))
            plain.set_submodule(name, mod.layer)
    return plain
