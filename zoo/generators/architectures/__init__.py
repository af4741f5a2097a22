"""Architecture families: a dict from family name to (config class, builder, spec fields used).

Every family is width-scalable: ``arch.width`` is its capacity axis (hidden units, channels of
the first conv, base width of a ResNet, embedding size of a transformer). Families listing
"dropout" take ``arch.dropout`` (dropout.SeededDropout after each hidden activation).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from . import cnn, cnn_zoo, mlp, resnet, transformer

FAMILIES = {
    "mlp": (mlp.MLPConfig, mlp.build, ("width", "depth", "activation", "dropout")),
    "pinn": (mlp.MLPConfig, mlp.build, ("width", "depth", "activation")),
    "cnn": (cnn.CNNConfig, cnn.build, ("width", "depth", "activation", "dropout")),
    "cnn_s": (cnn_zoo.ZooCNNConfig, cnn_zoo.build_s, ("width", "activation", "dropout")),
    "cnn_l": (cnn_zoo.ZooCNNConfig, cnn_zoo.build_l, ("width", "activation", "dropout")),
    "resnet18": (resnet.ResNetConfig, resnet.build, ("width",)),
    "resnet50": (resnet.ResNetConfig, resnet.build, ("width",)),
    "vit": (transformer.ViTConfig, transformer.build_vit, ("width", "depth", "heads", "patch_size")),
    "gpt": (transformer.GPTConfig, transformer.build_gpt, ("width", "depth", "heads")),
}


def build_model(family: str, **kwargs) -> nn.Module:
    """Build one model of ``family`` from config keyword arguments."""
    config_cls, builder, _ = FAMILIES[family]
    return builder(config_cls(**kwargs))


def _task_kwargs(family: str, input_shape: tuple[int, ...], n_out: int, vocab_size: int | None) -> dict:
    """The input/output arguments a family needs for a task with samples of ``input_shape``."""
    if family in ("mlp", "pinn"):
        return {"in_dim": math.prod(input_shape), "out_dim": n_out}
    if family == "cnn":
        spatial = 1 if len(input_shape) <= 2 else 2
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        return {"in_channels": channels, "out_dim": n_out, "spatial_dims": spatial}
    if family == "gpt":
        if vocab_size is None:
            raise ValueError("gpt needs a token task (e.g. modular arithmetic)")
        return {"vocab_size": vocab_size, "block_size": input_shape[0], "out_dim": n_out}
    if len(input_shape) != 3:
        raise ValueError(f"{family} needs image inputs (C, H, W), got samples of shape {input_shape}")
    base = {"in_channels": input_shape[0], "out_dim": n_out}
    if family.startswith("resnet"):
        return {**base, "depth": int(family[6:])}
    return {**base, "image_size": input_shape[1]}


def input_adapter(family: str, input_shape: tuple[int, ...]):
    """Reshape task inputs [N, *input_shape] to what the family expects."""
    if family in ("mlp", "pinn"):
        return lambda x: x.reshape(x.shape[0], -1)
    if family == "cnn" and len(input_shape) == 1:
        return lambda x: x.reshape(x.shape[0], 1, *input_shape)
    return lambda x: x


def build_for_task(config: dict, input_shape: tuple[int, ...], n_classes: int, vocab_size: int | None = None):
    """(builder, input_adapter) for a flat model config on a task with samples of ``input_shape``.

    The builder makes a fresh, randomly initialised model; the adapter reshapes task inputs.
    """
    family = config["arch.family"]
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}")
    config_cls, builder, used = FAMILIES[family]
    # a field absent from the configs of zoos published before it takes its config class's
    # default, which is its neutral value (spec.NEUTRAL)
    kwargs = {**_task_kwargs(family, tuple(input_shape), n_classes, vocab_size),
              **{k: config[f"arch.{k}"] for k in used if f"arch.{k}" in config}}
    init = config.get("arch.init", "default")

    def build() -> nn.Module:
        return apply_init(builder(config_cls(**kwargs)), init)

    return build, input_adapter(family, tuple(input_shape))


def check_fits(config: dict, input_shape: tuple[int, ...], n_out: int, vocab_size: int | None = None) -> None:
    """ValueError (one line) if the model of a flat ``config`` cannot take the task's samples: it is
    built on the meta device (nothing allocated); constructors check what they can (ViT: image size
    by patch size; CNN-s/l: a shape probe) and a CNN's pooling depth shows in a forward pass."""
    family = config["arch.family"]
    used = tuple((k, config[f"arch.{k}"]) for k in FAMILIES[family][2]
                 if f"arch.{k}" in config and k != "dropout")  # dropout never changes a shape
    problem = _fit_problem(family, used, tuple(input_shape), n_out, vocab_size)
    if problem:
        raise ValueError(problem)


@functools.lru_cache(maxsize=1024)
def _fit_problem(family: str, used: tuple, input_shape: tuple, n_out: int, vocab_size: int | None) -> str | None:
    try:
        build, adapt = build_for_task({"arch.family": family, **{f"arch.{k}": v for k, v in used}},
                                      input_shape, n_out, vocab_size)
        with torch.device("meta"):
            model = build()
            if family == "cnn":  # the first meta forward imports torch's meta kernels (~1 s): only here
                model(adapt(torch.zeros(2, *input_shape)))
    except (RuntimeError, ValueError) as e:
        return str(e).strip().splitlines()[0]
    return None


INITS = {
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "uniform": lambda w: nn.init.uniform_(w, -0.1, 0.1),
    "normal": lambda w: nn.init.normal_(w, 0.0, 0.05),
}


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Re-initialise conv/linear weights (biases to zero) unless ``init`` is "default" (PyTorch's).

    Runs inside the model's own random stream (see population.init_models)."""
    if init == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            INITS[init](m.weight.data)
            if m.bias is not None:
                nn.init.zeros_(m.bias.data)
    return model
