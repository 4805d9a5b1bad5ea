"""CIFAR architectures written the way public model zoos write them (`out.view(out.size(0),
-1)`, `out += self.shortcut(x)`, functional ReLUs, SE gates, channel shuffles), at small widths,
so the capture is tested on models it was not written for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)
    )


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5)
        self.conv2 = nn.Conv2d(4, 6, 5)
        self.fc1 = nn.Linear(6 * 5 * 5, 12)
        self.fc2 = nn.Linear(12, 8)
        self.fc3 = nn.Linear(8, 10)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = out.view(out.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(out)))))


class VGG(nn.Module):
    def __init__(self, cfg=(4, "M", 6, "M", 8, 8, "M", 8, "M", 8, "M")) -> None:
        super().__init__()
        layers, c_in = [], 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
                c_in = v
        self.features = nn.Sequential(*layers, nn.AvgPool2d(kernel_size=1, stride=1))
        self.classifier = nn.Linear(c_in, 10)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_bn(in_planes, planes, 1, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """ResNet's bottleneck; with `groups` (cardinality) and `expansion` 2, ResNeXt's block."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, groups: int = 1, expansion: int = 4
    ) -> None:
        super().__init__()
        out_planes = expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = conv_bn(in_planes, out_planes, 1, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return F.relu(out)


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.gate(self.conv2(F.relu(self.bn2(out))))
        out += shortcut
        return out

    def gate(self, out: torch.Tensor) -> torch.Tensor:
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet18(width: int = 4) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], width)


def resnet50(width: int = 2) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], width)


def preact_resnet18(width: int = 4) -> ResNet:
    return ResNet(PreActBlock, [2, 2, 2, 2], width)


class DenseBottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, nblocks=(2, 2, 2, 1), growth: int = 2) -> None:
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(nblocks):
            for _ in range(n):
                stages.append(DenseBottleneck(planes, growth))
                planes += growth
            if i < len(nblocks) - 1:
                stages.append(Transition(planes, planes // 2))
                planes //= 2
        self.dense = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, 10)

    def forward(self, x):
        out = self.dense(self.conv1(x))
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.view(out.size(0), -1))


class Inception(nn.Module):
    def __init__(self, c_in: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, pp: int) -> None:
        super().__init__()
        relu = nn.ReLU(True)
        self.b1 = nn.Sequential(*conv_bn(c_in, n1, 1), relu)
        self.b2 = nn.Sequential(*conv_bn(c_in, n3r, 1), relu, *conv_bn(n3r, n3), relu)
        self.b3 = nn.Sequential(
            *conv_bn(c_in, n5r, 1), relu, *conv_bn(n5r, n5), relu, *conv_bn(n5, n5), relu
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_bn(c_in, pp, 1), relu)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*conv_bn(3, 6), nn.ReLU(True))
        self.a3 = Inception(6, 2, 3, 4, 1, 2, 2)
        self.b3 = Inception(10, 3, 3, 4, 2, 3, 2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = Inception(12, 4, 2, 3, 1, 2, 2)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.linear = nn.Linear(11, 10)

    def forward(self, x):
        out = self.maxpool(self.b3(self.a3(self.pre_layers(x))))
        out = self.maxpool(self.a4(out))
        out = self.avgpool(out)
        return self.linear(out.view(out.size(0), -1))


class Root(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, xs):
        return F.relu(self.bn(self.conv(torch.cat(xs, 1))))


class Tree(nn.Module):
    def __init__(self, c_in: int, c_out: int, level: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.root = Root(2 * c_out, c_out)
        if level == 1:
            self.left_tree = BasicBlock(c_in, c_out, stride)
            self.right_tree = BasicBlock(c_out, c_out, 1)
        else:
            self.left_tree = Tree(c_in, c_out, level - 1, stride)
            self.right_tree = Tree(c_out, c_out, level - 1, 1)

    def forward(self, x):
        out1 = self.left_tree(x)
        return self.root([out1, self.right_tree(out1)])


class DLA(nn.Module):
    def __init__(self, w: int = 2) -> None:
        super().__init__()
        self.base = nn.Sequential(*conv_bn(3, w), nn.ReLU(True))
        self.layer1 = Tree(w, 2 * w, level=1, stride=2)
        self.layer2 = Tree(2 * w, 4 * w, level=2, stride=2)
        self.linear = nn.Linear(4 * w, 10)

    def forward(self, x):
        out = self.layer2(self.layer1(self.base(x)))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SEBlock(PreActBlock):
    """SENet's pre-activation block: the SE gate `w` multiplies `out` per channel."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__(in_planes, planes, stride)
        self.fc1 = nn.Conv2d(planes, max(planes // 4, 1), 1)
        self.fc2 = nn.Conv2d(max(planes // 4, 1), planes, 1)

    def gate(self, out: torch.Tensor) -> torch.Tensor:
        w = F.avg_pool2d(out, out.size(2))
        w = F.relu(self.fc1(w))
        w = F.sigmoid(self.fc2(w))
        return out * w


def senet18(width: int = 4) -> ResNet:
    return ResNet(SEBlock, [2, 2, 2, 2], width)


class MobileBlock(nn.Module):
    """MobileNetV2 inverted residual: expand, depthwise, project; ReLU6 in place."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * c_in
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU6(inplace=True)
        self.shortcut = nn.Sequential()
        if stride == 1 and c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, 1)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + self.shortcut(x) if self.stride == 1 else out
        return out


class MobileNetV2(nn.Module):
    cfg = [(1, 4, 1, 1), (2, 6, 2, 2), (2, 8, 2, 2), (2, 8, 1, 1)]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        layers, c_in = [], 4
        for expansion, c_out, n, stride in self.cfg:
            for s in [stride] + [1] * (n - 1):
                layers.append(MobileBlock(c_in, c_out, expansion, s))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(c_in, 12, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.linear = nn.Linear(12, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class ResNeXt(nn.Module):
    def __init__(self, cardinality: int = 2, width: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        blocks, c_in = [], 4
        for stride in (1, 2, 2):
            blocks.append(Bottleneck(c_in, cardinality * width, stride, cardinality, 2))
            c_in, width = 2 * cardinality * width, 2 * width
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(c_in, 10)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SE(nn.Module):
    """RegNetY squeeze-excitation: adaptive pooling, two 1x1 convs, a sigmoid gate."""

    def __init__(self, c_in: int, c_se: int) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(c_in, c_se, 1)
        self.se2 = nn.Conv2d(c_se, c_in, 1)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(x, (1, 1))
        out = F.relu(self.se1(out))
        out = self.se2(out).sigmoid()
        return x * out


class RegNetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, group_width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, groups=c_out // group_width, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = SE(c_out, max(c_in // 4, 1))
        self.conv3 = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, 1, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return F.relu(out)


class RegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layers = nn.Sequential(
            RegNetBlock(4, 4, 2, 1), RegNetBlock(4, 8, 2, 2), RegNetBlock(8, 8, 4, 1)
        )
        self.linear = nn.Linear(8, 10)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.linear(out.view(out.size(0), -1))


class DPNBottleneck(nn.Module):
    """Dual path: the first `out_planes` channels are added (residual), the rest concatenated
    (dense), by slicing along the channel dim."""

    def __init__(self, last: int, c_in: int, out_planes: int, dense: int, stride: int, first: bool):
        super().__init__()
        self.out_planes, self.dense_depth = out_planes, dense
        self.conv1 = nn.Conv2d(last, c_in, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(c_in)
        self.conv3 = nn.Conv2d(c_in, out_planes + dense, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes + dense)
        self.shortcut = nn.Sequential()
        if first:
            self.shortcut = conv_bn(last, out_planes + dense, 1, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        x = self.shortcut(x)
        d = self.out_planes
        out = torch.cat([x[:, :d, :, :] + out[:, :d, :, :], x[:, d:, :, :], out[:, d:, :, :]], 1)
        return F.relu(out)


class DPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(
            DPNBottleneck(4, 4, 6, 2, 1, True), DPNBottleneck(10, 4, 6, 2, 1, False)
        )
        self.layer2 = nn.Sequential(DPNBottleneck(12, 4, 8, 2, 2, True))
        self.linear = nn.Linear(12, 10)

    def forward(self, x):
        out = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        out = F.avg_pool2d(out, 16)
        return self.linear(out.view(out.size(0), -1))


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class ShuffleBasic(nn.Module):
    def __init__(self, c: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(c * split_ratio)
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleDown(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return self.shuffle(torch.cat([out1, out2], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(ShuffleDown(4, 8), ShuffleBasic(8))
        self.layer2 = nn.Sequential(ShuffleDown(8, 12), ShuffleBasic(12))
        self.conv2 = nn.Conv2d(12, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


def swish(x):
    return x * x.sigmoid()


class EfficientBlock(nn.Module):
    """Expand, depthwise, swish SE, project; residual when shapes allow (drop-connect is off in
    eval mode)."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        self.stride, self.expand = stride, expand
        planes = expand * c_in
        if expand != 1:
            self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se1 = nn.Conv2d(planes, max(c_in // 2, 1), 1)
        self.se2 = nn.Conv2d(max(c_in // 2, 1), planes, 1)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.has_skip = stride == 1 and c_in == c_out

    def forward(self, x):
        out = x if self.expand == 1 else swish(self.bn1(self.conv1(x)))
        out = swish(self.bn2(self.conv2(out)))
        w = F.adaptive_avg_pool2d(out, (1, 1))
        w = self.se2(swish(self.se1(w))).sigmoid()
        out = self.bn3(self.conv3(out * w))
        if self.has_skip:
            out = out + x
        return out


class EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layers = nn.Sequential(
            EfficientBlock(4, 4, 1, 1), EfficientBlock(4, 6, 2, 2), EfficientBlock(6, 6, 2, 1)
        )
        self.dropout = nn.Dropout(0.2)
        self.linear = nn.Linear(6, 10)

    def forward(self, x):
        out = swish(self.bn1(self.conv1(x)))
        out = F.adaptive_avg_pool2d(self.layers(out), 1)
        out = out.view(out.size(0), -1)
        return self.linear(self.dropout(out))


class OddOps(nn.Module):
    """One of each remaining unit-wise op, in-place forms, chunk, GLU, hard-swish, mean/sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.Sequential(
            nn.Hardswish(), nn.SiLU(), nn.ELU(), nn.Softplus(), nn.ReLU6(inplace=True)
        )
        self.drop = nn.Dropout2d(0.3)
        self.ident = nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        out = self.ident(self.drop(self.acts(self.conv1(x))))
        a, b = out.chunk(2, dim=1)
        out = self.conv2(a * torch.sigmoid(b))  # GLU-like gate
        out = out * F.relu6(out + 3) / 6  # hard-swish by hand
        out.relu_()
        out += self.conv3(out) * 0.5
        pooled = torch.cat([out.mean((2, 3)), out.sum(dim=[2, 3]) / 64], 1)
        return self.fc(pooled)


# name -> (constructor, expected residual-add units: the output channels of every add)
ZOO = {
    "lenet": (LeNet, 0),
    "vgg": (VGG, 0),
    "resnet18": (resnet18, 4 * 2 + 8 * 2 + 16 * 2 + 32 * 2),
    "resnet50": (resnet50, 8 * 3 + 16 * 4 + 32 * 6 + 64 * 3),
    "preact_resnet18": (preact_resnet18, 4 * 2 + 8 * 2 + 16 * 2 + 32 * 2),
    "densenet": (DenseNet, 0),
    "googlenet": (GoogLeNet, 0),
    "dla": (DLA, 2 * 4 + 4 * 8),
    "senet18": (senet18, 4 * 2 + 8 * 2 + 16 * 2 + 32 * 2),
    "mobilenetv2": (MobileNetV2, 4 + 6 + 8 + 8),
    "resnext": (ResNeXt, 8 + 16 + 32),
    "regnet": (RegNet, 4 + 8 + 8),
    "dpn": (DPN, 6 + 6 + 8),
    "shufflenetv2": (ShuffleNetV2, 0),
    "efficientnet": (EfficientNet, 4 + 6),
    "odd_ops": (OddOps, 6),
}
