"""Small transformers: a ViT for images and a GPT-style decoder (pre-LN, causal attention).

Attention is written with plain matmuls and softmax so it runs under ``vmap`` over a
population; ``width`` is the embedding size (the capacity axis), ``depth`` the number of blocks.
Their permutation symmetries are declared (``declared_permutation``): attention reshapes features
into heads, which the ``torch.fx`` tracer of ``metrics.matching`` does not follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .family import (
    Calibration,
    DeclaredPermutation,
    Family,
    PermutedAxis,
    heads_divide_width,
    image_kwargs,
    needs_image,
)
from .mlp import ACTIVATIONS


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(mask, float("-inf"))
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, causal: bool, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@dataclass
class ViTConfig:
    in_channels: int
    image_size: int
    out_dim: int
    width: int = 32
    depth: int = 2
    heads: int = 4
    patch_size: int = 4


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}")
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, cfg.width) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg.width, cfg.heads, causal=False) for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.ln(self.blocks(tokens))[:, 0])


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    out_dim: int
    width: int = 64
    depth: int = 2
    heads: int = 4


class GPT(nn.Module):
    """Decoder-only transformer; returns the logits of the last position (next-token head)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(1, cfg.block_size, cfg.width) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg.width, cfg.heads, causal=True) for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        return self.head(self.ln(self.blocks(x))[:, -1])


def build_vit(cfg: ViTConfig) -> ViT:
    return ViT(cfg)


def build_gpt(cfg: GPTConfig) -> GPT:
    return GPT(cfg)


def declared_permutation(model: nn.Module) -> DeclaredPermutation | None:
    """The symmetries of exactly the zoo's ViT/GPT (None for any other model, a subclass included:
    it may change forward): one permutation of the residual stream (LayerNorm is equivariant to it,
    its affine parameters follow it), and per block one of the MLP hidden units and one of the
    attention heads, which moves whole heads (d_head entries) in each of the q, k, v segments of
    qkv's output and in proj's input. All three leave the function unchanged. Probes: the block
    outputs (stream), the MLP activations and the attention output entering proj (heads), each
    token a sample. Raises if a block is not the declared one."""
    if type(model) not in (ViT, GPT):
        return None
    for blk in model.blocks:
        mlp = getattr(blk, "mlp", None)
        if (type(blk) is not Block or type(blk.attn) is not Attention or not isinstance(mlp, nn.Sequential)
                or len(mlp) != 3 or type(mlp[1]) not in ACTIVATIONS.values()):
            raise ValueError(f"permutation_spec: {type(model).__name__} block {type(blk).__name__} is not the "
                             "declared pre-LN Block(Attention, Linear-activation-Linear MLP)")
    width = model.ln.normalized_shape[0]
    stream = "P_patch" if isinstance(model, ViT) else "P_tok"
    axes: list[PermutedAxis] = []

    def add(p: str, n: int, block: tuple[int, int], *names_axes: tuple[str, int]):
        axes.extend(PermutedAxis(p, n, name, axis, block) for name, axis in names_axes)

    if stream == "P_patch":
        add(stream, width, (1, 1), ("patch.weight", 0), ("patch.bias", 0), ("cls", 2))
    else:
        add(stream, width, (1, 1), ("tok.weight", 1))
    add(stream, width, (1, 1), ("pos", 2), ("ln.weight", 0), ("ln.bias", 0), ("head.weight", 1))
    probes: dict[str, list[tuple[str, bool]]] = {stream: []}
    for i, blk in enumerate(model.blocks):
        b, heads, hidden = f"blocks.{i}", blk.attn.heads, blk.mlp[0].out_features
        add(stream, width, (1, 1), *[(f"{b}.{ln}.{role}", 0) for ln in ("ln1", "ln2") for role in ("weight", "bias")],
            (f"{b}.attn.qkv.weight", 1), (f"{b}.attn.proj.weight", 0), (f"{b}.attn.proj.bias", 0),
            (f"{b}.mlp.0.weight", 1), (f"{b}.mlp.2.weight", 0), (f"{b}.mlp.2.bias", 0))
        add(f"P_{b}.attn.qkv", heads, (3, width // heads), (f"{b}.attn.qkv.weight", 0), (f"{b}.attn.qkv.bias", 0))
        add(f"P_{b}.attn.qkv", heads, (1, width // heads), (f"{b}.attn.proj.weight", 1))
        add(f"P_{b}.mlp.0", hidden, (1, 1), (f"{b}.mlp.0.weight", 0), (f"{b}.mlp.0.bias", 0), (f"{b}.mlp.2.weight", 1))
        probes[stream].append((b, False))
        probes[f"P_{b}.attn.qkv"] = [(f"{b}.attn.proj", True)]
        probes[f"P_{b}.mlp.0"] = [(f"{b}.mlp.1", False)]
    return DeclaredPermutation(axes, probes)


def _gpt_kwargs(input_shape: tuple[int, ...], n_out: int, vocab_size: int | None) -> dict:
    if vocab_size is None:
        raise ValueError("needs a token task (e.g. modular arithmetic)")
    return {"vocab_size": vocab_size, "block_size": input_shape[0], "out_dim": n_out}


def _needs_tokens(task: str, input_shape: tuple[int, ...], kind: str, vocab_size: int | None) -> str | None:
    if vocab_size is None:
        return f"needs a token task (task.name=modular), not {task}"
    return None


VIT_FAMILY = Family("vit", ViTConfig, build_vit, ("width", "depth", "heads", "patch_size"), image_kwargs, needs_image,
                    calibration=Calibration("digits", {"width": 32, "depth": 2, "heads": 2, "patch_size": 4}),
                    check=heads_divide_width, permutation=declared_permutation)
GPT_FAMILY = Family("gpt", GPTConfig, build_gpt, ("width", "depth", "heads"), _gpt_kwargs, _needs_tokens,
                    calibration=Calibration("modular", {"width": 64, "depth": 1, "heads": 4}),
                    check=heads_divide_width, permutation=declared_permutation)
