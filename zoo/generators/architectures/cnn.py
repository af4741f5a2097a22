"""Small 1-D/2-D CNN with BatchNorm: conv blocks then a linear head (width = channels)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .dropout import dropout_layers, sequential
from .family import Calibration, Family
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


def _task_kwargs(input_shape: tuple[int, ...], n_out: int, vocab_size: int | None) -> dict:
    """Signals [L] or [C, L] are 1-D (one channel if none), images [C, H, W] 2-D."""
    return {"in_channels": 1 if len(input_shape) == 1 else input_shape[0], "out_dim": n_out,
            "spatial_dims": 1 if len(input_shape) <= 2 else 2}


def _input_adapter(input_shape: tuple[int, ...]):
    if len(input_shape) == 1:  # a signal gets its channel axis
        return lambda x: x.reshape(x.shape[0], 1, *input_shape)
    return lambda x: x


def _accepts(task: str, input_shape: tuple[int, ...], kind: str, vocab_size: int | None) -> str | None:
    if vocab_size is not None:
        return f"convolves real-valued signals or images, not the tokens of task {task}"
    if kind == "pinn":
        return f"convolves signals or images, not the collocation points of the PDE task {task}"
    return None


CNN = Family("cnn", CNNConfig, build, ("width", "depth", "activation", "dropout"), _task_kwargs, _accepts,
             calibration=Calibration("mnist1d", {"width": 16, "depth": 2, "activation": "relu"}),
             input_adapter=_input_adapter, shape_probe=True)
