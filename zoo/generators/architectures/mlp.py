"""Multi-layer perceptron: the default zoo's architecture (width is the capacity axis), and the
PINN of the convection zoo (the same network without dropout)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .dropout import dropout_layers, sequential
from .family import Calibration, Family, flattened, takes_anything, vector_kwargs

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


def _takes_real_inputs(task: str, input_shape: tuple[int, ...], kind: str, vocab_size: int | None) -> str | None:
    if vocab_size is not None:
        return f"takes real-valued inputs, not the tokens of task {task}"
    return None


MLP = Family("mlp", MLPConfig, build, ("width", "depth", "activation", "dropout"), vector_kwargs,
             accepts=takes_anything,  # any task: tokens are read as numbers
             calibration=Calibration("mnist1d", {"width": 64, "depth": 2, "activation": "relu"}),
             input_adapter=flattened)
PINN = Family("pinn", MLPConfig, build, ("width", "depth", "activation"), vector_kwargs,
              accepts=_takes_real_inputs,
              calibration=Calibration("convection", {"width": 32, "depth": 3, "activation": "tanh"}),
              input_adapter=flattened)
