"""The arithmetic of exact merges: each function returns one layer that computes what the
given layers computed together (inference mode, BatchNorm with its running statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bn_affine(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """BN in eval mode is y = s * x + t per channel."""
    assert bn.running_var is not None and bn.running_mean is not None
    s = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    beta = bn.bias if bn.bias is not None else torch.zeros_like(s)
    return s.detach(), (beta - bn.running_mean * s).detach()


def _conv_like(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A conv with ``conv``'s stride/padding/groups and the given weights (bias always on)."""
    groups = conv.groups
    out = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        (weight.shape[2], weight.shape[3]),
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=groups,
        bias=True,
    )
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)  # type: ignore[union-attr]
    return out


def _bias(layer: nn.Conv2d | nn.Linear) -> Tensor:
    return layer.bias.detach() if layer.bias is not None else torch.zeros(layer.weight.shape[0])


def bn_into_previous(
    layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d
) -> nn.Module:
    """conv -> BN  =>  conv with scaled filters and shifted bias."""
    s, t = bn_affine(bn)
    w = layer.weight.detach() * s.reshape(-1, *([1] * (layer.weight.dim() - 1)))
    b = _bias(layer) * s + t
    return _with_weights(layer, w, b)


def bn_into_next(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """BN -> conv  =>  conv, exact only when the conv has no zero padding (padding would see
    zeros where the BN would have put t) and is not grouped."""
    s, t = bn_affine(bn)
    w = conv.weight.detach()
    b = _bias(conv) + (w * t.reshape(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return _conv_like(conv, w * s.reshape(1, -1, 1, 1), b)


def pad_kernel(w: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad a kernel to ``size`` around its centre (1x1 -> 3x3 in RepVGG)."""
    dh, dw = size[0] - w.shape[2], size[1] - w.shape[3]
    return F.pad(w, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def identity_kernel(channels: int, size: tuple[int, int], scale: Tensor | None = None) -> Tensor:
    """The kernel of x -> scale * x (a per-channel identity convolution)."""
    w = torch.zeros(channels, channels, *size)
    idx = torch.arange(channels)
    w[idx, idx, size[0] // 2, size[1] // 2] = 1.0 if scale is None else scale
    return w


def sum_branches(convs: list[nn.Conv2d], identity: list[tuple[int, Tensor, Tensor]]) -> nn.Conv2d:
    """conv_a(x) + conv_b(x) + ... + (s * x + t)  =>  one conv with the largest kernel
    (structural re-parameterisation: kernels zero-padded to the same size and added)."""
    size = (max(c.kernel_size[0] for c in convs), max(c.kernel_size[1] for c in convs))
    weight = torch.stack([pad_kernel(c.weight.detach(), size) for c in convs]).sum(0)
    bias = torch.stack([_bias(c) for c in convs]).sum(0)
    for channels, s, t in identity:
        weight = weight + identity_kernel(channels, size, s)
        bias = bias + t
    ref = max(convs, key=lambda c: c.kernel_size[0])
    return _conv_like(ref, weight, bias)


def stack_outputs(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """cat([conv_a(x), conv_b(x)], dim=1)  =>  one conv with the filters stacked."""
    size = (max(c.kernel_size[0] for c in convs), max(c.kernel_size[1] for c in convs))
    weight = torch.cat([pad_kernel(c.weight.detach(), size) for c in convs])
    bias = torch.cat([_bias(c) for c in convs])
    ref = max(convs, key=lambda c: c.kernel_size[0])
    return _conv_like(ref, weight, bias)


def compose(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """conv (any kernel) -> 1x1 conv, nothing between  =>  one conv."""
    w2 = second.weight.detach().flatten(1)  # out2 x out1
    w = torch.einsum("om,mikl->oikl", w2, first.weight.detach())
    b = w2 @ _bias(first) + _bias(second)
    return _conv_like(first, w, b)


def compose_linear(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    out = nn.Linear(first.in_features, second.out_features)
    with torch.no_grad():
        out.weight.copy_(second.weight @ first.weight)
        out.bias.copy_(second.weight @ _bias(first) + _bias(second))
    return out


def scale_shift(layer: nn.Conv2d | nn.Linear, scale: float = 1.0, shift: float = 0.0) -> nn.Module:
    """layer(x) * scale + shift  =>  layer with scaled weights and bias."""
    w, b = layer.weight.detach() * scale, _bias(layer) * scale + shift
    return _with_weights(layer, w, b)


def _with_weights(layer: nn.Conv2d | nn.Linear, w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    """A layer like ``layer`` (linear or conv) holding weights ``w`` and bias ``b``."""
    if isinstance(layer, nn.Linear):
        out = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            out.weight.copy_(w)
            out.bias.copy_(b)
        return out
    return _conv_like(layer, w, b)
