"""Multi-layer perceptron: the default zoo's architecture (width is the capacity axis)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU}


@dataclass
class MLPConfig:
    in_dim: int
    out_dim: int
    width: int = 64
    depth: int = 2  # number of hidden layers
    activation: str = "relu"


def build(cfg: MLPConfig) -> nn.Sequential:
    """in -> [Linear(width) -> act] x depth -> Linear(out), as one nn.Sequential."""
    layers: list[nn.Module] = []
    d = cfg.in_dim
    for _ in range(cfg.depth):
        layers += [nn.Linear(d, cfg.width), ACTIVATIONS[cfg.activation]()]
        d = cfg.width
    layers.append(nn.Linear(d, cfg.out_dim))
    return nn.Sequential(*layers)
