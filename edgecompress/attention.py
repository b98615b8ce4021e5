"""Attention blocks in a form whose heads are layers: what pruning, merging, quantizing and
MAC counting all need to see, so it sits below them.

``standardize_attention`` swaps ``nn.MultiheadAttention`` (one packed ``in_proj_weight``
that must stay ``3 * embed_dim`` wide) for :class:`SelfAttention`, an equivalent module
with a ``qkv`` and a ``proj`` Linear whose inner width may shrink, and switches
torchvision's Swin attention to a class whose forward takes the head width from its own
weights instead of ``channels // heads`` (and calls its layers, so hooks see them)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
)


class SelfAttention(nn.Module):
    """Multi-head self-attention with its projections as plain Linears.

    Called like ``nn.MultiheadAttention`` (``attn(x, x, x, need_weights=False)``) and
    returning ``(output, None)``, so the block that owns it does not change.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.in_proj_bias is None:
            raise ValueError("only packed, biased self-attention is converted")
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.batch_first)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.qkv.bias.copy_(mha.in_proj_bias)
            new.proj.weight.copy_(mha.out_proj.weight)
            new.proj.bias.copy_(mha.out_proj.bias)
        return new

    def forward(
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, **_: Any
    ) -> tuple[Tensor, None]:
        # Self-attention only: ``key`` and ``value`` are the query (as in every ViT block).
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, _c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _window_forward(self: ShiftedWindowAttention, x: Tensor) -> Tensor:
    """Shifted-window attention whose head width is read from ``qkv`` (so heads can go)."""
    b, h, w, c = x.shape
    wh, ww = self.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    ph, pw = x.shape[1], x.shape[2]
    # No shift along an axis that one window already covers.
    sh = self.shift_size[0] if wh < ph else 0
    sw = self.shift_size[1] if ww < pw else 0
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    rows, cols = ph // wh, pw // ww
    windows = x.view(b, rows, wh, cols, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)

    heads = self.num_heads
    layer = getattr(self.qkv, "layer", self.qkv)  # under QAT, a wrapper of the Linear
    dim = layer.out_features // (3 * heads)
    qkv = self.qkv(windows)
    cosine = isinstance(self, ShiftedWindowAttentionV2)
    if cosine and layer.bias is not None:  # Swin V2 has no key bias
        inner = heads * dim
        key = qkv[..., inner : 2 * inner] - layer.bias[inner : 2 * inner]
        qkv = torch.cat([qkv[..., :inner], key, qkv[..., 2 * inner :]], -1)
    q, k, v = qkv.reshape(windows.shape[0], wh * ww, 3, heads, dim).permute(2, 0, 3, 1, 4)
    if cosine:
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
    else:
        attn = (q * dim**-0.5) @ k.transpose(-2, -1)
    attn = attn + self.get_relative_position_bias()
    if sh or sw:
        attn = attn.view(b, rows * cols, heads, wh * ww, wh * ww) + _shift_mask(
            ph, pw, (wh, ww), (sh, sw), x
        ).unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, wh * ww, wh * ww)
    attn = F.dropout(attn.softmax(dim=-1), p=self.attention_dropout, training=self.training)
    out = (attn @ v).transpose(1, 2).reshape(windows.shape[0], wh * ww, heads * dim)
    out = F.dropout(self.proj(out), p=self.dropout, training=self.training)
    out = out.view(b, rows, cols, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


def _shift_mask(
    ph: int, pw: int, window: tuple[int, int], shift: tuple[int, int], like: Tensor
) -> Tensor:
    """-100 where two positions of a window came from different regions before the shift."""
    region = like.new_zeros((ph, pw))
    bands_h = _bands(ph, window[0], shift[0])
    bands_w = _bands(pw, window[1], shift[1])
    for i, rows in enumerate(bands_h):
        for j, cols in enumerate(bands_w):
            region[rows, cols] = 3 * i + j
    ids = region.view(ph // window[0], window[0], pw // window[1], window[1])
    ids = ids.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def _bands(size: int, window: int, shift: int) -> tuple[slice, slice, slice]:
    """The three regions along one axis that a cyclic shift brings together."""
    return slice(0, size - window), slice(size - window, size - shift), slice(size - shift, size)


class PrunableWindowAttention(ShiftedWindowAttention):
    forward = _window_forward


class PrunableWindowAttentionV2(ShiftedWindowAttentionV2):
    forward = _window_forward


def standardize_attention(model: nn.Module) -> nn.Module:
    """Make every attention block of ``model`` (in place) one whose heads can be removed."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, SelfAttention.from_mha(child))
    for module in model.modules():
        if type(module) is ShiftedWindowAttentionV2:
            module.__class__ = PrunableWindowAttentionV2
        elif type(module) is ShiftedWindowAttention:
            module.__class__ = PrunableWindowAttention
    return model


ATTENTION = (nn.MultiheadAttention, SelfAttention, ShiftedWindowAttention)


def hides_layers(model: nn.Module) -> bool:
    """Whether ``model`` has torchvision's Swin attention, which calls its qkv and proj
    weights through ``F.linear``: a MAC counter that hooks layers misses them until
    :func:`standardize_attention` makes them calls of the layers (Swin-T at 32 px: 61M
    MACs counted before, 494M after)."""
    return any(
        type(m) in (ShiftedWindowAttention, ShiftedWindowAttentionV2) for m in model.modules()
    )


def is_transformer(model: nn.Module) -> bool:
    return any(isinstance(m, ATTENTION) for m in model.modules())


def attention_blocks(model: nn.Module) -> dict[str, Any]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, SelfAttention | ShiftedWindowAttention)
    }
