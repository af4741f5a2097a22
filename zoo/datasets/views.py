"""torch Dataset views of a zoo in the weight-space-learning conventions.

Every view maps one model's flat vector (state_dict order) to a dict of tensors plus
``"model_id"`` and ``"target"`` (the models.parquet column(s) named by ``target``), and has an
inverse ``decode(item) -> flat [P]``, so a view rebuilt into a model is the model it came from.

Structured views (NFN, DWS, tokens, graph) see a network as a chain of *affine layers*
(Linear / ConvNd). A BatchNorm right after a weight layer is folded into it in eval mode,
``s = γ / √(var + ε)``, ``W' = s·W``, ``b' = s·(b − μ) + β`` (ε = 1e-5, PyTorch's default), which
computes the same function; ``decode`` writes ``W', b'`` back with the BatchNorm set to the
identity (γ = 1, β = 0 or b', μ = 0, var = 1 − ε). Conventions (REFERENCES.md):

- :class:`FlatView`: ``"weights"`` [P] (the Model Zoos / Small CNN Zoo flat vector).
- :class:`NFNView` (Zhou et al.): ``"weights"`` list of (C=1, n_out, n_in[, k...]),
  ``"biases"`` list of (C=1, n_out); after default collate, NFN's WeightSpaceFeatures layout.
- :class:`DWSView` (Navon et al.): ``"weights"`` list of (n_in, n_out, d) with d = kernel size
  (1 for Linear), ``"biases"`` list of (n_out, 1).
- :class:`TokenView` (SANE, Schürholt et al. 2024): one token per output neuron, its incoming
  weights then its bias, zero-padded to ``token_size`` (a longer neuron spans several tokens);
  ``"tokens"`` [T, token_size], ``"mask"`` [T, token_size], ``"positions"`` [T, 3] =
  (layer, neuron, chunk). Use :func:`pad_tokens` to batch models with different T.
- :class:`GraphView` (Kofinas et al. 2024): nodes = neurons, inputs included; ``"x"`` [N, 1]
  biases (0 for inputs), ``"node_layer"`` [N], ``"edge_index"`` [2, E] (source = input neuron),
  ``"edge_attr"`` [E, D] (a conv kernel is an edge feature vector, zero-padded to D = largest
  kernel). :func:`to_pyg` turns an item into a ``torch_geometric.data.Data``.

Normalization (``normalize=NormStats``): per-tensor mean/std from the train split only
(:func:`compute_norm_stats`), kept in memory with :meth:`NormStats.save` / :func:`load_norm_stats`
(JSON, written atomically; nothing is written into the zoo folder, whose files zoo.json hashes).
Augmentation (``augment=True``): a random permutation of every hidden layer's units on each
``__getitem__``, applied to the flat vector; it preserves the network function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..functional import Layout, TensorSpec
from ..io import atomic_write_bytes
from .reader import DatasetError, Zoo

BN_EPS = 1e-5
WEIGHT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


# ---------------------------------------------------------------- affine layers

@dataclass(frozen=True)
class AffineLayer:
    """One weight layer of the chain, with its bias and a following BatchNorm, if any."""

    weight: TensorSpec
    bias: TensorSpec | None
    bn: dict[str, TensorSpec] | None  # role -> spec: weight, bias, running_mean, running_var

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])


def affine_plan(layout: Layout) -> list[AffineLayer]:
    """The layout as a chain of affine layers; raises for tensors outside that form."""
    groups: dict[str, dict[str, TensorSpec]] = {}
    for t in layout.tensors:
        groups.setdefault(t.layer, {})[t.role] = t
    plan: list[AffineLayer] = []
    for layer, roles in groups.items():
        kind = next(iter(roles.values())).layer_type
        if kind in WEIGHT_TYPES:
            plan.append(AffineLayer(roles["weight"], roles.get("bias"), None))
        elif kind.startswith("BatchNorm") and plan and plan[-1].bn is None:
            plan[-1] = AffineLayer(plan[-1].weight, plan[-1].bias, roles)
        else:
            raise DatasetError(f"layer {layer!r} ({kind}) is not a Linear/Conv weight layer or a "
                               "BatchNorm after one; structured views do not support it")
    return plan


def _bn_scale(flat: torch.Tensor, bn: dict[str, TensorSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    def get(role: str, default: float) -> torch.Tensor:
        t = bn.get(role)
        if t is None:
            return torch.full((flat.shape[0], 1), default, dtype=flat.dtype)
        return flat[:, t.start:t.end]

    scale = get("weight", 1.0) / torch.sqrt(get("running_var", 1.0) + BN_EPS)
    return scale, get("bias", 0.0) - get("running_mean", 0.0) * scale


def affine_layers(flat: torch.Tensor, layout: Layout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(W [M, n_out, n_in, *k], b [M, n_out])] per affine layer from flat vectors [M, P].

    A BatchNorm is folded: W' = s W, b' = s b + (β − μ s) with s = γ / √(var + ε).
    """
    m = flat.shape[0]
    out = []
    for a in affine_plan(layout):
        w = flat[:, a.weight.start:a.weight.end].reshape(m, *a.weight.shape)
        b = (flat[:, a.bias.start:a.bias.end] if a.bias is not None
             else torch.zeros(m, a.n_out, dtype=flat.dtype))
        if a.bn is not None:
            scale, shift = _bn_scale(flat, a.bn)
            w = w * scale.reshape(m, -1, *([1] * (w.dim() - 2)))
            b = b * scale + shift
        out.append((w, b))
    return out


def layers_to_flat(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], layout: Layout) -> torch.Tensor:
    """Inverse of :func:`affine_layers`: flat vectors [M, P] computing the same function.

    Exact for nets without BatchNorm; a BatchNorm becomes the identity in eval mode
    (γ = 1, μ = 0, var = 1 − ε) with the folded bias in β when the weight layer has none.
    """
    plan = affine_plan(layout)
    m = layers[0][0].shape[0]
    flat = torch.zeros(m, layout.size, dtype=layers[0][0].dtype)
    for a, (w, b) in zip(plan, layers, strict=True):
        flat[:, a.weight.start:a.weight.end] = w.reshape(m, -1)
        if a.bias is not None:
            flat[:, a.bias.start:a.bias.end] = b
        if a.bn is not None:
            values = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0 - BN_EPS}
            for role, t in a.bn.items():
                flat[:, t.start:t.end] = values.get(role, 0.0)
            if a.bias is None and "bias" in a.bn:
                t = a.bn["bias"]
                flat[:, t.start:t.end] = b
    return flat


# ---------------------------------------------------------------- permutations

def hidden_sizes(layout: Layout, plan: list[AffineLayer] | None = None) -> list[int]:
    """Units of each hidden affine layer (all but the output layer): the permutable axes."""
    plan = plan or affine_plan(layout)
    for a, nxt in zip(plan, plan[1:]):
        if nxt.n_in != a.n_out:
            raise DatasetError(f"{nxt.weight.name} takes {nxt.n_in} inputs but {a.weight.name} has "
                               f"{a.n_out} outputs (a flatten over space?): cannot permute units")
    return [a.n_out for a in plan[:-1]]


def chain_permutation_spec(layout: Layout):
    """The :class:`~zoo.metrics.matching.PermutationSpec` of a plain layer chain, read from the layout
    alone (no model to trace): permutation ``P_l`` reorders hidden layer l's weight rows, bias and
    BatchNorm entries and layer l+1's weight columns."""
    from ..metrics.matching import PermutationSpec

    plan = affine_plan(layout)
    sizes = hidden_sizes(layout, plan)
    perm_to_axes: dict[str, list[tuple[str, int]]] = {}
    axes = {t.name: [None] * len(t.shape) for t in layout.tensors}
    for i, (a, nxt) in enumerate(zip(plan, plan[1:])):
        moved = [(t.name, 0) for t in (a.weight, a.bias, *(a.bn or {}).values()) if t is not None]
        perm_to_axes[f"P_{i}"] = [*moved, (nxt.weight.name, 1)]
        for name, axis in perm_to_axes[f"P_{i}"]:
            axes[name][axis] = f"P_{i}"
    return PermutationSpec(perm_to_axes, {k: tuple(v) for k, v in axes.items()},
                           {f"P_{i}": n for i, n in enumerate(sizes)})


def spec_index(layout: Layout, spec, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gather index [P] with ``flat[..., index]`` = the net permuted by ``perms`` under ``spec``: the
    spec's permutation applied to each entry's position instead of its value."""
    from ..metrics.matching import apply_permutation

    positions = {t.name: torch.arange(t.start, t.end, dtype=torch.float64).view(t.shape) for t in layout.tensors}
    moved = apply_permutation(spec, perms, positions)
    return torch.cat([moved[t.name].reshape(-1) for t in layout.tensors]).long()


def permutation_index(layout: Layout, perms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gather index [P] with ``flat[..., index]`` = the net with hidden layer l's units permuted by perms[l].

    Layer l's weight rows, bias and BatchNorm entries take order perms[l]; layer l+1's weight
    columns (dim 1) follow it, so (for elementwise activations, channelwise BN and pooling) the
    permuted net computes the same function: W'_l = P_l W_l, b'_l = P_l b_l, W'_{l+1} = W_{l+1} P_lᵀ.
    """
    spec = chain_permutation_spec(layout)
    if len(perms) != len(spec.sizes):
        raise ValueError(f"need {len(spec.sizes)} permutations, got {len(perms)}")
    return spec_index(layout, spec, {f"P_{i}": p for i, p in enumerate(perms)})


def random_spec_index(layout: Layout, spec, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`spec_index` for uniformly random draws of every permutation of ``spec``, in its order."""
    return spec_index(layout, spec, {p: torch.randperm(n, generator=generator) for p, n in spec.sizes.items()})


def random_permutation_index(layout: Layout, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`permutation_index` for uniformly random permutations of every hidden layer."""
    return random_spec_index(layout, chain_permutation_spec(layout), generator)


def spec_permutation_index(model: torch.nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gather index [P] permuting every hidden permutation of ``model``'s fx-derived permutation spec
    (``zoo.metrics.matching``): conv channels feeding a flatten over space, residual streams, BatchNorm
    and attention blocks included, where the layer-chain rule of :func:`permutation_index` does not apply."""
    from ..functional import layout_of
    from ..metrics.matching import permutation_spec

    return random_spec_index(layout_of(model), permutation_spec(model), generator)


# ---------------------------------------------------------------- normalization

@dataclass
class NormStats:
    """Per-tensor mean/std per arch: ``tensors[arch][name]`` (flat view, state_dict names) and
    ``layers[arch][i]["weight"|"bias"]`` (structured views, after BatchNorm folding)."""

    tensors: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    layers: dict[str, list[dict[str, tuple[float, float]]]] = field(default_factory=dict)
    split: str = "train"

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, json.dumps({"split": self.split, "tensors": self.tensors,
                                             "layers": self.layers}, indent=1).encode())

    def flat_vectors(self, arch_id: str, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """mean [P], std [P] spread over each tensor's entries."""
        stats = self.tensors[arch_id]
        mean = torch.cat([torch.full((t.end - t.start,), stats[t.name][0]) for t in layout.tensors])
        std = torch.cat([torch.full((t.end - t.start,), stats[t.name][1]) for t in layout.tensors])
        return mean, std


def load_norm_stats(path: str | Path) -> NormStats:
    d = json.loads(Path(path).read_text())
    to_t = lambda v: (float(v[0]), float(v[1]))  # noqa: E731
    return NormStats({a: {k: to_t(v) for k, v in t.items()} for a, t in d["tensors"].items()},
                     {a: [{k: to_t(v) for k, v in lay.items()} for lay in ls]
                      for a, ls in d["layers"].items()},
                     d.get("split", "train"))


class _Moments:
    def __init__(self):
        self.n, self.s, self.s2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += x.numel()
        self.s += float(x.sum())
        self.s2 += float((x * x).sum())

    def result(self) -> tuple[float, float]:
        mean = self.s / max(self.n, 1)
        std = math.sqrt(max(self.s2 / max(self.n, 1) - mean * mean, 0.0))
        return mean, (std if std > 1e-8 else 1.0)  # constant tensors (identity BN) stay as they are


def compute_norm_stats(zoo: Zoo, split: str = "train", step: int | None = None,
                       memory_budget: int = 64 << 20) -> NormStats:
    """Mean and std of every tensor over the models of ``split`` only (streamed).

    mean = Σx / n, std = √(Σx² / n − mean²) over all entries of the tensor across those models
    (float64 sums); a constant tensor gets std 1.
    """
    view = zoo.split(split) if split else zoo
    if len(view) == 0:
        raise DatasetError(f"no models in split {split!r} to compute normalization statistics on")
    tensors: dict[str, dict[str, _Moments]] = {}
    layers: dict[str, list[dict[str, _Moments]]] = {}
    for batch in view.iter_weights(step=step, memory_budget=memory_budget):
        layout = zoo.layout_of(batch.arch_id)
        w = torch.from_numpy(batch.weights)
        tm = tensors.setdefault(batch.arch_id, {t.name: _Moments() for t in layout.tensors})
        for t in layout.tensors:
            tm[t.name].add(w[:, t.start:t.end])
        try:
            aff = affine_layers(w, layout)
        except DatasetError:
            continue  # an arch the structured views cannot read: flat stats only
        lm = layers.setdefault(batch.arch_id, [{"weight": _Moments(), "bias": _Moments()} for _ in aff])
        for moments, (lw, lb) in zip(lm, aff):
            moments["weight"].add(lw)
            moments["bias"].add(lb)
    return NormStats({a: {k: m.result() for k, m in d.items()} for a, d in tensors.items()},
                     {a: [{k: m.result() for k, m in d.items()} for d in ls] for a, ls in layers.items()},
                     split)


# ---------------------------------------------------------------- views

class WeightView(Dataset):
    """Base of all views: one item per model of ``zoo`` (a Zoo or a view of one).

    Args: ``step`` checkpoint (None: final); ``target`` models.parquet column(s) returned as
    ``"target"`` (None: none); ``normalize`` NormStats; ``augment`` random hidden-unit
    permutations per item (function preserving); ``seed`` of the augmentation generator;
    ``cache`` reads all weights at construction (else one HDF5 row read per item).
    """

    def __init__(self, zoo: Zoo, step: int | None = None, target: str | Sequence[str] | None = "test_acc",
                 normalize: NormStats | None = None, augment: bool = False, seed: int = 0,
                 cache: bool = True):
        if len(zoo) == 0:
            raise DatasetError("the zoo view holds no models")
        self.zoo, self.step, self.normalize, self.augment = zoo, step, normalize, augment
        self.ids = zoo.model_ids
        self.arch = zoo.models["arch_id"].tolist()
        self.layouts = {a: zoo.layout_of(a) for a in zoo.arch_ids}
        self.target = target
        if target is not None:
            cols = [target] if isinstance(target, str) else list(target)
            missing = [c for c in cols if c not in zoo.models.columns]
            if missing:
                raise DatasetError(f"target column(s) {missing} not in models.parquet")
            values = torch.tensor(zoo.models[cols].to_numpy(dtype=np.float32))
            self.targets = values[:, 0] if isinstance(target, str) else values
        self.generator = torch.Generator().manual_seed(seed)
        self._cache: dict[str, torch.Tensor] = {}
        self._specs: dict = {}  # arch -> PermutationSpec, derived on first augmentation
        self._row: list[int] = []
        if cache:
            rows = {}
            for a in zoo.arch_ids:
                ids = [m for m, b in zip(self.ids, self.arch) if b == a]
                self._cache[a] = zoo.weights(ids, step, as_torch=True)
                rows.update({m: i for i, m in enumerate(ids)})
            self._row = [rows[m] for m in self.ids]
        self._flat_norm = {}
        if normalize is not None:
            for a, lay in self.layouts.items():
                if a not in normalize.tensors:
                    raise DatasetError(f"normalization statistics have no arch {a!r}")
                self._flat_norm[a] = normalize.flat_vectors(a, lay)

    def __len__(self) -> int:
        return len(self.ids)

    def flat(self, i: int) -> torch.Tensor:
        """Model i's raw flat vector [P] (augmented when ``augment``), before normalization."""
        a = self.arch[i]
        w = self._cache[a][self._row[i]] if self._cache else self.zoo.weights([self.ids[i]], self.step,
                                                                             as_torch=True)[0]
        if self.augment:
            w = w[self._permutation(a)]
        return w

    def _permutation(self, arch: str) -> torch.Tensor:
        """A random function-preserving permutation: the layer-chain rule for MLP-like layouts, the
        model's traced permutation spec for everything else (conv nets, residual networks)."""
        if arch not in self._specs:
            try:
                self._specs[arch] = chain_permutation_spec(self.layouts[arch])
            except DatasetError:
                from ..metrics.matching import permutation_spec

                mid = next(m for m, b in zip(self.ids, self.arch) if b == arch)
                self._specs[arch] = permutation_spec(self.zoo.model(mid))
        return random_spec_index(self.layouts[arch], self._specs[arch], self.generator)

    def __getitem__(self, i: int) -> dict:
        item = self.encode(self.flat(i), self.arch[i])
        item["model_id"] = self.ids[i]
        if self.target is not None:
            item["target"] = self.targets[i]
        return item

    def encode(self, flat: torch.Tensor, arch_id: str) -> dict:
        raise NotImplementedError

    def decode(self, item: dict, arch_id: str | None = None) -> torch.Tensor:
        """The flat vector [P] (unnormalized) the item encodes; for BatchNorm nets an equivalent one."""
        raise NotImplementedError

    def _arch_of(self, item: dict, arch_id: str | None) -> str:
        if arch_id is not None:
            return arch_id
        return self.arch[self.ids.index(item["model_id"])] if "model_id" in item else self.arch[0]

    # layer-level normalization shared by the structured views
    def _layers(self, flat: torch.Tensor, arch_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = [(w[0], b[0]) for w, b in affine_layers(flat[None], self.layouts[arch_id])]
        if self.normalize is not None:
            stats = self.normalize.layers[arch_id]
            layers = [((w - s["weight"][0]) / s["weight"][1], (b - s["bias"][0]) / s["bias"][1])
                      for (w, b), s in zip(layers, stats)]
        return layers

    def _unlayers(self, layers: list[tuple[torch.Tensor, torch.Tensor]], arch_id: str) -> torch.Tensor:
        if self.normalize is not None:
            stats = self.normalize.layers[arch_id]
            layers = [(w * s["weight"][1] + s["weight"][0], b * s["bias"][1] + s["bias"][0])
                      for (w, b), s in zip(layers, stats)]
        return layers_to_flat([(w[None], b[None]) for w, b in layers], self.layouts[arch_id])[0]


class FlatView(WeightView):
    """``"weights"`` [P]: the flat state_dict-order vector (normalized per tensor if asked)."""

    def encode(self, flat, arch_id):
        if self.normalize is not None:
            mean, std = self._flat_norm[arch_id]
            flat = (flat - mean) / std
        return {"weights": flat}

    def decode(self, item, arch_id=None):
        w = item["weights"]
        if self.normalize is not None:
            mean, std = self._flat_norm[self._arch_of(item, arch_id)]
            w = w * std + mean
        return w


class NFNView(WeightView):
    """NFN convention: ``"weights"`` [(1, n_out, n_in, *k)], ``"biases"`` [(1, n_out)] per layer."""

    def encode(self, flat, arch_id):
        layers = self._layers(flat, arch_id)
        return {"weights": [w.unsqueeze(0) for w, _ in layers], "biases": [b.unsqueeze(0) for _, b in layers]}

    def decode(self, item, arch_id=None):
        layers = [(w[0], b[0]) for w, b in zip(item["weights"], item["biases"])]
        return self._unlayers(layers, self._arch_of(item, arch_id))


class DWSView(WeightView):
    """DWSNets convention: ``"weights"`` [(n_in, n_out, d)], ``"biases"`` [(n_out, 1)] per layer."""

    def encode(self, flat, arch_id):
        layers = self._layers(flat, arch_id)
        return {"weights": [w.reshape(w.shape[0], w.shape[1], -1).transpose(0, 1) for w, _ in layers],
                "biases": [b.unsqueeze(-1) for _, b in layers]}

    def decode(self, item, arch_id=None):
        arch_id = self._arch_of(item, arch_id)
        plan = affine_plan(self.layouts[arch_id])
        layers = [(w.transpose(0, 1).reshape(a.weight.shape), b[:, 0])
                  for a, w, b in zip(plan, item["weights"], item["biases"])]
        return self._unlayers(layers, arch_id)


class TokenView(WeightView):
    """SANE tokens: per output neuron [incoming weights..., bias], padded/chunked to ``token_size``.

    ``token_size`` None: the longest neuron of any arch in the view (one token per neuron).
    """

    def __init__(self, zoo: Zoo, token_size: int | None = None, **kwargs):
        super().__init__(zoo, **kwargs)
        longest = max(math.prod(a.weight.shape[1:]) + 1
                      for lay in self.layouts.values() for a in affine_plan(lay))
        self.token_size = token_size or longest

    def encode(self, flat, arch_id):
        ts = self.token_size
        tokens, masks, positions = [], [], []
        for li, (w, b) in enumerate(self._layers(flat, arch_id)):
            rows = torch.cat([w.reshape(w.shape[0], -1), b[:, None]], dim=1)  # [n_out, L]
            n_out, length = rows.shape
            chunks = -(-length // ts)
            padded = torch.zeros(n_out, chunks * ts, dtype=rows.dtype)
            padded[:, :length] = rows
            mask = torch.zeros(n_out, chunks * ts, dtype=torch.bool)
            mask[:, :length] = True
            tokens.append(padded.reshape(n_out * chunks, ts))
            masks.append(mask.reshape(n_out * chunks, ts))
            neuron = torch.arange(n_out).repeat_interleave(chunks)
            chunk = torch.arange(chunks).repeat(n_out)
            positions.append(torch.stack([torch.full_like(neuron, li), neuron, chunk], dim=1))
        return {"tokens": torch.cat(tokens), "mask": torch.cat(masks), "positions": torch.cat(positions)}

    def decode(self, item, arch_id=None):
        arch_id = self._arch_of(item, arch_id)
        tokens, pos = item["tokens"], item["positions"]
        layers = []
        for li, a in enumerate(affine_plan(self.layouts[arch_id])):
            rows = tokens[pos[:, 0] == li].reshape(a.n_out, -1)
            length = math.prod(a.weight.shape[1:])
            layers.append((rows[:, :length].reshape(a.weight.shape), rows[:, length]))
        return self._unlayers(layers, arch_id)


def pad_tokens(batch: list[dict]) -> dict:
    """Collate TokenView items with different token counts: pads T, adds ``"token_mask"`` [B, T]."""
    t = max(item["tokens"].shape[0] for item in batch)
    out = {"model_id": [item["model_id"] for item in batch]}
    for key in ("tokens", "mask", "positions"):
        first = batch[0][key]
        stacked = torch.zeros(len(batch), t, *first.shape[1:], dtype=first.dtype)
        for i, item in enumerate(batch):
            stacked[i, :item[key].shape[0]] = item[key]
        out[key] = stacked
    out["token_mask"] = torch.zeros(len(batch), t, dtype=torch.bool)
    for i, item in enumerate(batch):
        out["token_mask"][i, :item["tokens"].shape[0]] = True
    if "target" in batch[0]:
        out["target"] = torch.stack([item["target"] for item in batch])
    return out


class GraphView(WeightView):
    """Neural graph: nodes = neurons (inputs first), edges = weights (kernels as edge vectors)."""

    def encode(self, flat, arch_id):
        layers = self._layers(flat, arch_id)
        d = max(max(math.prod(w.shape[2:]), 1) for w, _ in layers)
        n_in = layers[0][0].shape[1]
        x = [torch.zeros(n_in, 1)]
        node_layer = [torch.zeros(n_in, dtype=torch.long)]
        edges, attrs, offset = [], [], 0
        for li, (w, b) in enumerate(layers):
            n_out, n_in = w.shape[:2]
            dst, src = torch.meshgrid(torch.arange(n_out), torch.arange(n_in), indexing="ij")
            edges.append(torch.stack([src.reshape(-1) + offset, dst.reshape(-1) + offset + n_in]))
            e = w.reshape(n_out * n_in, -1)
            attrs.append(torch.nn.functional.pad(e, (0, d - e.shape[1])))
            x.append(b[:, None])
            node_layer.append(torch.full((n_out,), li + 1, dtype=torch.long))
            offset += n_in
        return {"x": torch.cat(x), "node_layer": torch.cat(node_layer),
                "edge_index": torch.cat(edges, dim=1), "edge_attr": torch.cat(attrs)}

    def decode(self, item, arch_id=None):
        arch_id = self._arch_of(item, arch_id)
        layers, e0, node0 = [], 0, 0
        for a in affine_plan(self.layouts[arch_id]):
            k = max(math.prod(a.kernel), 1)
            n_edges = a.n_out * a.n_in
            w = item["edge_attr"][e0:e0 + n_edges, :k].reshape(a.weight.shape)
            node0 += a.n_in
            layers.append((w, item["x"][node0:node0 + a.n_out, 0]))
            e0 += n_edges
        return self._unlayers(layers, arch_id)


def to_pyg(item: dict):
    """A ``torch_geometric.data.Data`` from a GraphView item (needs torch_geometric)."""
    try:
        from torch_geometric.data import Data
    except ImportError as e:
        raise ImportError("to_pyg needs torch_geometric (pip install torch_geometric)") from e
    extra = {"y": item["target"]} if "target" in item else {}
    return Data(x=item["x"], edge_index=item["edge_index"], edge_attr=item["edge_attr"],
                node_layer=item["node_layer"], model_id=item["model_id"], **extra)


VIEWS = {"flat": FlatView, "nfn": NFNView, "dws": DWSView, "tokens": TokenView, "graph": GraphView}
