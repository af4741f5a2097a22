"""Small 1-D/2-D CNN with BatchNorm: conv blocks then a linear head (width = channels)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .dropout import dropout_layers, sequential
from .mlp import ACTIVATIONS


@dataclass
class CNNConfig:
    in_channels: int
    out_dim: int
    spatial_dims: int = 1  # 1 for signals (MNIST-1D), 2 for images
    width: int = 16  # channels of every conv layer
    depth: int = 2  # conv blocks
    kernel_size: int = 3
    activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.0  # after each block's activation


def build(cfg: CNNConfig) -> nn.Sequential:
    """[Conv -> BN -> act (-> dropout) -> MaxPool(2)] x depth -> global average pool -> Linear."""
    conv = nn.Conv1d if cfg.spatial_dims == 1 else nn.Conv2d
    norm = nn.BatchNorm1d if cfg.spatial_dims == 1 else nn.BatchNorm2d
    pool = nn.MaxPool1d if cfg.spatial_dims == 1 else nn.MaxPool2d
    gap = nn.AdaptiveAvgPool1d(1) if cfg.spatial_dims == 1 else nn.AdaptiveAvgPool2d(1)
    layers: list[nn.Module] = []
    c = cfg.in_channels
    for _ in range(cfg.depth):
        layers.append(conv(c, cfg.width, cfg.kernel_size, padding=cfg.kernel_size // 2,
                           bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(norm(cfg.width))
        layers += [ACTIVATIONS[cfg.activation](), *dropout_layers(cfg.dropout), pool(2)]
        c = cfg.width
    layers += [gap, nn.Flatten(), nn.Linear(c, cfg.out_dim)]
    return sequential(layers)
