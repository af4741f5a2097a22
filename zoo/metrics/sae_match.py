"""Cross-layer feature matching with sparse autoencoders: SAE Match (Balagansky, Maksimov, Gavrilov,
"Mechanistic Permutability: Match Features Across Layers", ICLR 2025, arXiv 2410.07656).

Per healthy model, one sparse autoencoder (SAE) per hidden layer l, all models and layers trained as
one batch of stacked parameters [M x L, ...]; with F = ``sae_expansion`` x width features,

    f(x) = ReLU(W_enc x + b_enc),   x_hat = W_dec f + b_dec = sum_i f_i d_i + b_dec,

``sae_steps`` Adam steps (lr ``LR``) on minibatches of ``BATCH`` of the layer's hidden states on
``sae_probe`` training inputs, minimising mean_batch ||x - x_hat||^2 + ``sae_l1`` sum_i f_i ||d_i||
with x scaled per (model, layer) to a mean squared centred norm of 1 (the loss starts near 1 and the
L1 weight means the same at every width and activation scale). Every SAE of layer l starts from the
same dictionary (seeded by l), so a model's SAEs do not depend on its population mates.

Layers: an MLP's (Linear/activation stack) hidden activation outputs; a residual-stream model's
(ViT, GPT, Mixer: a ``blocks`` Sequential) stream after each block, every token a vector.

Folding (the paper's Sec. 3): a feature's scale is arbitrary (f_i -> c f_i, d_i -> d_i / c leaves
the SAE unchanged), so each feature is expressed in units of its own activation scale theta_i:
W_enc_i / theta_i, b_enc_i / theta_i, theta_i d_i. The folded activation f~_i = f_i / theta_i and
the folded decoder d~_i = theta_i d_i give the same reconstruction; d~_i is the vector the feature
adds to the hidden state when it fires at its typical strength, comparable across layers.

Matching: features i of layer l and j of layer l+1 cost C_ij = mean_k (T_l(d~_i)_k - d~'_j,k)^2 (MSE
of folded decoders); one linear assignment per (model, l) gives pi = argmin_pi sum_i C_i,pi(i).
T_l carries a decoder of layer l into layer l+1's space: the identity on a residual stream (the
paper's setting: every block writes in the same basis); for an MLP, whose layers have unrelated
bases, the next layer g = act(W . + b) applied on top of the SAE's bias, T_l(d) = g(b_dec + d) -
g(b_dec) (what the feature adds to layer l+1).

Scores on the hidden states of ``sae_probe`` test inputs, with EV(y, y_hat) = 1 - sum ||y - y_hat||^2
/ sum ||y - mean(y)||^2 over the vectors (1: exact, 0: as good as the mean, < 0: worse):

    recon_ev   EV of each layer's SAE reconstruction (how good the SAEs are)
    match_ev   EV of layer l+1 approximated from layer l's features: y_hat = sum_i f~_i(x_l)
               d~'_pi(i) + b_dec' (layer l's folded activations through layer l+1's matched folded
               decoders, the paper's hidden-state approximation)
    match_ev_unmatched  the same with features paired by index (an arbitrary pairing: the chance level)
    match_mse  mean_i C_i,pi(i) / mean_j,k d~'_j,k^2 (0: the same folded decoders; 2: unrelated
               ones of equal size)

Deviations from the paper, which matches pretrained JumpReLU SAEs (Gemma Scope) on Gemma 2's
residual stream: the SAEs are ReLU SAEs with an L1 penalty, trainable in a few hundred CPU steps;
having no threshold (they fire from 0), theta_i is feature i's mean non-zero activation on the
training vectors (1 for a feature that never fires), where the paper folds the JumpReLU threshold;
the cost compares folded decoders only (an MLP's encoders cannot be carried into the next layer's
space); MLPs need the transport T_l; the paper's pruning experiment (the language loss with a layer
replaced by its approximation) is not done, the approximation is scored by EV.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..functional import ELEMENTWISE, is_linear_stack, mode
from .base import Measured, Metric, Option, Population
from .lmc import run_module
from .matching import hooked_features, linear_assignment

Tensor = torch.Tensor
SAE = dict[str, Tensor]  # w_enc [G, n, F], b_enc [G, F], w_dec [G, F, n], b_dec [G, n]

LR = 3e-3  # Adam learning rate of the SAEs
BATCH = 256  # hidden-state vectors per SAE step


def hidden_layers(model: nn.Module) -> tuple[str, list[str]]:
    """("mlp" | "stream", module names whose outputs are the hidden layers, in forward order)."""
    if is_linear_stack(model):
        children = list(model.named_children())
        last = max(i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear))
        names = [children[i + 1][0] for i in range(last) if isinstance(children[i][1], nn.Linear)
                 and isinstance(children[i + 1][1], ELEMENTWISE)]
        kind = "mlp"
    elif isinstance(getattr(model, "blocks", None), nn.Sequential):
        names, kind = [f"blocks.{i}" for i in range(len(model.blocks))], "stream"
    else:
        raise ValueError(f"applies to MLPs (Linear/activation stacks) and residual-stream models (a blocks "
                         f"Sequential), not {type(model).__name__}")
    if len(names) < 2:
        raise ValueError(f"needs two hidden layers to match features across, {type(model).__name__} has {len(names)}")
    return kind, names


def hidden_states(model: nn.Module, names: list[str], params: dict[str, Tensor], buffers: dict[str, Tensor],
                  x: Tensor, count: int) -> Tensor:
    """[M, L, count, n]: the outputs of modules ``names`` for M stacked models on the first inputs of
    x, every position a vector (inputs are taken until ``count`` vectors are there), in the model's
    current mode."""
    probes = {name: [(name, False)] for name in names}
    one = {k: v[:1] for k, v in params.items()}, {k: v[:1] for k, v in buffers.items()}
    per_input = hooked_features(model, probes, *one, x[:1])[names[0]].shape[1]
    feats = hooked_features(model, probes, params, buffers, x[:math.ceil(count / per_input)])
    return torch.stack([feats[name][:, :count] for name in names], 1)


def encode(sae: SAE, x: Tensor) -> Tensor:
    """Feature activations f [G, N, F] of vectors x [G, N, n]."""
    return torch.relu(torch.baddbmm(sae["b_enc"].unsqueeze(1), x, sae["w_enc"]))


def decode(sae: SAE, f: Tensor) -> Tensor:
    """Reconstructions [G, N, n] of activations f [G, N, F]."""
    return torch.baddbmm(sae["b_dec"].unsqueeze(1), f, sae["w_dec"])


def sae_loss(sae: SAE, x: Tensor, l1: float) -> Tensor:
    """[G]: mean over the vectors x [G, B, n] of ||x - x_hat||^2 + l1 sum_i f_i ||d_i||."""
    f = encode(sae, x)
    recon = (x - decode(sae, f)).square().sum(2).mean(1)
    return recon + l1 * (f * sae["w_dec"].norm(dim=2).unsqueeze(1)).sum(2).mean(1)


def train_saes(x: Tensor, features: int, steps: int, l1: float, seeds: list[int], lr: float = LR,
               batch: int = BATCH) -> SAE:
    """ReLU SAEs for G stacks of vectors x [G, N, n] (module docstring), one per stack, trained together.

    SAE g starts from unit-norm decoder rows drawn from ``seeds[g]``, W_enc = W_dec^T, b_dec = the
    mean vector and b_enc = -W_enc b_dec (the encoder sees centred vectors); all see the same
    minibatch indices (seed 0). Losses are summed over the stacks, so each SAE's Adam steps are
    those it would take alone. Returned in x's units.
    """
    g, n_vec, n = x.shape
    mean = x.mean(1, keepdim=True)
    scale = (x - mean).square().sum(2).mean(1).sqrt().clamp_min(torch.finfo(x.dtype).tiny).view(g, 1, 1)
    xs = x / scale
    w_dec = torch.stack([F.normalize(torch.randn(features, n, generator=torch.Generator().manual_seed(s)), dim=1)
                         for s in seeds]).to(x.dtype)
    w_enc, b_dec = w_dec.transpose(1, 2).clone(), (mean / scale).squeeze(1)
    sae = {"w_enc": w_enc, "b_enc": -torch.bmm(b_dec.unsqueeze(1), w_enc)[:, 0], "w_dec": w_dec, "b_dec": b_dec}
    for p in sae.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(sae.values(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(n_vec, (min(batch, n_vec),), generator=gen)
            opt.zero_grad(set_to_none=True)
            sae_loss(sae, xs.index_select(1, idx), l1).sum().backward()
            opt.step()
    s = scale.view(g, 1)
    return {"w_enc": sae["w_enc"].detach() / scale, "b_enc": sae["b_enc"].detach(),
            "w_dec": sae["w_dec"].detach() * scale, "b_dec": sae["b_dec"].detach() * s}


def feature_scales(sae: SAE, x: Tensor) -> Tensor:
    """theta [G, F]: each feature's mean non-zero activation on x [G, N, n] (1 where it never fires)."""
    f = encode(sae, x)
    fired = (f > 0).sum(1)
    return torch.where(fired > 0, f.sum(1) / fired.clamp_min(1), torch.ones_like(f[:, 0]))


def fold(sae: SAE, theta: Tensor) -> SAE:
    """The same SAE with each feature in units of theta [G, F]: W_enc / theta, b_enc / theta, theta W_dec."""
    return {"w_enc": sae["w_enc"] / theta.unsqueeze(1), "b_enc": sae["b_enc"] / theta,
            "w_dec": sae["w_dec"] * theta.unsqueeze(2), "b_dec": sae["b_dec"]}


def match_features(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """pi [K, F] minimising sum_i C[i, pi(i)] with C [K, F, F] the MSE between rows of source and
    target [K, F, n] (C_ij = mean_k (source_ik - target_jk)^2, float64): one LAP per k. Returns (pi, C)."""
    cost = torch.cdist(source.double(), target.double(), compute_mode="donot_use_mm_for_euclid_dist")
    cost = cost.square() / source.shape[2]
    return linear_assignment(-cost), cost


def explained_variance(y: Tensor, y_hat: Tensor) -> Tensor:
    """[G]: 1 - sum ||y - y_hat||^2 / sum ||y - mean y||^2 over the vectors of y [G, N, n] (NaN if y is constant)."""
    y, y_hat = y.double(), y_hat.double()
    total = (y - y.mean(1, keepdim=True)).square().sum((1, 2))
    ev = 1 - (y - y_hat).square().sum((1, 2)) / total
    return torch.where(total > 0, ev, torch.full_like(ev, math.nan))


def _transport(model: nn.Module, names: list[str], params: dict[str, Tensor], layer: int, base: Tensor,
               d: Tensor) -> Tensor:
    """T(d) = g(base + d) - g(base) [M, F, n] for an MLP, g the modules after hidden layer ``layer`` up
    to the next one, with each model's weights; base [M, n], d [M, F, n]."""
    children = list(model.named_children())
    order = [name for name, _ in children]
    h = torch.cat([base.unsqueeze(1), base.unsqueeze(1) + d], 1)
    for name, m in children[order.index(names[layer]) + 1:order.index(names[layer + 1]) + 1]:
        h = run_module(name, m, params, h)
    return h[:, 1:] - h[:, :1]


def match_layers(model: nn.Module, kind: str, names: list[str], params: dict[str, Tensor], folded: SAE
                 ) -> tuple[Tensor, Tensor]:
    """Features of each layer l matched to layer l + 1 for M models with folded SAEs [M, L, ...]:
    (pi [M, L - 1, F], feature i of l <-> feature pi(i) of l + 1; match_mse [M, L - 1]) (module docstring)."""
    m, n_layers = folded["w_dec"].shape[:2]
    d_src, d_dst = folded["w_dec"][:, :-1], folded["w_dec"][:, 1:]
    if kind == "mlp":
        d_src = torch.stack([_transport(model, names, params, i, folded["b_dec"][:, i], d_src[:, i])
                             for i in range(n_layers - 1)], 1)
    perm, cost = match_features(d_src.flatten(0, 1), d_dst.flatten(0, 1))
    chosen = cost.gather(2, perm.unsqueeze(2)).squeeze(2).mean(1)
    mse = chosen / d_dst.flatten(0, 1).double().square().mean((1, 2))
    return perm.view(m, n_layers - 1, -1), mse.view(m, n_layers - 1)


def approximation_ev(folded: SAE, perm: Tensor, x: Tensor) -> Tensor:
    """match_ev [M, L - 1]: EV of layer l + 1's hidden states x[:, l + 1] rebuilt from layer l's folded
    activations through the folded decoders of layer l + 1's matched features; x [M, L, N, n],
    perm [M, L - 1, F] (``match_layers``)."""
    m, n_layers, _, width = x.shape
    f = encode({k: v[:, :-1].flatten(0, 1) for k, v in folded.items()}, x[:, :-1].flatten(0, 1))
    index = perm.flatten(0, 1).unsqueeze(2).expand(-1, -1, width)
    target = {"w_dec": folded["w_dec"][:, 1:].flatten(0, 1).gather(1, index),
              "b_dec": folded["b_dec"][:, 1:].flatten(0, 1)}
    return explained_variance(x[:, 1:].flatten(0, 1), decode(target, f)).view(m, n_layers - 1)


@torch.no_grad()
def sae_match(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x_train: Tensor,
              x_test: Tensor, expansion: int = 2, steps: int = 300, l1: float = 0.1, probe: int = 1024
              ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """SAE Match (module docstring) of M stacked models, in eval mode: ({column: [M]}, rows of the
    ``sae`` table without model_id, each with ``index`` into the M models)."""
    kind, names = hidden_layers(model)
    with mode(model, train=False):
        train = hidden_states(model, names, params, buffers, x_train, probe)
        test = hidden_states(model, names, params, buffers, x_test, probe)
        m, n_layers, _, width = train.shape
        sae = train_saes(train.flatten(0, 1), expansion * width, steps, l1, seeds=list(range(n_layers)) * m)
        folded = fold(sae, feature_scales(sae, train.flatten(0, 1)))
        f = encode(folded, test.flatten(0, 1))
        recon = explained_variance(test.flatten(0, 1), decode(folded, f)).view(m, n_layers)
        l0 = (f > 0).sum(2).double().mean(1).view(m, n_layers)
        folded = {k: v.unflatten(0, (m, n_layers)) for k, v in folded.items()}
        perm, mse = match_layers(model, kind, names, params, folded)
    match_ev = approximation_ev(folded, perm, test)
    unmatched = approximation_ev(folded, torch.arange(perm.shape[2]).expand_as(perm), test)
    rows = [{"index": i, "layer_pair": f"{p}->{p + 1}", "source": names[p], "target": names[p + 1],
             "match_ev": float(match_ev[i, p]), "match_ev_unmatched": float(unmatched[i, p]),
             "match_mse": float(mse[i, p]), "recon_ev_source": float(recon[i, p]),
             "recon_ev_target": float(recon[i, p + 1])}
            for i in range(m) for p in range(n_layers - 1)]
    mean = lambda t: np.nanmean(t.numpy(), axis=1)  # noqa: E731
    return {"sae.match_ev_mean": mean(match_ev), "sae.match_mse_mean": mean(mse),
            "sae.recon_ev_mean": mean(recon), "sae.l0_mean": mean(l0)}, rows


def compute(pop: Population, spec) -> Measured:
    if not len(pop.healthy):
        return Measured(per_model={c: np.full(pop.m, np.nan) for c in METRIC.columns})
    params, buffers = pop.final
    dtype = next(iter(params.values())).dtype

    def inputs(x: np.ndarray) -> Tensor:
        x = torch.as_tensor(x)
        return x.to(dtype) if x.is_floating_point() else x

    x_test = pop.data.x_test if len(pop.data.x_test) else pop.data.x_train
    columns, rows = sae_match(pop.model, params, buffers, inputs(pop.data.x_train), inputs(x_test),
                              spec.sae_expansion, spec.sae_steps, spec.sae_l1, spec.sae_probe)
    table = pd.DataFrame(rows)
    table.insert(0, "model_id", [pop.model_ids[pop.healthy[i]] for i in table.pop("index")])
    return Measured(per_model={c: pop.spread(v) for c, v in columns.items()}, tables={"sae": table})


METRIC = Metric(
    name="sae_match",
    about="SAE Match (Balagansky et al. 2025): per-layer sparse autoencoders, features matched across adjacent "
          "layers by folded-decoder MSE",
    applies_to="layer",
    columns={
        "sae.match_ev_mean": "explained variance of layer l+1's hidden states rebuilt from layer l's SAE features "
                             "through the matched features of layer l+1's SAE, mean over layer pairs",
        "sae.match_mse_mean": "MSE of the matched folded decoders relative to their mean square (0: same, 2: "
                              "unrelated), mean over layer pairs",
        "sae.recon_ev_mean": "explained variance of each hidden layer's own SAE reconstruction, mean over layers",
        "sae.l0_mean": "active SAE features per hidden-state vector, mean over layers",
    },
    compute=compute,
    protocol="opt-in; ReLU SAEs with 2 x width features, 300 Adam steps, L1 0.1, 1024 probe vectors; the "
             "JumpReLU threshold folding of the paper replaced by each feature's mean active value",
    switch="sae_match",
    options={
        "sae_match": Option(False, "train per-layer sparse autoencoders and match their features across layers "
                                   "(sae.*; trains, so opt-in)"),
        "sae_expansion": Option(2, "SAE features per hidden unit (or stream dimension) of a layer", range="[1, 64]"),
        "sae_steps": Option(300, "Adam steps of the SAEs", range="[1, 100000]"),
        "sae_l1": Option(0.1, "L1 weight of the SAE loss (activations scaled to unit variance)", range="[0, 100]"),
        "sae_probe": Option(1024, "hidden-state vectors the SAEs train on (training inputs) and are scored on "
                                  "(test inputs)", range="[16, 1000000]"),
    },
    tables={"sae": ["model_id", "layer_pair"]},
)
