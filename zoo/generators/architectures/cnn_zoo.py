"""CNN-s and CNN-l of the Model Zoos (Schürholt et al. 2022): 3 conv + 2 linear layers.

CNN-s: conv 5x5 (8 ch) -> pool -> conv 5x5 (6) -> pool -> conv 2x2 (4) -> linear 20 -> linear out,
2,464 parameters on 28x28 grayscale (MNIST). CNN-l: 3x3 convs of 16, 32, 15 channels, each
followed by a 2x2 max-pool, then linear 20 -> out: 10,853 parameters on 32x32 RGB (CIFAR-10).
``width`` is the first conv's channel count; the others scale with it. ``dropout`` > 0 adds a
SeededDropout after every hidden activation (the Model Zoos' dropout axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .dropout import SeededDropout, dropout_layers, sequential
from .family import Calibration, Family, image_kwargs, needs_image
from .mlp import ACTIVATIONS

VARIANTS = {  # reference channels, kernel sizes, convs followed by a pool; width rescales channels
    "s": ((8, 6, 4), (5, 5, 2), 2, 8),
    "l": ((16, 32, 15), (3, 3, 3), 3, 16),
}


@dataclass
class ZooCNNConfig:
    in_channels: int
    image_size: int
    out_dim: int
    variant: str = "s"
    width: int | None = None  # None: the reference width of the variant (8 for s, 16 for l)
    hidden: int = 20
    activation: str = "tanh"
    dropout: float = 0.0  # after each hidden activation, as in the Model Zoos


def build(cfg: ZooCNNConfig) -> nn.Sequential:
    channels, kernels, pooled, ref = VARIANTS[cfg.variant]
    width = cfg.width or ref
    channels = [max(1, round(c * width / ref)) for c in channels]
    act = ACTIVATIONS[cfg.activation]
    layers: list[nn.Module] = []
    c = cfg.in_channels
    for i, (ch, k) in enumerate(zip(channels, kernels)):
        layers += [nn.Conv2d(c, ch, k)]
        if i < pooled:
            layers += [nn.MaxPool2d(2)]
        layers += [act(), *dropout_layers(cfg.dropout)]
        c = ch
    # the shape probe leaves dropout out, so building a model advances no dropout counter
    features = nn.Sequential(*(m for m in layers if not isinstance(m, SeededDropout)))
    with torch.no_grad():
        n = features(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)).numel()
    return sequential([*layers, nn.Flatten(), nn.Linear(n, cfg.hidden), act(), *dropout_layers(cfg.dropout),
                       nn.Linear(cfg.hidden, cfg.out_dim)])


def build_s(cfg: ZooCNNConfig) -> nn.Sequential:
    cfg.variant = "s"
    return build(cfg)


def build_l(cfg: ZooCNNConfig) -> nn.Sequential:
    cfg.variant = "l"
    return build(cfg)


CNN_S = Family("cnn_s", ZooCNNConfig, build_s, ("width", "activation", "dropout"), image_kwargs, needs_image,
               calibration=Calibration("mnist", {"width": 8, "activation": "tanh"}))
CNN_L = Family("cnn_l", ZooCNNConfig, build_l, ("width", "activation", "dropout"), image_kwargs, needs_image,
               calibration=Calibration("cifar10", {"width": 16, "activation": "relu"}))
