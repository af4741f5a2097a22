"""Dropout whose masks are a pure function of (model key, step, element): reproducible per model.

``nn.Dropout`` draws from the global RNG, which vmap refuses (``randomness="error"``) and which
would tie a model's masks to its population mates. ``SeededDropout`` hashes instead: a 32-bit
integer mix (int64 tensor ops, so it runs under vmap and on any device) of the layer's key, its
train-step counter and the element's index, compared with the keep probability. The keys are
drawn from the model's own dropout stream once it is built (population.init_models), so they
leave the weight init untouched; the counter advances once per train-mode forward. A model
therefore sees the same masks trained alone, inside any population, or by the plain per-model
loop.

Key and counter are int64 buffers. ``zoo.functional.layout_of`` keeps only floating-point
state_dict entries (as for BatchNorm's ``num_batches_tracked``), so they stay out of the published
flat vectors, which hold weights only: a float cast could not carry a 32-bit key exactly, and the
state is needed only while training (eval mode is the identity). ``load_flat`` leaves them as built.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

MASK32 = 0xFFFFFFFF


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x <- (x * c) mod 2**32 in place, for 32-bit x and c without overflowing int64: c's top bit
    becomes a shift."""
    top = (x & 1) << 31 if c >> 31 else None
    x.mul_(c & 0x7FFFFFFF)
    if top is not None:
        x.add_(top)
    return x.bitwise_and_(MASK32)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' hash prospector): a bijection of [0, 2**32) with full avalanche."""
    x = x ^ (x >> 16)  # the one copy; the rest runs in place (this is the cost of a dropout layer)
    _mul32_(x, 0x7FEB352D)
    x ^= x >> 15
    _mul32_(x, 0x846CA68B)
    x ^= x >> 16
    return x


@functools.lru_cache(maxsize=32)
def _scrambled_index(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """mix32 of every element's index: the same for all models and steps, so hashed once."""
    return mix32(torch.arange(math.prod(shape), device=device)).view(shape)


def keep_mask(key: torch.Tensor, step: torch.Tensor, shape: tuple[int, ...], p: float,
              device: torch.device) -> torch.Tensor:
    """Bool mask of ``shape``, each element kept with probability 1 - p, from (key, step) only.

    h = mix(mix(i) ^ seed(key, step)). The inner mix scatters the indices over 32 bits, so two
    seeds map an element onto an unrelated one (with ``mix(i ^ seed)`` two seeds whose xor is small
    would give the same mask shifted, a dependence between models or steps).

    ``key`` and ``step`` are scalars (one model, as under vmap) or [M] (a stacked population, mask
    [M, *shape]).
    """
    seed = mix32(key ^ mix32(step & MASK32))
    seed = seed.reshape(*seed.shape, *[1] * len(shape))
    return mix32(_scrambled_index(tuple(shape), torch.device(device)) ^ seed) < round((1 - p) * 2**32)


class SeededDropout(nn.Dropout):
    """Inverted dropout (scale 1 / (1 - p), as torch) with per-model counter-based masks."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.register_buffer("key", torch.zeros((), dtype=torch.int64))  # set by assign_dropout_keys
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_to(x, self.key, self.step, x.shape)

    def apply_to(self, x: torch.Tensor, key: torch.Tensor, step: torch.Tensor,
                 shape: tuple[int, ...]) -> torch.Tensor:
        """Dropout of x with masks of ``shape`` (one model's) from ``key``/``step``, which advances.

        The fast Linear-stack forward calls it with the population's stacked [M] keys and counters.
        """
        if not self.training or self.p == 0:
            return x
        keep = keep_mask(key, step, tuple(shape), self.p, x.device)
        step.add_(1)  # in place: under functional_call it advances the stacked per-model counter
        return x * keep.to(x.dtype).div_(1 - self.p)


def dropout_layers(p: float) -> list[nn.Module]:
    """[SeededDropout(p)], or nothing for p == 0 so dropout-free models keep their exact modules."""
    return [SeededDropout(p)] if p > 0 else []


def sequential(layers: list[nn.Module]) -> nn.Sequential:
    """nn.Sequential whose other layers keep the names they have without dropout ("0", "1", ...),
    each dropout named after the layer it follows ("1_dropout"): one tensor layout across the
    dropout axis, so the published weights of p = 0 and p > 0 models line up name for name."""
    named, last = {}, -1
    for m in layers:
        if isinstance(m, SeededDropout):
            named[f"{last}_dropout"] = m
        else:
            last += 1
            named[str(last)] = m
    return nn.Sequential(OrderedDict(named))


def assign_dropout_keys(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every SeededDropout key of ``model`` from ``generator`` (the model's own dropout stream).

    Keys are drawn after the weights, from a separate stream, so a model with dropout starts from
    exactly the weights of the same seed without it: the dropout axis is a controlled comparison.
    """
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.key.fill_(int(torch.randint(0, 2**32, (), generator=generator)))
    return model


def stack_dropout_state(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Every SeededDropout key and counter of same-architecture models, stacked [M]: the training
    state outside the flat layout, passed with the float buffers so each model draws its own masks."""
    names = [f"{path}.{name}" for path, m in models[0].named_modules() if isinstance(m, SeededDropout)
             for name in ("key", "step")]
    return {n: torch.stack([m.get_buffer(n) for m in models]) for n in names}


@contextmanager
def no_dropout(model: nn.Module):
    """Switch SeededDropout off (p = 0, which survives ``model.train()``) for train-mode passes that
    only want BatchNorm batch statistics (bend training, REPAIR resets): the deterministic net."""
    layers = [m for m in model.modules() if isinstance(m, SeededDropout)]
    saved = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(layers, saved, strict=True):
            m.p = p
