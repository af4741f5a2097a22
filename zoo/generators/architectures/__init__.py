"""Architecture families: the registry, a dict from family name to its ``Family`` record.

Each family declares its record in its own module (config, builder, spec fields, task arguments,
input adapter, which tasks it accepts, its permutation symmetries, its calibration sample; see
``family.Family``); adding a family is one module plus one line here. Every family is
width-scalable: ``arch.width`` is its capacity axis (hidden units, channels of the first conv,
base width of a ResNet, embedding size of a transformer, channels of a Mixer). Families listing
"dropout" take ``arch.dropout`` (dropout.SeededDropout after each hidden activation).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import cnn, cnn_zoo, mixer, mlp, resnet, transformer
from .family import DeclaredPermutation, Family

FAMILIES: dict[str, Family] = {f.name: f for f in (
    mlp.MLP,
    mlp.PINN,
    cnn.CNN,
    cnn_zoo.CNN_S,
    cnn_zoo.CNN_L,
    resnet.RESNET18,
    resnet.RESNET50,
    transformer.VIT_FAMILY,
    transformer.GPT_FAMILY,
    mixer.MIXER,
)}


def build_model(family: str, **kwargs) -> nn.Module:
    """Build one model of ``family`` from config keyword arguments."""
    return FAMILIES[family].build(**kwargs)


def build_for_task(config: dict, input_shape: tuple[int, ...], n_classes: int, vocab_size: int | None = None):
    """(builder, input_adapter) for a flat model config on a task with samples of ``input_shape``.

    The builder makes a fresh, randomly initialised model; the adapter reshapes task inputs.
    """
    name = config["arch.family"]
    if name not in FAMILIES:
        raise ValueError(f"unknown architecture family {name!r}")
    family = FAMILIES[name]
    try:
        task_kwargs = family.task_kwargs(tuple(input_shape), n_classes, vocab_size)
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None
    # a field absent from the configs of zoos published before it takes its config class's
    # default, which is its neutral value (spec.NEUTRAL)
    kwargs = {**task_kwargs, **{k: config[f"arch.{k}"] for k in family.fields if f"arch.{k}" in config}}
    init = config.get("arch.init", "default")

    def build() -> nn.Module:
        return apply_init(family.build(**kwargs), init)

    return build, family.input_adapter(tuple(input_shape))


def check_fits(config: dict, input_shape: tuple[int, ...], n_out: int, vocab_size: int | None = None) -> None:
    """ValueError (one line) if the model of a flat ``config`` cannot take the task's samples: it is
    built on the meta device (nothing allocated); constructors check what they can (ViT: image size
    by patch size; CNN-s/l: a shape probe) and a family with ``shape_probe`` (a CNN's pooling
    depth) shows the rest in a forward pass."""
    family = config["arch.family"]
    used = tuple((k, config[f"arch.{k}"]) for k in FAMILIES[family].fields
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
            if FAMILIES[family].shape_probe:  # the first meta forward imports torch's meta kernels (~1 s)
                model(adapt(torch.zeros(2, *input_shape)))
    except (RuntimeError, ValueError) as e:
        return str(e).strip().splitlines()[0]
    return None


def declared_permutation(model: nn.Module) -> DeclaredPermutation | None:
    """The permutation symmetries a family declares for ``model`` (ViT, GPT, Mixer), or None: the
    model is then traced by ``torch.fx`` (``metrics.matching.permutation_spec``)."""
    for hook in dict.fromkeys(f.permutation for f in FAMILIES.values() if f.permutation is not None):
        declared = hook(model)
        if declared is not None:
            return declared
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
