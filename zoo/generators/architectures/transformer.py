"""Small transformers: a ViT for images and a GPT-style decoder (pre-LN, causal attention).

Attention is written with plain matmuls and softmax so it runs under ``vmap`` over a
population; ``width`` is the embedding size (the capacity axis), ``depth`` the number of blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


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
