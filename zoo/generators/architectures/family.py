"""The ``Family`` record: everything the package knows about one architecture family, in one place.

Each family's module (mlp.py, cnn.py, ...) declares its records beside its config and builder; the
registry (``architectures.FAMILIES``) is a dict from name to record. Whatever differs between
families (which tasks it takes, the arguments a task gives its constructor, how task inputs are
reshaped, its permutation symmetries, its cost-calibration sample) is a field of the record, so
nothing outside the family's module branches on its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

Shape = tuple[int, ...]
Adapter = Callable[[torch.Tensor], torch.Tensor]


class PermutedAxis(NamedTuple):
    """One tensor axis a declared permutation acts on: ``perm`` permutes ``size`` units of axis
    ``axis`` of the state_dict tensor ``tensor``, the axis viewed as [R, size, S] with
    ``block`` = (R, S) (attention heads: (3, d_head) on qkv outputs)."""

    perm: str
    size: int
    tensor: str
    axis: int
    block: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class DeclaredPermutation:
    """A family's hidden-unit symmetries written out, for models ``torch.fx`` cannot trace (heads
    reshaped out of features, tokens transposed): ``axes`` every permuted axis; ``probes`` per
    permutation the (module name, record its input rather than output) whose features it permutes
    (activation matching); ``fixed`` the floating-point tensors no permutation touches (an output
    bias, a bias on the token axis). ``matching`` checks the declaration against the model: a
    tensor in neither ``axes`` nor ``fixed`` is an error, never silently left alone."""

    axes: list[PermutedAxis]
    probes: dict[str, list[tuple[str, bool]]]
    fixed: tuple[str, ...] = ("head.bias",)


class Calibration(NamedTuple):
    """A representative small model of the family for ``zoo presets --calibrate``: the task whose
    sample shape it is measured on and the arch fields it is built with."""

    task: str
    arch: dict[str, Any]


def unchanged(input_shape: Shape) -> Adapter:
    """The input adapter of families that take task samples as they are."""
    return lambda x: x


def flattened(input_shape: Shape) -> Adapter:
    """The input adapter of families that take flat feature vectors."""
    return lambda x: x.reshape(x.shape[0], -1)


def vector_kwargs(input_shape: Shape, n_out: int, vocab_size: int | None) -> dict:
    """Constructor arguments of a family on flat feature vectors."""
    return {"in_dim": math.prod(input_shape), "out_dim": n_out}


def image_kwargs(input_shape: Shape, n_out: int, vocab_size: int | None) -> dict:
    """Constructor arguments of an image family (square C x H x W samples)."""
    if len(input_shape) != 3:
        raise ValueError(f"needs image inputs (C, H, W), got samples of shape {input_shape}")
    return {"in_channels": input_shape[0], "image_size": input_shape[1], "out_dim": n_out}


def takes_anything(task: str, input_shape: Shape, kind: str, vocab_size: int | None) -> str | None:
    return None


def needs_image(task: str, input_shape: Shape, kind: str, vocab_size: int | None) -> str | None:
    if len(input_shape) != 3 or vocab_size is not None:
        return (f"needs an image task (samples C x H x W: digits, mnist, cifar10, ...), not {task} "
                f"(samples {'x'.join(map(str, input_shape))})")
    return None


def heads_divide_width(arch: dict[str, Any]) -> str | None:
    if arch["width"] % arch["heads"]:
        return f"arch.width ({arch['width']}) must be divisible by arch.heads ({arch['heads']})"
    return None


@dataclass(frozen=True, eq=False)
class Family:
    """One architecture family (``width`` is always its capacity axis).

    - ``config``, ``builder``: the config dataclass and ``builder(config) -> nn.Module``.
    - ``fields``: the ``arch.*`` spec fields its config takes (the others leave its models alone).
    - ``task_kwargs(input_shape, n_out, vocab_size)``: the config arguments a task fixes; raises
      ValueError (one line) for samples it cannot take.
    - ``accepts(task, input_shape, kind, vocab_size)``: None, or a one-line reason why the family
      cannot train on the task (``kind``: classification | regression | pinn; ``vocab_size`` of a
      token task, else None). The spec says it before anything is built.
    - ``input_adapter(input_shape)``: reshapes task inputs [N, *input_shape] to what it takes.
    - ``check(arch)``: None or a one-line reason, for constraints between its own fields.
    - ``permutation(model)``: its declared permutation symmetries, or None for a model it did not
      build; a family without one (None) is traced by ``torch.fx`` (``metrics.matching``).
    - ``shape_probe``: the constructor cannot see every shape problem, so the spec check runs a
      forward pass on the meta device (a CNN's pooling depth).
    - ``calibration``: the model ``zoo presets --calibrate`` measures the family's throughput on.
    """

    name: str
    config: type
    builder: Callable[[Any], nn.Module]
    fields: tuple[str, ...]
    task_kwargs: Callable[[Shape, int, int | None], dict]
    accepts: Callable[[str, Shape, str, int | None], str | None]
    calibration: Calibration
    input_adapter: Callable[[Shape], Adapter] = unchanged
    check: Callable[[dict[str, Any]], str | None] | None = None
    permutation: Callable[[nn.Module], DeclaredPermutation | None] | None = None
    shape_probe: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # fixed config arguments (e.g. ResNet depth)

    @property
    def takes_dropout(self) -> bool:
        """Whether ``arch.dropout`` applies (SeededDropout after each hidden activation)."""
        return "dropout" in self.fields

    def build(self, **kwargs) -> nn.Module:
        """A fresh model from config keyword arguments."""
        return self.builder(self.config(**{**self.extra, **kwargs}))
