"""Model code as a third party writes it (its own module, its own conventions), for the
tests of models users bring: built with ``--arch their_models:NAME`` after this folder is
put on ``sys.path``."""

import torch
from torch import nn


class GreyNet(nn.Module):  # one input channel, its head sized by an int input_size
    def __init__(self, input_size: int = 28, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (input_size // 2) ** 2, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv2(self.conv1(x).relu()).relu(), 2)
        return self.fc(torch.flatten(x, 1))


class Gated(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        y = self.conv(x).relu()
        if y.mean() > 0.5:
            y = y * 0.5
        return self.fc(y.mean((2, 3)))


class CumMaxNet(nn.Module):  # torch.onnx has no exporter for cummax
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.cummax(self.conv(x).relu(), dim=3).values.mean((2, 3)))


class UniqueNet(CumMaxNet):  # exports to ONNX; rknn-toolkit2 refuses its Unique
    def forward(self, x):
        x = self.conv(x).relu()
        return self.fc(x.mean((2, 3)) + torch.unique(x.round()).numel() * 1e-3)
