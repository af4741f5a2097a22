"""MLP-Mixer (Tolstikhin et al. 2021): image patches mixed by MLPs only, no attention, no convolution
beyond the patch embedding.

Each of ``depth`` blocks is pre-LN and residual: a token-mixing MLP applied per channel across
the patches (tokens), then a channel-mixing MLP applied per patch across the channels:

    x = x + W2 gelu(W1 ln1(x)^T)^T      token mixing,   W1: [D_S, tokens], x: [tokens, C]
    x = x + V2 gelu(V1 ln2(x))          channel mixing, V1: [D_C, width]

then LayerNorm, mean over patches, and a linear head. ``width`` (channels C) is the capacity
axis; the hidden sizes scale with it as in the paper's models (D_S = C / 2, D_C = 4 C).

Its permutation symmetries are declared (``declared_permutation``): the transposes around token
mixing take features onto another axis, which the ``torch.fx`` tracer of ``metrics.matching`` does
not follow. The channels (one residual stream), each block's token-mixing hidden units and each
block's channel-mixing hidden units may be permuted; the patches may not (they are tied to
positions in the image), so the token axis of W1 and W2 and W2's bias stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .family import Calibration, DeclaredPermutation, Family, PermutedAxis, image_kwargs, needs_image


@dataclass
class MixerConfig:
    in_channels: int
    image_size: int
    out_dim: int
    width: int = 32  # channels C of every patch
    depth: int = 2  # mixer blocks
    patch_size: int = 4
    token_ratio: float = 0.5  # token-mixing hidden units D_S = token_ratio * width
    channel_ratio: int = 4  # channel-mixing hidden units D_C = channel_ratio * width


class MixerBlock(nn.Module):
    def __init__(self, width: int, tokens: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.ln2 = nn.LayerNorm(width)
        self.channel_mlp = nn.Sequential(nn.Linear(width, channel_hidden), nn.GELU(),
                                         nn.Linear(channel_hidden, width))

    def forward(self, x):  # [B, tokens, width]
        x = x + self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.ln2(x))


class Mixer(nn.Module):
    def __init__(self, cfg: MixerConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}")
        tokens = (cfg.image_size // cfg.patch_size) ** 2
        token_hidden = max(1, round(cfg.token_ratio * cfg.width))
        self.patch = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, cfg.patch_size)
        self.blocks = nn.Sequential(*[MixerBlock(cfg.width, tokens, token_hidden, cfg.channel_ratio * cfg.width)
                                      for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.ln(self.blocks(tokens)).mean(1))


def build(cfg: MixerConfig) -> Mixer:
    return Mixer(cfg)


def declared_permutation(model: nn.Module) -> DeclaredPermutation | None:
    """The symmetries of exactly the zoo's Mixer (None for any other model, a subclass included):
    the channel stream (patch embedding outputs, every LayerNorm, the channel-mixing input and
    output, the head's input), per block the token-mixing hidden units (their W1 rows and bias, W2
    columns) and the channel-mixing hidden units. Probes: block outputs (stream, each patch a
    sample), the GELU outputs of token mixing (each channel a sample) and of channel mixing."""
    if type(model) is not Mixer:
        return None
    for blk in model.blocks:
        if type(blk) is not MixerBlock:
            raise ValueError(f"permutation_spec: Mixer block {type(blk).__name__} is not the declared MixerBlock")
    width = model.ln.normalized_shape[0]
    axes = [PermutedAxis("P_stream", width, name, axis) for name, axis in (
        ("patch.weight", 0), ("patch.bias", 0), ("ln.weight", 0), ("ln.bias", 0), ("head.weight", 1))]
    probes: dict[str, list[tuple[str, bool]]] = {"P_stream": []}
    fixed = ["head.bias"]
    for i, blk in enumerate(model.blocks):
        b = f"blocks.{i}"
        axes += [PermutedAxis("P_stream", width, f"{b}.{name}", axis) for name, axis in (
            ("ln1.weight", 0), ("ln1.bias", 0), ("ln2.weight", 0), ("ln2.bias", 0),
            ("channel_mlp.0.weight", 1), ("channel_mlp.2.weight", 0), ("channel_mlp.2.bias", 0))]
        for mlp in ("token_mlp", "channel_mlp"):
            p, n = f"P_{b}.{mlp}", getattr(blk, mlp)[0].out_features
            axes += [PermutedAxis(p, n, f"{b}.{mlp}.{name}", axis) for name, axis in (
                ("0.weight", 0), ("0.bias", 0), ("2.weight", 1))]
            probes[p] = [(f"{b}.{mlp}.1", False)]
        probes["P_stream"].append((b, False))
        fixed.append(f"{b}.token_mlp.2.bias")  # on the token axis
    return DeclaredPermutation(axes, probes, tuple(fixed))


MIXER = Family("mixer", MixerConfig, build, ("width", "depth", "patch_size"), image_kwargs, needs_image,
               calibration=Calibration("digits", {"width": 32, "depth": 2, "patch_size": 2}),
               permutation=declared_permutation)
