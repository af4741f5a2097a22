"""``interp_linear``: a linear layer evaluated at many points of a weight-space path, for many pairs.

For P model pairs, K anchor tensors per pair (K=2: the endpoints of a straight line; K=3: the
endpoints and the bend of a quadratic Bezier curve) and T points on the path,

    W_p(t) = sum_k c_k(p, t) W_k[p],    b_p(t) = sum_k c_k(p, t) b_k[p],
    y[p, t] = act(x[p, t] @ W_p(t)^T + b_p(t))            x: [P, T, N, in] -> y: [P, T, N, out]

with c = ((1-t), t) for a line (``linear_coeffs``) and ((1-t)^2, 2t(1-t), t^2) for a Bezier curve
(``bezier_coeffs``), as in the mode-connectivity and LMC barrier scans.

The reference (``interp_linear_torch``) materialises W(t) for every (pair, point), [P, T, out, in],
then runs one ``torch.baddbmm`` and the activation. The Triton kernel mixes the K anchor tiles in
registers inside the GEMM K-loop, so W(t) never exists in memory, and fuses bias + activation into
the epilogue.

When it pays: the GEMM costs 2·P·T·N·in·out FLOPs. The reference adds a pass that reads K·P·out·in
and writes P·T·out·in weights (then reads them again in the GEMM) plus one extra pass over y for
the relu (baddbmm fuses the bias, not the activation). For 64 pairs x 11 points x width 64 that is
~12 MB of weights written and read, and 2 x 180 MB of y read and written by the relu, against
5.8 GFLOP at N=1000: on a GPU the relu pass alone is comparable to the GEMM time at these small
widths, so fusing it is the main saving; the weight round trip matters most when N is small (few
probe samples per point), where it is of the same size as x itself. The price is re-mixing the
anchors in every row tile: K·in·out FMAs per BM rows, a K/BM fraction of the GEMM. Not measured on
a GPU yet (benchmarks/kernels.py reports it when CUDA is present); on CPU there is no Triton and
the reference runs (64x11x1000x64: 0.32 s on one core of the dev machine).

Gradients: ``InterpLinear`` (autograd.Function) runs the kernel forward and a plain-torch backward
that never materialises W(t) either (K batched GEMMs over the anchors); it returns gradients for
x, the anchor weights and biases, and the coefficients.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, cdiv, dot_flags, gemm_blocks, jit, tl

ACTIVATIONS = {"none": 0, "relu": 1}


def _points(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def linear_coeffs(t: torch.Tensor) -> torch.Tensor:
    """[T] -> [T, 2]: coefficients ((1-t), t) of the straight line between two endpoints
    (float32, or t's dtype when t is float64)."""
    t = _points(t)
    return torch.stack([1 - t, t], dim=-1)


def bezier_coeffs(t: torch.Tensor) -> torch.Tensor:
    """[T] -> [T, 3]: quadratic Bezier coefficients ((1-t)^2, 2t(1-t), t^2) for (theta_0, bend,
    theta_1), as in Garipov et al. 2018 and the phase-transition zoo."""
    t = _points(t)
    return torch.stack([(1 - t) ** 2, 2 * t * (1 - t), t**2], dim=-1)


def _check(x, weights, biases, coeffs, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if weights.dim() != 4:
        raise ValueError(f"weights must be [K, P, out, in], got {tuple(weights.shape)}")
    k, p, out, fan_in = weights.shape
    if x.dim() != 4 or x.shape[0] != p or x.shape[3] != fan_in:
        raise ValueError(f"x must be [P={p}, T, N, in={fan_in}], got {tuple(x.shape)}")
    t = x.shape[1]
    if biases is not None and tuple(biases.shape) != (k, p, out):
        raise ValueError(f"biases must be [K={k}, P={p}, out={out}], got {tuple(biases.shape)}")
    if coeffs.dim() == 2:
        coeffs = coeffs.unsqueeze(0).expand(p, -1, -1)
    if tuple(coeffs.shape) != (p, t, k):
        raise ValueError(f"coeffs must be [T={t}, K={k}] or [P={p}, T, K], got {tuple(coeffs.shape)}")
    return coeffs


def interp_linear_torch(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor | None,
                        coeffs: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """Reference: materialise W(t) = sum_k c_k W_k, [P, T, out, in], then ``torch.baddbmm``.

    x [P, T, N, in]; weights [K, P, out, in]; biases [K, P, out] or None; coeffs [T, K] or [P, T, K];
    returns act(x @ W(t)^T + b(t)), [P, T, N, out], in x's dtype. Differentiable by autograd.
    """
    c = _check(x, weights, biases, coeffs, activation).to(weights.dtype)
    k, p, out, fan_in = weights.shape
    t, n = x.shape[1], x.shape[2]
    w = torch.einsum("ptk,kpoi->ptoi", c, weights).reshape(p * t, out, fan_in).to(x.dtype)
    if biases is None:
        b = x.new_zeros(p * t, 1, out)
    else:
        b = torch.einsum("ptk,kpo->pto", c, biases.to(weights.dtype)).reshape(p * t, 1, out).to(x.dtype)
    y = torch.baddbmm(b, x.reshape(p * t, n, fan_in), w.transpose(1, 2))
    if activation == "relu":
        y = torch.relu(y)
    return y.reshape(p, t, n, out)


if HAS_TRITON:

    def _interp_linear_kernel(
        x_ptr, w_ptr, b_ptr, c_ptr, y_ptr,
        T, N, OUT, IN,
        sxp, sxt, sxn, sxi,
        swk, swp, swo, swi,
        sbk, sbp, sbo,
        scp, sct, sck,
        syp, syt, syn, syo,
        K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
        DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        pt = tl.program_id(1)
        p = pt // T
        t = pt % T
        n_tiles_o = tl.cdiv(OUT, BN)
        pm = pid // n_tiles_o
        pn = pid % n_tiles_o
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        m_ok = rm < N
        n_ok = rn < OUT
        c0 = tl.load(c_ptr + p * scp + t * sct).to(tl.float32)
        c1 = tl.load(c_ptr + p * scp + t * sct + sck).to(tl.float32)
        c2 = 0.0
        if K == 3:
            c2 = tl.load(c_ptr + p * scp + t * sct + 2 * sck).to(tl.float32)
        x_base = x_ptr + p * sxp + t * sxt
        w_base = w_ptr + p * swp
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, IN, BK):
            rk = k0 + tl.arange(0, BK)
            k_ok = rk < IN
            a = tl.load(x_base + rm[:, None] * sxn + rk[None, :] * sxi,
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            # W tile as [BK, BN] (the transpose of W[out, in]); mix the anchors in fp32 registers
            w_off = rn[None, :] * swo + rk[:, None] * swi
            w_mask = n_ok[None, :] & k_ok[:, None]
            w = c0 * tl.load(w_base + w_off, mask=w_mask, other=0.0).to(tl.float32)
            w += c1 * tl.load(w_base + swk + w_off, mask=w_mask, other=0.0).to(tl.float32)
            if K == 3:
                w += c2 * tl.load(w_base + 2 * swk + w_off, mask=w_mask, other=0.0).to(tl.float32)
            if DOT_FP32:
                if ALLOW_TF32:
                    acc = tl.dot(a.to(tl.float32), w, acc, input_precision="tf32")
                else:
                    acc = tl.dot(a.to(tl.float32), w, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w.to(a.dtype), acc)
        if HAS_BIAS:
            b_base = b_ptr + p * sbp + rn * sbo
            bias = c0 * tl.load(b_base, mask=n_ok, other=0.0).to(tl.float32)
            bias += c1 * tl.load(b_base + sbk, mask=n_ok, other=0.0).to(tl.float32)
            if K == 3:
                bias += c2 * tl.load(b_base + 2 * sbk, mask=n_ok, other=0.0).to(tl.float32)
            acc += bias[None, :]
        if ACT == 1:
            acc = tl.maximum(acc, 0.0)
        y_ptrs = y_ptr + p * syp + t * syt + rm[:, None] * syn + rn[None, :] * syo
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def interp_linear_triton(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor | None,
                         coeffs: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """Triton forward (no autograd graph); same contract as ``interp_linear_torch``. K in {2, 3}."""
    c = _check(x, weights, biases, coeffs, activation).to(torch.float32)
    k, p, out, fan_in = weights.shape
    if k not in (2, 3):
        raise ValueError(f"the Triton kernel mixes K=2 or K=3 anchors, got K={k}")
    t, n = x.shape[1], x.shape[2]
    y = torch.empty(p, t, n, out, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bm, bn, bk = gemm_blocks(n, out, fan_in)
    dot_fp32, tf32 = dot_flags(x.dtype)
    b = biases if biases is not None else weights.new_zeros(k, p, out)
    grid = (cdiv(n, bm) * cdiv(out, bn), p * t)
    jit(_interp_linear_kernel)[grid](
        x, weights, b, c, y,
        t, n, out, fan_in,
        *x.stride(), *weights.stride(), *b.stride(), *c.stride(), *y.stride(),
        K=k, ACT=ACTIVATIONS[activation], HAS_BIAS=biases is not None,
        DOT_FP32=dot_fp32, ALLOW_TF32=tf32, BM=bm, BN=bn, BK=bk,
    )
    return y


class InterpLinear(torch.autograd.Function):
    """Triton forward, plain-torch backward that never materialises W(t).

    With g = dL/dy (masked by y > 0 for relu):
      dx[p,t]   = sum_k c[p,t,k] g[p,t] @ W_k[p]
      dW_k[p]   = sum_t c[p,t,k] g[p,t]^T @ x[p,t]
      db_k[p]   = sum_t c[p,t,k] sum_n g[p,t,n]
      dc[p,t,k] = <g[p,t], x[p,t] @ W_k[p]^T + b_k[p]> = <g[p,t] @ W_k[p], x[p,t]> + <sum_n g, b_k>
    """

    @staticmethod
    def forward(ctx, x, weights, biases, coeffs, activation):
        y = interp_linear_triton(x, weights, biases, coeffs, activation)
        ctx.activation = activation
        ctx.coeffs_shape = tuple(coeffs.shape)
        ctx.save_for_backward(x, weights, biases, coeffs, y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weights, biases, coeffs, y = ctx.saved_tensors
        k, p, out, fan_in = weights.shape
        t, n = x.shape[1], x.shape[2]
        c = (coeffs.unsqueeze(0).expand(p, -1, -1) if coeffs.dim() == 2 else coeffs).to(x.dtype)
        g = grad_y * (y > 0) if ctx.activation == "relu" else grad_y
        g_flat = g.reshape(p, t * n, out)
        x_flat = x.reshape(p, t * n, fan_in)
        need_x, need_w, need_b, need_c = ctx.needs_input_grad[:4]
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.empty_like(weights) if need_w else None
        db = None
        dc = torch.empty(p, t, k, dtype=x.dtype, device=x.device) if need_c else None
        g_sum = g.sum(2)  # [P, T, out]
        for i in range(k):
            ci = c[..., i]  # [P, T]
            if need_x or need_c:
                gw = torch.bmm(g_flat, weights[i].to(g.dtype)).reshape(p, t, n, fan_in)
                if need_x:
                    dx += ci[..., None, None] * gw
                if need_c:
                    dc[..., i] = (gw * x).sum((2, 3))
                    if biases is not None:
                        dc[..., i] += (g_sum * biases[i].to(g.dtype)[:, None, :]).sum(-1)
            if need_w:
                gc = (g * ci[..., None, None]).reshape(p, t * n, out)
                dw[i] = torch.bmm(gc.transpose(1, 2), x_flat).to(weights.dtype)
        if biases is not None and need_b:
            db = torch.einsum("ptk,pto->kpo", c, g_sum).to(biases.dtype)
        if dc is not None:
            if len(ctx.coeffs_shape) == 2:
                dc = dc.sum(0)
            dc = dc.to(coeffs.dtype)
        return dx, dw, db, dc, None
