"""Width-scaled ResNet-18 / ResNet-50 (He et al. 2016) in the CIFAR form used by the
phase-transition zoo: 3x3 stem without max-pool, four stages of base width w, 2w, 4w, 8w.
The reference zoo varies w from 2 to 256 (64 is the standard network)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .family import Calibration, Family, needs_image


@dataclass
class ResNetConfig:
    in_channels: int
    out_dim: int
    width: int = 64
    depth: int = 18  # 18 (basic blocks) or 50 (bottlenecks)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        block, counts = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[cfg.depth]
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, cin = [], w
        for i, n in enumerate(counts):
            planes = w * 2**i
            for j in range(n):
                layers.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, cfg.out_dim)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def build(cfg: ResNetConfig) -> ResNet:
    if cfg.depth not in (18, 50):
        raise ValueError(f"ResNet depth must be 18 or 50, got {cfg.depth}")
    return ResNet(cfg)


def _task_kwargs(input_shape: tuple[int, ...], n_out: int, vocab_size: int | None) -> dict:
    if len(input_shape) != 3:
        raise ValueError(f"needs image inputs (C, H, W), got samples of shape {input_shape}")
    return {"in_channels": input_shape[0], "out_dim": n_out}


RESNET18 = Family("resnet18", ResNetConfig, build, ("width",), _task_kwargs, needs_image,
                  calibration=Calibration("cifar10", {"width": 4}), extra={"depth": 18})
RESNET50 = Family("resnet50", ResNetConfig, build, ("width",), _task_kwargs, needs_image,
                  calibration=Calibration("cifar10", {"width": 2}), extra={"depth": 50})
