"""Small reference models: the built-in example's, the benchmarks' and the tests'.

``digits_resnet`` is a ResNet-8-style network for 32x32 inputs: a real residual
architecture (adds, BatchNorm, strided stages) small enough to train in a minute on
two CPU cores.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def digits_resnet(num_classes: int = 10) -> DigitsResNet:
    """The built-in example model (``--arch edgecompress.testing.models:digits_resnet``)."""
    return DigitsResNet(num_classes)


def small_mobilenet_v2(num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 (inverted residuals, depthwise convs, ReLU6) scaled for
    28-32 px inputs: five stages of 16-96 channels after the stride-2 stem; the benchmark's
    second reference model (``--arch edgecompress.testing.models:small_mobilenet_v2``)."""
    from torchvision.models import MobileNetV2

    # t (expansion), c (channels), n (blocks), s (stride of the first block)
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 2, 2], [6, 64, 2, 2], [6, 96, 1, 1]]
    return MobileNetV2(num_classes, inverted_residual_setting=setting)


def tiny_cnn(num_classes: int = 10) -> nn.Sequential:
    """Conv-BN-ReLU x2, pool, linear: the smallest model with every common layer."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def _cbr(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def vgg_digits(num_classes: int = 10) -> nn.Sequential:
    """VGG-style: two 3x3 conv-BN-ReLU then a 2x2 max pool per stage, three stages."""
    layers: list[nn.Module] = []
    cin = 3
    for width in (32, 64, 128):
        layers += [_cbr(cin, width, 3), _cbr(width, width, 3), nn.MaxPool2d(2)]
        cin = width
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, num_classes)
    )


class Inception(nn.Module):
    """GoogLeNet's block: 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 branches, concatenated."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, c1, 1)
        self.b2 = nn.Sequential(_cbr(cin, r3, 1), _cbr(r3, c3, 3))
        self.b3 = nn.Sequential(_cbr(cin, r5, 1), _cbr(r5, c5, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, cp, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def inception_digits(num_classes: int = 10) -> nn.Sequential:
    """Inception-style: a stem and two inception blocks with pooling between."""
    return nn.Sequential(
        _cbr(3, 32, 3),
        nn.MaxPool2d(2),
        Inception(32, 16, 16, 32, 8, 8, 8),
        nn.MaxPool2d(2),
        Inception(64, 32, 32, 48, 8, 16, 16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(112, num_classes),
    )


def tiny_vit(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """torchvision's VisionTransformer, small: 8x8 patches, 2 blocks of 4 heads, width 64."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
        mlp_dim=128, num_classes=num_classes,
    )  # fmt: skip


def tiny_swin(num_classes: int = 10) -> nn.Module:
    """torchvision's SwinTransformer, small: 2x2 patches, stages of 2 and 4 heads, 4x4
    windows, width 32."""
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        patch_size=[2, 2], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
        window_size=[4, 4], num_classes=num_classes,
    )  # fmt: skip
