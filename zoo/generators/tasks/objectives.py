"""Training objectives per task kind, all per model: losses [M] from population outputs.

classification: mean cross-entropy, accuracy. regression: mean squared error. pinn: physics
residual + initial and boundary conditions of the 1-D convection equation, with the relative L2
error against the analytic solution as the test error (Krishnapriyan et al. 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ... import kernels as zk
from .base import TaskData


def cross_entropy_per_model(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[M, B, C] logits, [M, B] labels -> [M, B] losses."""
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), y.reshape(m * b), reduction="none").view(m, b)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over samples, summed in float64 so the result does not depend on the thread count."""
    v = values.double()
    if weight is None:
        return v.mean(1).to(values.dtype)
    w = weight.double()
    return ((v * w).sum(1) / w.sum(1)).to(values.dtype)


class Classification:
    metrics = ("loss", "acc")

    def batch_loss(self, forward, params, buffers, xb, yb):
        """Per-model mean cross-entropy through the kernels dispatcher (fused Triton on CUDA)."""
        return zk.population_cross_entropy(forward(params, buffers, xb), yb)

    def sample_metrics(self, forward, params, buffers, xb, yb) -> dict[str, torch.Tensor]:
        logits = forward(params, buffers, xb)
        return {"loss": cross_entropy_per_model(logits, yb), "acc": (logits.argmax(-1) == yb).to(logits.dtype)}

    def reduce(self, per_sample: dict, weight, split: str) -> dict[str, torch.Tensor]:
        return {k: _weighted_mean(v, weight) for k, v in per_sample.items()}


class Regression:
    metrics = ("loss",)

    def batch_loss(self, forward, params, buffers, xb, yb):
        return (forward(params, buffers, xb) - yb).pow(2).flatten(2).mean(2).mean(1)

    def sample_metrics(self, forward, params, buffers, xb, yb):
        return {"loss": (forward(params, buffers, xb) - yb).pow(2).flatten(2).mean(2)}

    def reduce(self, per_sample, weight, split):
        return {k: _weighted_mean(v, weight) for k, v in per_sample.items()}


class Convection:
    """u_t + beta u_x = 0 on x in [0, 2pi), t in [0, 1], u(x, 0) = sin x, periodic in x.

    Inputs are (x, t) pairs; the model outputs u. The loss is the mean squared residual on the
    collocation batch + the initial-condition and periodic-boundary errors on fixed point sets.
    """

    metrics = ("loss", "rel_l2")

    def __init__(self, data: TaskData):
        self.beta = float(data.extras["beta"])
        self.x0 = torch.as_tensor(data.extras["ic_points"])  # [N0, 2] with t = 0
        self.tb = torch.as_tensor(data.extras["bc_times"])  # [Nb]

    def _residual(self, forward, params, buffers, xb):
        xb = xb.detach().requires_grad_(True)
        u = forward(params, buffers, xb)  # [M, B, 1]
        (du,) = torch.autograd.grad(u.sum(), xb, create_graph=True)  # samples are independent
        return du[..., 1] + self.beta * du[..., 0]

    def batch_loss(self, forward, params, buffers, xb, yb):
        m = xb.shape[0]
        x0 = self.x0.to(xb.dtype).expand(m, -1, -1)
        ic = (forward(params, buffers, x0)[..., 0] - torch.sin(x0[..., 0])).pow(2).mean(1)
        tb = self.tb.to(xb.dtype)
        left = torch.stack([torch.zeros_like(tb), tb], 1).expand(m, -1, -1)
        right = torch.stack([torch.full_like(tb, 2 * math.pi), tb], 1).expand(m, -1, -1)
        bc = (forward(params, buffers, left) - forward(params, buffers, right)).pow(2).mean((1, 2))
        return self._residual(forward, params, buffers, xb).pow(2).mean(1) + ic + bc

    def sample_metrics(self, forward, params, buffers, xb, yb):
        with torch.enable_grad():
            res = self._residual(forward, params, buffers, xb).detach()
        u = forward(params, buffers, xb)[..., 0].detach()
        return {"loss": res.pow(2), "sq_err": (u - yb).pow(2), "sq_ref": yb.pow(2).expand_as(u)}

    def reduce(self, per_sample, weight, split):
        out = {"loss": _weighted_mean(per_sample["loss"], weight)}
        if split == "test":  # training points are collocation points: no reference solution there
            err, ref = per_sample["sq_err"].double().sum(1), per_sample["sq_ref"].double().sum(1)
            out["rel_l2"] = (err / ref).sqrt().to(per_sample["sq_err"].dtype)
        return out


def objective_for(data: TaskData):
    if data.kind == "classification":
        return Classification()
    if data.kind == "regression":
        return Regression()
    if data.kind == "pinn":
        return Convection(data)
    raise ValueError(f"unknown task kind {data.kind!r}")
