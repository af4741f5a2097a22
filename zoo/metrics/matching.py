"""Permutation symmetry of hidden units: specs, applying permutations, and aligning model pairs.

Two networks that differ only by a permutation of hidden units compute the same function. To
compare two trained models (barriers along the linear path, distances, spectra) one first aligns
B to A with permutations of its hidden units (Ainsworth et al. 2023, "Git Re-Basin"; Entezari et
al. 2022). This module holds:

- ``PermutationSpec``: which axes of which ``state_dict`` tensors each permutation acts on
  (git-re-basin's ``perm_to_axes`` / ``axes_to_perm``), derived automatically by ``torch.fx``
  tracing (``permutation_spec``): Linear/Conv outputs open a new permutation, BatchNorm and
  elementwise ops and pooling carry it, an ``add`` (residual) joins the permutations of its inputs
  (union-find), model inputs and outputs are never permuted. A family whose models the tracer
  cannot follow (the zoo's ViT/GPT reshape features into heads, its Mixer transposes tokens)
  declares its spec beside its builder (``Family.permutation``), checked against the model here.
- ``apply_permutation`` / ``apply_permutation_stacked``: permute one or M stacked models.
- ``weight_matching``: coordinate descent over permutations with one linear assignment per step,
  batched over many (A, B) pairs of a population.
- ``activation_matching``: per permutation, LAP on the cross-correlation of hidden features.
- ``singular_vector_alignment`` (Ito et al.) and ``alignment_distances`` (L2 / cosine).

Convention (git-re-basin's): ``perm[i] = j`` means unit ``i`` of the permuted B is unit ``j`` of
B, i.e. ``W_B' = take(W_B, perm, axis)`` on every axis the permutation touches.
"""

from __future__ import annotations

import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import fx, nn
from torch.func import functional_call, vmap

from ..functional import population_forward
from ..generators.architectures import declared_permutation

Tensor = torch.Tensor


@dataclass
class PermutationSpec:
    """Which tensor axes each hidden-unit permutation acts on (plain data, git-re-basin style).

    ``perm_to_axes[p]``: the (state_dict name, axis) pairs permuted by ``p``.
    ``axes_to_perm[name]``: per axis of the tensor, the permutation acting on it or None; every
    floating-point state_dict entry has an entry (BatchNorm running stats included).
    ``sizes[p]``: number of units ``p`` permutes.
    ``blocks[(name, axis)] = (R, S)``: the axis is viewed as [R, n, S] and ``p`` permutes its n
    units, each R runs of S contiguous entries; absent means (1, 1), one entry per unit. Used where
    a channel permutation reaches a Linear through a Flatten of a C x S map ((1, S)) and for
    attention heads (qkv outputs laid out [3, heads, d_head]: (3, d_head); proj inputs: (1, d_head)).
    """

    perm_to_axes: dict[str, list[tuple[str, int]]]
    axes_to_perm: dict[str, tuple[str | None, ...]]
    sizes: dict[str, int] = field(default_factory=dict)
    blocks: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def block(self, name: str, axis: int) -> tuple[int, int]:
        return self.blocks.get((name, axis), (1, 1))


# ---------------------------------------------------------------- deriving the spec (torch.fx)

_CARRY_MODULES = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Softplus,
                  nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_ACTIVATION_MODULES = _CARRY_MODULES[:11]
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.gelu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid,
                         F.leaky_relu, F.elu, F.silu, F.softplus, F.mish, F.hardtanh, F.relu6}
_CARRY_FUNCTIONS = _ACTIVATION_FUNCTIONS | {
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, operator.mul,
    operator.truediv, torch.mul, operator.neg}
_JOIN_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub}
_ACTIVATION_METHODS = {"relu", "tanh", "sigmoid"}
_CARRY_METHODS = _ACTIVATION_METHODS | {"mul", "div", "contiguous", "clone"}


class _Spaces:
    """Union-find over channel spaces (the feature axis of an fx node's output)."""

    def __init__(self):
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.size: list[int | None] = []
        self.producer: list[str] = []

    def new(self, producer: str, size: int | None = None, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.size.append(size)
        self.producer.append(producer)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int, where: str) -> int:
        i, j = self.find(i), self.find(j)
        if i == j:
            return i
        si, sj = self.size[i], self.size[j]
        if si is not None and sj is not None and si != sj:
            raise ValueError(f"permutation_spec: {where} joins feature axes of sizes {si} and {sj}")
        lo, hi = min(i, j), max(i, j)  # keep the earliest space as root: it names the permutation
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]
        self.size[lo] = si if si is not None else sj
        return lo


@dataclass
class _Trace:
    graph_module: fx.GraphModule
    spec: PermutationSpec
    node_perm: dict[str, str | None]  # fx node name -> permutation of its feature axis (unflattened)
    activations: list[str]  # fx node names of activation outputs, in graph order


def _flatten_args(node: fx.Node) -> tuple[int, int]:
    if node.op == "call_module":
        return 1, -1  # filled in by caller from the module
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start, end


def _trace(model: nn.Module) -> _Trace:
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    sp = _Spaces()
    env: dict[str, tuple[int, bool] | None] = {}  # node -> (space, flattened) of its dim-1 features
    uses: list[tuple[str, int, int, bool]] = []  # (tensor, axis, space, input is flattened)
    activations: list[str] = []

    def arg_space(node: fx.Node, a) -> tuple[int, bool]:
        if not isinstance(a, fx.Node) or env.get(a.name) is None:
            raise ValueError(f"permutation_spec: cannot follow the feature axis into {node.format_node()}")
        return env[a.name]

    def unsupported(node: fx.Node, what: str):
        return ValueError(f"permutation_spec: unsupported {what} at fx node {node.name!r} "
                          f"({node.format_node()}); supported: Sequential/ResNet-style graphs of Linear, "
                          "Conv1d/2d, BatchNorm, activations, pooling, Flatten and residual adds")

    def flatten(node: fx.Node, src, start: int, end: int):
        space, flat = arg_space(node, src)
        if start in (2, 3) or (start == 1 and end == 1):
            return (space, flat)  # flattens spatial dims only: channel axis untouched
        if start != 1 or end != -1:
            raise unsupported(node, f"flatten(start_dim={start}, end_dim={end})")
        return (space, True)  # channel c becomes block c of the flat axis (size S found at the Linear)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = (sp.new("input", fixed=True), False)
        elif node.op == "get_attr":
            raise unsupported(node, "direct parameter access (get_attr)")
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            for o in outs:
                if isinstance(o, fx.Node) and env.get(o.name) is not None:
                    sp.fixed[sp.find(env[o.name][0])] = True
        elif node.op == "call_module":
            mod = modules[node.target]
            name = node.target
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                space, flat = arg_space(node, node.args[0])
                if isinstance(mod, nn.Linear):
                    n_out = mod.out_features
                else:
                    if mod.groups != 1:
                        raise unsupported(node, f"grouped convolution (groups={mod.groups})")
                    if flat:
                        raise unsupported(node, "convolution of a flattened tensor")
                    n_out = mod.out_channels
                uses.append((f"{name}.weight", 1, space, flat))
                out = sp.new(name, size=n_out)
                uses.append((f"{name}.weight", 0, out, False))
                if mod.bias is not None:
                    uses.append((f"{name}.bias", 0, out, False))
                env[node.name] = (out, False)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                space, flat = arg_space(node, node.args[0])
                if flat:
                    raise unsupported(node, "BatchNorm of a flattened tensor")
                for role in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, role, None) is not None:
                        uses.append((f"{name}.{role}", 0, space, False))
                env[node.name] = (space, False)
            elif isinstance(mod, _CARRY_MODULES):
                env[node.name] = arg_space(node, node.args[0])
                if isinstance(mod, _ACTIVATION_MODULES):
                    activations.append(node.name)
            elif isinstance(mod, _POOL_MODULES):
                space, flat = arg_space(node, node.args[0])
                if flat:
                    raise unsupported(node, "pooling of a flattened tensor")
                env[node.name] = (space, False)
            elif isinstance(mod, nn.Flatten):
                env[node.name] = flatten(node, node.args[0], mod.start_dim, mod.end_dim)
            else:
                raise unsupported(node, f"module {type(mod).__name__}")
        elif node.op == "call_function":
            tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
            if node.target in _JOIN_FUNCTIONS and len(tensor_args) == 2:
                (sa, fa), (sb, fb) = arg_space(node, tensor_args[0]), arg_space(node, tensor_args[1])
                if fa != fb:
                    raise unsupported(node, "add of a flattened and an unflattened tensor")
                env[node.name] = (sp.union(sa, sb, f"residual {node.name!r}"), fa)
            elif node.target in _JOIN_FUNCTIONS | _CARRY_FUNCTIONS and len(tensor_args) == 1:
                env[node.name] = arg_space(node, tensor_args[0])
                if node.target in _ACTIVATION_FUNCTIONS:
                    activations.append(node.name)
            elif node.target is torch.flatten:
                start, end = _flatten_args(node)
                env[node.name] = flatten(node, node.args[0], start, end)
            else:
                raise unsupported(node, f"function {getattr(node.target, '__name__', node.target)}")
        elif node.op == "call_method":
            tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
            if node.target in ("add", "sub") and len(tensor_args) == 2:
                (sa, fa), (sb, fb) = arg_space(node, tensor_args[0]), arg_space(node, tensor_args[1])
                if fa != fb:
                    raise unsupported(node, "add of a flattened and an unflattened tensor")
                env[node.name] = (sp.union(sa, sb, f"residual {node.name!r}"), fa)
            elif node.target in _CARRY_METHODS | {"add", "sub"} and len(tensor_args) == 1:
                env[node.name] = arg_space(node, tensor_args[0])
                if node.target in _ACTIVATION_METHODS:
                    activations.append(node.name)
            elif node.target == "flatten":
                start, end = _flatten_args(node)
                env[node.name] = flatten(node, node.args[0], start, end)
            elif node.target == "mean" and len(node.args) > 1:
                dims = node.args[1] if isinstance(node.args[1], (tuple, list)) else (node.args[1],)
                if any(d in (0, 1) for d in dims):
                    raise unsupported(node, f"mean over dims {dims}")
                env[node.name] = arg_space(node, node.args[0])
            else:
                raise unsupported(node, f"method .{node.target}()")

    # perm names: "P_<module that first produced the space>", in order of appearance
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    names: dict[int, str] = {}
    for i in range(len(sp.parent)):
        r = sp.find(i)
        if not sp.fixed[r] and r not in names and any(sp.find(u[2]) == r for u in uses):
            names[r] = f"P_{sp.producer[r]}"
    axes: dict[str, list[str | None]] = {k: [None] * v.dim() for k, v in state.items()}
    perm_to_axes: dict[str, list[tuple[str, int]]] = {p: [] for p in names.values()}
    sizes = {names[r]: sp.size[r] for r in names}
    blocks: dict[tuple[str, int], tuple[int, int]] = {}
    for tensor, axis, space, flat in uses:
        r = sp.find(space)
        if r not in names:
            continue
        p = names[r]
        if axes[tensor][axis] is not None and axes[tensor][axis] != p:
            raise ValueError(f"permutation_spec: axis {axis} of {tensor} is reached by two permutations")
        if axes[tensor][axis] == p:
            continue
        axes[tensor][axis] = p
        perm_to_axes[p].append((tensor, axis))
        if flat:
            length, n = state[tensor].shape[axis], sizes[p]
            if length % n:
                raise ValueError(f"permutation_spec: {tensor} axis {axis} has {length} inputs, "
                                 f"not a multiple of the {n} flattened channels")
            if length != n:
                blocks[(tensor, axis)] = (1, length // n)
    spec = PermutationSpec(perm_to_axes, {k: tuple(v) for k, v in axes.items()}, sizes, blocks)
    node_perm = {n: (names.get(sp.find(s)) if not flat else None)
                 for n, v in env.items() if v is not None for s, flat in [v]}
    return _Trace(gm, spec, node_perm, activations)


# ---------------------------------------------------------------- declared specs (ViT, GPT, Mixer)

@dataclass
class _Declared:
    spec: PermutationSpec
    probes: dict[str, list[tuple[str, bool]]]  # perm -> (module, record its input, not output)


def _declared(model: nn.Module) -> _Declared | None:
    """The spec a family declares for ``model`` (``Family.permutation``: the zoo's ViT, GPT and
    Mixer, whose heads or transposed tokens the tracer does not follow), checked against the model:
    every axis it names exists with R * n * S entries, and every floating-point tensor is permuted
    somewhere or declared fixed (a parameter the declaration does not know about would otherwise
    break the symmetry silently). None for a model no family declares: it is traced."""
    declared = declared_permutation(model)
    if declared is None:
        return None
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    axes: dict[str, list[str | None]] = {k: [None] * v.dim() for k, v in state.items()}
    perm_to_axes: dict[str, list[tuple[str, int]]] = {}
    sizes: dict[str, int] = {}
    blocks: dict[tuple[str, int], tuple[int, int]] = {}
    for p, n, name, axis, (r, s) in declared.axes:
        if name not in state or state[name].dim() <= axis or state[name].shape[axis] != r * n * s:
            raise ValueError(f"permutation_spec: declared axis {axis} of {name} ({r} x {n} x {s}) does not "
                             f"match the model ({tuple(state[name].shape) if name in state else 'missing'})")
        axes[name][axis] = p
        perm_to_axes.setdefault(p, []).append((name, axis))
        sizes[p] = n
        if (r, s) != (1, 1):
            blocks[(name, axis)] = (r, s)
    missed = [k for k, v in axes.items() if not any(v) and k not in declared.fixed]
    if missed:
        raise ValueError(f"permutation_spec: the declared {type(model).__name__} spec does not cover {missed}")
    return _Declared(PermutationSpec(perm_to_axes, {k: tuple(v) for k, v in axes.items()}, sizes, blocks),
                     declared.probes)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The hidden-unit permutation spec of ``model``, derived by ``torch.fx.symbolic_trace``.

    Each Linear/Conv output opens a feature space; BatchNorm (weight, bias, running_mean,
    running_var), activations, dropout and pooling carry it; Flatten after global pooling keeps
    it, Flatten of a C x S map turns it into a permutation of S-blocks of the next Linear's input
    (``spec.blocks``); ``add``/``sub`` of two tensors joins their spaces (union-find), so a residual
    stream shares one permutation. Spaces joined to a model input or output are never permuted.
    Raises ValueError (one line, naming the fx node) on anything else (grouped convs,
    attention, get_attr, view/reshape).

    Families the tracer cannot follow are the exception: their spec is declared beside their
    builder (``Family.permutation``) and checked against the model (``_declared``). ViT/GPT: the
    residual stream, each block's MLP hidden units and each block's attention heads (whole heads,
    ``spec.blocks`` (3, d_head) on qkv, (1, d_head) on proj); Mixer: the channel stream and each
    block's token- and channel-mixing hidden units.
    """
    declared = _declared(model)
    return declared.spec if declared is not None else _trace(model).spec


# ---------------------------------------------------------------- applying permutations

def _take(t: Tensor, dim: int, perm: Tensor, block: tuple[int, int]) -> Tensor:
    """``t`` with its ``dim`` (viewed as [R, n, S], ``block`` = (R, S)) reindexed on n by ``perm``
    [K, n] per batch row."""
    t = t.unflatten(dim, (block[0], -1, block[1]))
    shape = [1] * t.dim()
    shape[0], shape[dim + 1] = perm.shape[0], perm.shape[1]
    idx = perm.reshape(shape).expand(t.shape)
    return torch.gather(t, dim + 1, idx).flatten(dim, dim + 2)


def _permute_tensor(spec: PermutationSpec, name: str, t: Tensor, perms: dict[str, Tensor],
                    except_axis: int | None = None) -> Tensor:
    for axis, p in enumerate(spec.axes_to_perm.get(name, ())):
        if p is not None and axis != except_axis:
            t = _take(t, axis + 1, perms[p], spec.block(name, axis))
    return t


def apply_permutation_stacked(spec: PermutationSpec, perms: dict[str, Tensor],
                              state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Permute M stacked models: ``state[name]`` [M, *shape], ``perms[p]`` [M, n] (or [1, n]).

    Every axis a permutation acts on is reindexed, ``W'[..., i, ...] = W[..., perm[i], ...]``;
    tensors not in the spec are returned unchanged. The permuted models compute the same functions.
    """
    perms = {p: torch.as_tensor(v).long().reshape(-1, v.shape[-1]) for p, v in perms.items()}
    return {k: _permute_tensor(spec, k, v, perms) for k, v in state.items()}


def apply_permutation(spec: PermutationSpec, perms: dict[str, Tensor],
                      state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Permute one model: ``state[name]`` [*shape] (a state_dict), ``perms[p]`` [n]."""
    out = apply_permutation_stacked(spec, {p: torch.as_tensor(v)[None] for p, v in perms.items()},
                                    {k: v[None] for k, v in state.items()})
    return {k: v[0] for k, v in out.items()}


def identity_perms(spec: PermutationSpec, count: int = 1) -> dict[str, Tensor]:
    """Identity permutations [count, n] for every permutation of ``spec``."""
    return {p: torch.arange(n).expand(count, n).clone() for p, n in spec.sizes.items()}


def random_perms(spec: PermutationSpec, count: int = 1, seed: int = 0) -> dict[str, Tensor]:
    """Uniformly random permutations [count, n] (seeded), e.g. to plant a known symmetry."""
    g = torch.Generator().manual_seed(seed)
    return {p: torch.stack([torch.randperm(n, generator=g) for _ in range(count)])
            for p, n in spec.sizes.items()}


def aligned_pairs(spec: PermutationSpec, state: dict[str, Tensor], pairs, perms: dict[str, Tensor]
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(state of A, state of B permuted towards A), each [K, ...], for ``pairs`` [K, 2] of a population.

    ``state`` may hold params and buffers ([M, ...]); ``perms[p]`` [K, n] from a matching function.
    """
    pairs = _pairs(pairs)
    a = {k: v[pairs[:, 0]] for k, v in state.items()}
    b = apply_permutation_stacked(spec, perms, {k: v[pairs[:, 1]] for k, v in state.items()})
    return a, b


def _pairs(pairs) -> Tensor:
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.long).reshape(-1, 2)
    return pairs


# ---------------------------------------------------------------- weight matching

def _unit_matrix(spec: PermutationSpec, name: str, axis: int, t: Tensor, n: int) -> Tensor:
    """[K, n, rest]: the units of ``axis`` of stacked ``t`` [K, *shape] as rows (blocks kept together)."""
    r, s = spec.block(name, axis)
    t = t.unflatten(axis + 1, (r, n, s))
    return t.movedim(axis + 2, 1).reshape(t.shape[0], n, -1)


def _cost(spec: PermutationSpec, p: str, a: dict[str, Tensor], b: dict[str, Tensor],
          perms: dict[str, Tensor]) -> Tensor:
    """C[k, i, j] = sum over (W, axis) touching p of <W_A unit i, W_B unit j (other perms applied)>."""
    n = spec.sizes[p]
    cost = None
    for name, axis in spec.perm_to_axes[p]:
        if name not in a:
            continue
        wa = _unit_matrix(spec, name, axis, a[name], n)
        wb = _unit_matrix(spec, name, axis, _permute_tensor(spec, name, b[name], perms, except_axis=axis), n)
        c = torch.bmm(wa, wb.transpose(1, 2))
        cost = c if cost is None else cost + c
    return cost


_LAP_POOLS: dict[int, ThreadPoolExecutor] = {}


def linear_assignment(cost: Tensor) -> Tensor:
    """Maximising linear assignment per batch row: [K, n, n] -> perm [K, n] (scipy, per pair).

    scipy's solver releases the GIL, so with more than one torch thread (``torch.get_num_threads``:
    OMP_NUM_THREADS or the CPU affinity, the thread rule of the rest of zoo) the K problems are
    spread over that many threads; each answer is the same as solved alone."""
    c = cost.detach().cpu().numpy()
    threads = min(torch.get_num_threads(), len(c))
    if threads < 2 or c.shape[-1] < 32:  # small problems: a thread hand-off costs more than the solve
        return torch.from_numpy(np.stack([linear_sum_assignment(ci, maximize=True)[1] for ci in c]))
    pool = _LAP_POOLS.get(threads) or _LAP_POOLS.setdefault(threads, ThreadPoolExecutor(threads, "zoo-lap"))
    return torch.from_numpy(np.stack(list(pool.map(lambda ci: linear_sum_assignment(ci, maximize=True)[1], c))))


def matching_objective(spec: PermutationSpec, a: dict[str, Tensor], b: dict[str, Tensor],
                       perms: dict[str, Tensor]) -> Tensor:
    """sum over tensors of <W_A, pi(W_B)> per pair: [K] (float64) for stacked a, b [K, ...]."""
    pb = apply_permutation_stacked(spec, perms, b)
    return sum((a[k].double() * pb[k].double()).reshape(a[k].shape[0], -1).sum(1) for k in a)


def weight_matching(spec: PermutationSpec, params_stacked: dict[str, Tensor], pairs, max_iter: int = 100,
                    seed: int = 0, tol: float = 1e-12, objectives: bool = True) -> dict:
    """Weight matching (Ainsworth et al. 2023, Alg. 1) for many pairs (a, b) of a population at once.

    Maximises J(pi) = sum_W <W_A, pi(W_B)> over all tensors of ``params_stacked`` (name -> [M, ...])
    by coordinate descent: per sweep, the permutations in a random order (seeded, the same order
    for every pair); each step solves the linear assignment max_P sum_i C[i, P(i)] with
    C = sum over (W, axis) touching P of W_A(axis) W_B(axis, other perms applied)^T, batched over
    pairs with torch, one scipy LAP per pair. A step keeps the old permutation unless the new one
    raises its term by more than ``tol`` (relative), so J never decreases; a pair stops after a
    sweep without change (or ``max_iter`` sweeps). Costs in float64. A step is skipped for a pair
    whose C has not changed since the permutation was last solved (no permutation sharing a tensor
    with it moved since): the LAP would give the same answer again.

    Like git-re-basin, J covers the trainable parameters only (weights, biases, BN scale/shift);
    pass ``params`` (not the running statistics, which are permuted by apply_permutation but are
    not model parameters). Maximising J is minimising ||theta_A - pi(theta_B)||^2.

    Returns {"perms": {p: LongTensor[K, n]}, "objective": [K], "objective_identity": [K],
    "sweeps": LongTensor[K]} (K = len(pairs); perms map B onto A, see ``aligned_pairs``);
    ``objectives=False`` leaves the two objectives out (for callers that use only the permutations).
    """
    pairs = _pairs(pairs)
    a = {k: v[pairs[:, 0]].double() for k, v in params_stacked.items() if k in spec.axes_to_perm}
    b = {k: v[pairs[:, 1]].double() for k, v in params_stacked.items() if k in spec.axes_to_perm}
    k_pairs = pairs.shape[0]
    perms = identity_perms(spec, k_pairs)
    names = list(spec.perm_to_axes)
    gen = torch.Generator().manual_seed(seed)
    active = torch.ones(k_pairs, dtype=torch.bool)
    sweeps = torch.zeros(k_pairs, dtype=torch.long)
    # C_p of a pair changes only when a permutation sharing a tensor with p moves: until then the
    # LAP would return what it returned last time, so it is skipped (same result, fewer LAPs)
    coupled = {p: {q for name, _ in spec.perm_to_axes[p] for q in spec.axes_to_perm[name] if q not in (None, p)}
               for p in names}
    stale = {p: torch.ones(k_pairs, dtype=torch.bool) for p in names}
    for _ in range(max_iter):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        a_sub = {k: v[idx] for k, v in a.items()}
        b_sub = {k: v[idx] for k, v in b.items()}
        changed = torch.zeros(len(idx), dtype=torch.bool)
        for pi in torch.randperm(len(names), generator=gen).tolist():
            p = names[pi]
            todo = stale[p][idx].nonzero()[:, 0]  # positions in idx whose C_p moved since p was solved
            if len(todo) == 0:
                continue
            whole = len(todo) == len(idx)
            rows = idx[todo]
            sub = {q: v[rows] for q, v in perms.items()}
            cost = _cost(spec, p, a_sub if whole else {k: v[todo] for k, v in a_sub.items()},
                         b_sub if whole else {k: v[todo] for k, v in b_sub.items()}, sub)
            new = linear_assignment(cost)
            old_val = cost.gather(2, sub[p][:, :, None]).sum((1, 2))
            new_val = cost.gather(2, new[:, :, None]).sum((1, 2))
            better = new_val - old_val > tol * old_val.abs().clamp_min(1.0)
            perms[p][rows[better]] = new[better]
            changed[todo[better]] = True
            stale[p][rows] = False
            for q in coupled[p]:
                stale[q][rows[better]] = True
        sweeps[idx] += 1
        active[idx[~changed]] = False
    if not objectives:
        return {"perms": perms, "sweeps": sweeps}
    return {"perms": perms, "objective": matching_objective(spec, a, b, perms),
            "objective_identity": matching_objective(spec, a, b, identity_perms(spec, 1)), "sweeps": sweeps}


# ---------------------------------------------------------------- activation matching

def hidden_features(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor
                    ) -> dict[str, Tensor]:
    """Per permutation p: hidden features [M, N, n * S] of M stacked models on probe batch x [B, ...].

    Unit i of p owns the S contiguous features i*S .. (i+1)*S - 1 (S = 1 but for attention heads,
    whose d_head outputs are all recorded). For fx-traced models the recorded nodes are the
    activation outputs whose feature axis p permutes (each spatial position a sample: N = B *
    spatial size, several nodes of one residual stream concatenated along N); a permutation with
    no activation uses the last node it permutes. For a declared family the modules its
    declaration names (ViT/GPT: the block outputs (residual stream), the MLP activations and the
    attention output entering proj (heads), each token a sample). Runs in the model's current
    mode (use eval for BatchNorm); ``buffers`` are not modified.
    """
    declared = _declared(model)
    if declared is not None:
        return hooked_features(model, declared.probes, params, buffers, x)
    return _traced_features(model, params, buffers, x)


def hooked_features(model: nn.Module, probes: dict[str, list[tuple[str, bool]]], params: dict[str, Tensor],
                     buffers: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """``hidden_features`` from forward hooks on named modules (models fx cannot follow), under vmap."""
    modules = dict(model.named_modules())
    keys = list(dict.fromkeys(key for nodes in probes.values() for key in nodes))
    store: dict[tuple[str, bool], Tensor] = {}

    def hook(key):
        def record(module, args, out):
            store[key] = args[0] if key[1] else out
        return record

    def one(p, b, xb):
        store.clear()
        functional_call(model, (p, b), (xb,))
        return tuple(store[key] for key in keys)

    handles = [modules[key[0]].register_forward_hook(hook(key)) for key in keys]
    try:
        outs = vmap(one, in_dims=(0, 0, None))(params, {k: v.clone() for k, v in buffers.items()}, x)
    finally:
        for h in handles:
            h.remove()
    feats = {key: f.reshape(f.shape[0], -1, f.shape[-1]) for key, f in zip(keys, outs)}
    return {p: torch.cat([feats[key] for key in nodes], dim=1) for p, nodes in probes.items()}


def _traced_features(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor
                     ) -> dict[str, Tensor]:
    """``hidden_features`` of an fx-traced model: its graph re-emitted to output the chosen nodes."""
    tr = _trace(model)
    chosen: dict[str, list[str]] = {p: [] for p in tr.spec.perm_to_axes}
    for n in tr.activations:
        if tr.node_perm.get(n) is not None:
            chosen[tr.node_perm[n]].append(n)
    for p, nodes in chosen.items():
        if not nodes:
            nodes.append([n for n, q in tr.node_perm.items() if q == p][-1])
    record = [n for nodes in chosen.values() for n in nodes]
    graph = fx.Graph()
    remap = {}
    for node in tr.graph_module.graph.nodes:
        if node.op == "output":
            graph.output(tuple(remap[n] for n in record))
        else:
            new = graph.node_copy(node, lambda m: remap[m.name])
            remap[node.name] = new
    probe = fx.GraphModule(tr.graph_module, graph)
    keys = set(probe.state_dict())
    outs = population_forward(probe, {k: v for k, v in params.items() if k in keys},
                              {k: v.clone() for k, v in buffers.items() if k in keys}, x)
    feats = dict(zip(record, outs))
    result = {}
    for p, nodes in chosen.items():
        parts = []
        for n in nodes:
            f = feats[n]
            f = f.movedim(2, -1) if f.dim() > 3 else f
            parts.append(f.reshape(f.shape[0], -1, f.shape[-1]))
        result[p] = torch.cat(parts, dim=1)
    return result


def activation_matching(model: nn.Module, spec: PermutationSpec, params: dict[str, Tensor],
                        buffers: dict[str, Tensor], pairs, x: Tensor, eps: float = 1e-8) -> dict[str, Tensor]:
    """Activation matching (Ainsworth et al. 2023 Sec. 3.1; Li et al. 2015): per permutation p,
    P_p = argmax_P sum_i corr(z_A,i, z_B,P(i)) with corr the Pearson cross-correlation of the
    hidden features of A and B over the probe batch (``hidden_features``), one LAP per pair. A unit
    of S features (an attention head) scores the sum of its S entry-wise correlations.

    ``params``/``buffers`` [M, ...]; ``pairs`` [K, 2]; returns {p: LongTensor[K, n]} (maps B to A).
    """
    pairs = _pairs(pairs)
    feats = hidden_features(model, params, buffers, x)
    perms = {}
    for p, n in spec.sizes.items():
        f = feats[p].double()
        z = (f - f.mean(1, keepdim=True)) / (f.std(1, unbiased=False, keepdim=True) + eps)
        z = z.unflatten(2, (n, -1)).transpose(2, 3).reshape(z.shape[0], -1, n)  # a unit's S features: samples
        corr = torch.bmm(z[pairs[:, 0]].transpose(1, 2), z[pairs[:, 1]]) / f.shape[1]
        perms[p] = linear_assignment(corr)
    return perms


# ---------------------------------------------------------------- alignment measures

def singular_vector_alignment(spec: PermutationSpec, params: dict[str, Tensor], pairs,
                              perms: dict[str, Tensor], k: int = 8) -> dict[str, Tensor]:
    """Ito et al. (2024): how well weight matching aligns the dominant singular vectors.

    For every tensor with >= 2 dims (matrix view [out, in * kernel]) and a permutation on it:
    mean over the top-k singular triplets of |<u_i^A, u_i^B>| (left) and |<v_i^A, v_i^B>| (right),
    with B as given ("before") and as pi(W_B) ("after"). Returns {f"{name}/left_before", ...,
    f"{name}/right_after": [K]}. Near-degenerate singular values make single vectors ill-defined:
    read small k.
    """
    pairs = _pairs(pairs)
    names = [n for n, ax in spec.axes_to_perm.items() if len(ax) >= 2 and any(ax) and n in params]
    a = {n: params[n][pairs[:, 0]].double() for n in names}
    b = {n: params[n][pairs[:, 1]].double() for n in names}
    pb = apply_permutation_stacked(spec, perms, b)
    out = {}
    for n in names:
        ua, _, vha = torch.linalg.svd(a[n].flatten(2), full_matrices=False)
        kk = min(k, ua.shape[-1])
        for tag, wb in (("before", b[n]), ("after", pb[n])):
            ub, _, vhb = torch.linalg.svd(wb.flatten(2), full_matrices=False)
            out[f"{n}/left_{tag}"] = (ua[..., :kk] * ub[..., :kk]).sum(-2).abs().mean(-1)
            out[f"{n}/right_{tag}"] = (vha[..., :kk, :] * vhb[..., :kk, :]).sum(-1).abs().mean(-1)
    return out


def flat_distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    """L2 distance ||theta_A - theta_B|| and cosine similarity of flat vectors (tensors of ``a``) [K]."""
    fa = torch.cat([a[k].double().reshape(a[k].shape[0], -1) for k in a], 1)
    fb = torch.cat([b[k].double().reshape(b[k].shape[0], -1) for k in a], 1)
    return {"l2": (fa - fb).norm(dim=1), "cosine": F.cosine_similarity(fa, fb, dim=1)}


def alignment_distances(spec: PermutationSpec, params: dict[str, Tensor], pairs, perms: dict[str, Tensor]
                        ) -> dict[str, Tensor]:
    """L2 distance and cosine similarity of flat parameter vectors of each pair, before and after
    permuting B onto A: {"l2_before", "l2_after", "cosine_before", "cosine_after"}: [K]."""
    pairs = _pairs(pairs)
    a = {k: v[pairs[:, 0]] for k, v in params.items()}
    b = {k: v[pairs[:, 1]] for k, v in params.items()}
    before, after = flat_distance(a, b), flat_distance(a, apply_permutation_stacked(spec, perms, b))
    return {"l2_before": before["l2"], "l2_after": after["l2"],
            "cosine_before": before["cosine"], "cosine_after": after["cosine"]}


__all__ = ["PermutationSpec", "permutation_spec", "apply_permutation", "apply_permutation_stacked",
           "identity_perms", "random_perms", "aligned_pairs", "weight_matching", "matching_objective",
           "hidden_features", "hooked_features", "activation_matching", "linear_assignment",
           "singular_vector_alignment", "flat_distance", "alignment_distances"]
