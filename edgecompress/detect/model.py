"""A YOLOv8-style detector, written for edgecompress: CSP backbone (C2f blocks, SPPF), PAN
neck (top-down then bottom-up, joined by concatenation), and a decoupled anchor-free head
at strides 8, 16 and 32.

The head is cut before its decoding: :meth:`YoloDetector.forward` returns, in training and
in eval alike, the raw convolution outputs, first the box logits of every level then the
class logits of every level::

    (box_8, box_16, box_32, cls_8, cls_16, cls_32)
    box_s: (N, 4 * reg_max, H / s, W / s)  DFL bins of the left, top, right, bottom distances
    cls_s: (N, classes, H / s, W / s)      class logits (before the sigmoid)

the layout :func:`edgecompress.runtime.detect_post.decode_yolov8` reads (``box_logits =
out[:3]``, ``cls_logits = out[3:]``, one image at a time). An NPU runs the convolutions;
the DFL softmax, the sigmoid, the grid offsets and NMS run in NumPy on the host or board.

Module names are stable and say where a layer sits, so pruning and mixed precision can
name layers: ``backbone.stage2.1.cv_out.conv``, ``neck.down4.conv``, ``head.box.0.2`` (the
last, plain convolution of level 0's box branch), ``head.cls.2.0.conv``.

>>> model = fashion_detector(num_classes=10).eval()
>>> outs = model(torch.zeros(1, 3, 160, 160))
>>> [tuple(o.shape) for o in outs][:2]
[(1, 64, 20, 20), (1, 64, 10, 10)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

STRIDES = (8, 16, 32)
T = TypeVar("T")


def _channels(c: float, width: float, max_channels: int) -> int:
    """``c * width``, at most ``max_channels``, rounded up to a multiple of 8 (NPUs and
    vector units work in groups of 8 or 16 channels)."""
    return max(8, math.ceil(min(c, max_channels) * width / 8) * 8)


def _repeats(n: int, depth: float) -> int:
    return max(1, round(n * depth))


class ConvBNAct(nn.Module):
    """Convolution (no bias), batch norm, SiLU; ``k`` odd, padded to keep the size at
    stride 1."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convolutions, with a residual connection when ``shortcut``."""

    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """The CSP block of YOLOv8: a 1x1 convolution whose output is split in two halves; the
    second runs through ``n`` bottlenecks, keeping each one's output; everything (both
    halves and every bottleneck's output) is concatenated and mixed by a 1x1 convolution.

    The split is written as two 1x1 convolutions (``cv_skip``, ``cv_in``), the same
    function and MACs as one convolution and a channel split, so that a pruning graph sees
    plain convolutions and a concatenation, with no split to keep consistent."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        hidden = cout // 2
        self.cv_skip = ConvBNAct(cin, hidden)
        self.cv_in = ConvBNAct(cin, hidden)
        self.blocks = nn.ModuleList(Bottleneck(hidden, shortcut) for _ in range(n))
        self.cv_out = ConvBNAct((2 + n) * hidden, cout)

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.cv_skip(x), self.cv_in(x)]
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.cv_out(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools (receptive fields 5, 9,
    13) of a 1x1-reduced input, concatenated with it and mixed by a 1x1 convolution."""

    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv_in = ConvBNAct(cin, hidden)
        self.pool = nn.MaxPool2d(k, stride=1, padding=k // 2)
        self.cv_out = ConvBNAct(4 * hidden, cout)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv_in(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv_out(torch.cat(y, dim=1))


class Backbone(nn.Module):
    """Stem and four stages, each a stride-2 3x3 convolution then a C2f; SPPF at the end.
    Returns the stride 8, 16 and 32 features."""

    def __init__(self, ch: Sequence[int], reps: Sequence[int]) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, ch[0], 3, 2)
        self.stage1 = nn.Sequential(ConvBNAct(ch[0], ch[1], 3, 2), C2f(ch[1], ch[1], reps[0], True))
        self.stage2 = nn.Sequential(ConvBNAct(ch[1], ch[2], 3, 2), C2f(ch[2], ch[2], reps[1], True))
        self.stage3 = nn.Sequential(ConvBNAct(ch[2], ch[3], 3, 2), C2f(ch[3], ch[3], reps[2], True))
        self.stage4 = nn.Sequential(
            ConvBNAct(ch[3], ch[4], 3, 2), C2f(ch[4], ch[4], reps[3], True), SPPF(ch[4], ch[4])
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        return p3, p4, self.stage4(p4)


class Neck(nn.Module):
    """PAN: top-down (upsample the coarser map, concatenate, C2f) from stride 32 to 8,
    then bottom-up (stride-2 convolution, concatenate, C2f) back to 32."""

    def __init__(self, ch: Sequence[int], n: int) -> None:
        super().__init__()
        c3, c4, c5 = ch[2], ch[3], ch[4]
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4 = C2f(c5 + c4, c4, n, False)
        self.top3 = C2f(c4 + c3, c3, n, False)
        self.down4 = ConvBNAct(c3, c3, 3, 2)
        self.out4 = C2f(c3 + c4, c4, n, False)
        self.down5 = ConvBNAct(c4, c4, 3, 2)
        self.out5 = C2f(c4 + c5, c5, n, False)

    def forward(self, p3: Tensor, p4: Tensor, p5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t4 = self.top4(torch.cat([self.up(p5), p4], dim=1))
        n3 = self.top3(torch.cat([self.up(t4), p3], dim=1))
        n4 = self.out4(torch.cat([self.down4(n3), t4], dim=1))
        n5 = self.out5(torch.cat([self.down5(n4), p5], dim=1))
        return n3, n4, n5


class Head(nn.Module):
    """Decoupled anchor-free head: per level a box branch (two 3x3 ConvBNAct, then a 1x1
    convolution to ``4 * reg_max`` DFL logits) and a class branch (the same, to
    ``num_classes`` logits). ``box[i]`` and ``cls[i]`` serve level ``i``."""

    def __init__(self, ch: Sequence[int], num_classes: int, reg_max: int) -> None:
        super().__init__()
        c_box = max(16, ch[0] // 4, 4 * reg_max)
        c_cls = max(ch[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c_box, 3), ConvBNAct(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1)
            )
            for c in ch
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c_cls, 3), ConvBNAct(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1)
            )
            for c in ch
        )

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        boxes = [branch(f) for branch, f in zip(self.box, feats, strict=True)]
        classes = [branch(f) for branch, f in zip(self.cls, feats, strict=True)]
        return (*boxes, *classes)


class YoloDetector(nn.Module):
    """Backbone, neck and head; ``forward`` returns the head's raw outputs (see the module
    docstring). ``strides``, ``reg_max`` and ``num_classes`` say how to decode them.

    ``prior_size`` (pixels, the training input side) only sets the initial class bias: a
    cell starts predicting each class with probability about ``5 / classes / cells``, so
    that the loss is not swamped by the many background cells at the start."""

    strides = STRIDES

    def __init__(
        self,
        num_classes: int = 80,
        width: float = 0.25,
        depth: float = 0.33,
        reg_max: int = 16,
        max_channels: int = 1024,
        prior_size: int = 640,
    ) -> None:
        super().__init__()
        if num_classes < 1 or reg_max < 2:
            raise ValueError(
                f"YoloDetector: num_classes must be >= 1 and reg_max >= 2, got {num_classes} "
                f"and {reg_max}"
            )
        ch = [_channels(c, width, max_channels) for c in (64, 128, 256, 512, 1024)]
        reps = [_repeats(n, depth) for n in (3, 6, 6, 3)]
        self.num_classes, self.reg_max = num_classes, reg_max
        self.backbone = Backbone(ch, reps)
        self.neck = Neck(ch, reps[0])
        self.head = Head((ch[2], ch[3], ch[4]), num_classes, reg_max)
        self._init_biases(prior_size)

    def _init_biases(self, prior_size: int) -> None:
        for s, box, cls in zip(self.strides, self.head.box, self.head.cls, strict=True):
            last_box, last_cls = list(box.children())[-1], list(cls.children())[-1]
            assert isinstance(last_box, nn.Conv2d) and isinstance(last_cls, nn.Conv2d)
            assert last_box.bias is not None and last_cls.bias is not None
            nn.init.constant_(last_box.bias, 1.0)  # flat bins: mid-range distances
            p = 5.0 / self.num_classes / (prior_size / s) ** 2
            nn.init.constant_(last_cls.bias, math.log(p / (1.0 - p)))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.head(self.neck(*self.backbone(x)))


def split_outputs(outputs: Sequence[T]) -> tuple[list[T], list[T]]:
    """The head's outputs (tensors or arrays) as (box logits per level, class logits per
    level)."""
    if len(outputs) % 2 or not outputs:
        raise ValueError(
            f"a YOLO head cut before decoding has one box and one class output per level, "
            f"got {len(outputs)} outputs"
        )
    half = len(outputs) // 2
    return list(outputs[:half]), list(outputs[half:])


def yolo_detector(
    num_classes: int = 10, width: float = 0.25, depth: float = 0.33, reg_max: int = 16
) -> YoloDetector:
    """YOLOv8n's shape at the default multipliers (channels 16..256, C2f repeats 1/2/2/1);
    larger variants by ``width``/``depth`` (s: 0.5/0.33, m: 0.75/0.67)."""
    return YoloDetector(num_classes, width, depth, reg_max)


def fashion_detector(num_classes: int = 10) -> YoloDetector:
    """The built-in example's detector: YOLOv8n at half its width (channels 8..128; 0.91M
    parameters, 88M MACs at 160x160, a third of YOLOv8n's 255M there), for 160x160 inputs."""
    return YoloDetector(num_classes, width=0.125, depth=0.33, reg_max=16, prior_size=160)
