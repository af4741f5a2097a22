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


def build_for_task(config: dict, input_shape: tuple[int, ...], n_classes: int):
    """(builder, input_adapter) for a flat model config on a task with samples of ``input_shape``.

    The builder makes a fresh, randomly initialised model; the adapter reshapes task inputs
    [N, *input_shape] to what the family expects (a channel axis for CNNs).
    """
    family = config["arch.family"]
    arch = {k[5:]: v for k, v in config.items() if k.startswith("arch.") and k != "arch.family"}
    if family == "mlp":
        in_dim = 1
        for d in input_shape:
            in_dim *= d
        return (lambda: build_model("mlp", in_dim=in_dim, out_dim=n_classes, **arch),
                lambda x: x.reshape(x.shape[0], -1))
    if family == "cnn":
        spatial = len(input_shape) if len(input_shape) == 1 else len(input_shape) - 1
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        return (lambda: build_model("cnn", in_channels=channels, out_dim=n_classes,
                                    spatial_dims=spatial, **arch),
                lambda x: x.reshape(x.shape[0], channels, *input_shape[-spatial:]))
    raise ValueError(f"unknown architecture family {family!r}")
