"""Multi-layer perceptron: the default zoo's architecture (width is the capacity axis)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .dropout import dropout_layers, sequential

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU}


@dataclass
class MLPConfig:
    in_dim: int
    out_dim: int
    width: int = 64
    depth: int = 2  # number of hidden layers
    activation: str = "relu"
    dropout: float = 0.0  # after each hidden activation


def build(cfg: MLPConfig) -> nn.Sequential:
    """in -> [Linear(width) -> act (-> dropout)] x depth -> Linear(out), as one nn.Sequential."""
    layers: list[nn.Module] = []
    d = cfg.in_dim
    for _ in range(cfg.depth):
        layers += [nn.Linear(d, cfg.width), ACTIVATIONS[cfg.activation](), *dropout_layers(cfg.dropout)]
        d = cfg.width
    layers.append(nn.Linear(d, cfg.out_dim))
    return sequential(layers)
