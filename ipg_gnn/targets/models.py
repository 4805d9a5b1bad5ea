"""The DNNs under study. All are plain `nn.Module` graphs that `torch.fx` can trace: activations,
pooling and flatten are modules, residual adds are explicit, so the IPG capture sees every unit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(widths) -> Linear. Default 784-350-50-10 (prior work)."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (350, 50)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = int(torch.tensor(input_shape).prod())
        for w in widths:
            layers += [nn.Linear(fan_in, w), nn.ReLU()]
            fan_in = w
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class SmallCNN(nn.Module):
    """[Conv3x3 -> BN -> ReLU -> MaxPool2] per entry of `channels`, then global average pooling
    and a linear head."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c in channels:
            layers += [*_conv_bn_relu(c_in, c), nn.MaxPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, added before ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A conv-BN-ReLU stem, one `BasicBlock` per stage (stride 2 after the first), global average
    pooling and a linear head."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(input_shape[0], widths[0]))
        blocks, c_in = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c_in, w, stride=1 if i == 0 else 2))
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))
