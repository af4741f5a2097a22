"""Architecture families: a dict from family name to (config class, builder)."""

from __future__ import annotations

from torch import nn

from . import cnn, mlp

FAMILIES = {
    "mlp": (mlp.MLPConfig, mlp.build),
    "cnn": (cnn.CNNConfig, cnn.build),
}


def build_model(family: str, **kwargs) -> nn.Module:
    """Build one model of ``family`` from config keyword arguments."""
    config_cls, builder = FAMILIES[family]
    return builder(config_cls(**kwargs))
