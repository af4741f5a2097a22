"""Embedded tasks made locally, no download: scikit-learn digits, modular arithmetic (the
grokking task), a teacher-student regression, and the 1-D convection PDE for PINNs."""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Task, TaskData, fixed


def _split(n: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    if n_train + n_test > n:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {n} samples of the task")
    return perm[:n_train], perm[n_train:n_train + n_test]


def digits(n_train: int, n_test: int, data_seed: int, **_) -> TaskData:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, scaled to [0, 1], (1, 8, 8)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError("the digits task needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    tr, te = _split(len(y), n_train, n_test, data_seed)
    return TaskData("digits", x[tr], y[tr], x[te], y[te], n_classes=10)


OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * np.array([pow(int(v), p - 2, p) for v in b])) % p,  # b != 0, p prime
}


def modular(n_train: int, n_test: int, data_seed: int, modulus: int = 97, operation: str = "add",
            **_) -> TaskData:
    """All pairs (a, b) of Z_p as token sequences [a, b, '='] labelled a op b mod p (Power et al.).

    Tokens 0..p-1 are residues and p is '='; n_train pairs train, the next n_test pairs test.
    """
    p = modulus
    a, b = np.meshgrid(np.arange(p), np.arange(1 if operation == "div" else 0, p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    y = OPERATIONS[operation](a, b, p).astype(np.int64)
    x = np.stack([a, b, np.full_like(a, p)], 1).astype(np.int64)
    tr, te = _split(len(y), n_train, n_test, data_seed)
    return TaskData("modular", x[tr], y[tr], x[te], y[te], n_classes=p, extras={"vocab_size": p + 1})


def teacher_student(n_train: int, n_test: int, data_seed: int, input_dim: int = 16, teacher_width: int = 32,
                    noise: float = 0.1, **_) -> TaskData:
    """y = teacher(x) + noise with a random two-layer tanh teacher; x ~ N(0, I)."""
    g = torch.Generator().manual_seed(data_seed)
    w1 = torch.randn(input_dim, teacher_width, generator=g) / math.sqrt(input_dim)
    w2 = torch.randn(teacher_width, 1, generator=g) / math.sqrt(teacher_width)
    x = torch.randn(n_train + n_test, input_dim, generator=g)
    y = torch.tanh(x @ w1) @ w2
    y_train = y[:n_train] + noise * torch.randn(n_train, 1, generator=g)
    return TaskData("teacher_student", x[:n_train].numpy(), y_train.numpy(), x[n_train:].numpy(),
                    y[n_train:].numpy(), n_classes=1, kind="regression")


def convection(n_train: int, n_test: int, data_seed: int, beta: float = 1.0, **_) -> TaskData:
    """u_t + beta u_x = 0 on [0, 2pi) x [0, 1], u(x, 0) = sin x; exact u = sin(x - beta t).

    Training inputs are random collocation points (x, t); the test set is a regular grid of
    about n_test points with the exact solution as target; initial-condition points (t = 0)
    and boundary times are fixed sets used by the physics loss.
    """
    rng = np.random.default_rng(data_seed)
    xc = np.stack([rng.uniform(0, 2 * np.pi, n_train), rng.uniform(0, 1, n_train)], 1).astype(np.float32)
    side = max(2, int(round(math.sqrt(n_test))))
    gx, gt = np.meshgrid(np.linspace(0, 2 * np.pi, side, endpoint=False), np.linspace(0, 1, side), indexing="ij")
    x_test = np.stack([gx.reshape(-1), gt.reshape(-1)], 1).astype(np.float32)
    u = np.sin(x_test[:, 0] - beta * x_test[:, 1]).astype(np.float32)
    ic = np.stack([np.linspace(0, 2 * np.pi, 128, endpoint=False), np.zeros(128)], 1).astype(np.float32)
    return TaskData("convection", xc, np.zeros(n_train, np.float32), x_test, u, n_classes=1, kind="pinn",
                    extras={"beta": beta, "ic_points": ic, "bc_times": np.linspace(0, 1, 64, dtype=np.float32)})


def _pairs(config: dict) -> int:
    """The (a, b) pairs of Z_p the modular task has (b = 0 has no inverse under div)."""
    p = config["task.modulus"]
    return p * (p - 1 if config["task.operation"] == "div" else p)


def _local(make):
    """``Task.load`` of a task made locally: the data root is not needed."""
    return lambda n_train, n_test, seed, root, **options: make(n_train, n_test, seed, **options)


TASKS = (
    Task("digits", "classification", load=_local(digits), shape=fixed((1, 8, 8), 10), samples=lambda c: 1797),
    Task("modular", "classification", load=_local(modular), shape=lambda c: ((3,), c["task.modulus"],
                                                                             c["task.modulus"] + 1),
         samples=_pairs, options=("modulus", "operation")),
    Task("teacher_student", "regression", load=_local(teacher_student),
         shape=lambda c: ((c["task.input_dim"],), 1, None), options=("input_dim",)),
    Task("convection", kind="pinn", load=_local(convection), shape=fixed((2,), 1), options=("beta",)),
)
