"""``population_linear`` and ``population_cross_entropy``: one launch for a whole population of
small layers.

    population_linear:        y[m] = act(x[m] @ W[m]^T + b[m])      x [M, B, in], W [M, out, in]
    population_cross_entropy: L[m] = mean_b (logsumexp_c z[m, b, :] - z[m, b, y[m, b]])   z [M, B, C]

The references are ``torch.baddbmm`` + activation and ``F.cross_entropy`` on the flattened
[M*B, C] logits with a per-model mean.

When it pays: a population of 64 MLPs of width 64 at batch 64 is 64 GEMMs of 64x64x64, 34 MFLOP
each step — microseconds of tensor-core work, so the step is bound by launch count and by the
round trips of intermediate tensors, not by FLOPs. ``baddbmm`` already batches the GEMMs; the
kernel additionally fuses the activation (saving a read+write of the [M, B, out] activations per
layer, i.e. half the layer's memory traffic) and the cross-entropy kernel fuses
log-softmax + gather + mean (one read of the logits instead of ~4 passes, and no [M, B, C]
log-probability tensor kept for backward: only the per-row logsumexp, [M, B]). Expect gains only
on a GPU and only for small layers; with width >= 512 the GEMM dominates and cuBLAS should win or
tie (reasoning, not yet measured on a GPU: benchmarks/kernels.py reports it when CUDA is present).

Gradients: ``PopulationLinear`` backward uses torch.bmm (dx = g W, dW = g^T x, db = sum_b g with
g masked by y > 0 for relu); ``PopulationCrossEntropy`` backward is a Triton kernel
(softmax(z) - onehot(y)) * dL[m] / B from the saved logsumexp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import HAS_TRITON, cdiv, dot_flags, gemm_blocks, interpreting, jit, tl

ACTIVATIONS = {"none": 0, "relu": 1}


def _check_linear(x, weight, bias, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be [M, out, in], got {tuple(weight.shape)}")
    m, out, fan_in = weight.shape
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(m, -1, -1)
    if x.dim() != 3 or x.shape[0] != m or x.shape[2] != fan_in:
        raise ValueError(f"x must be [M={m}, B, in={fan_in}] or [B, in], got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (m, out):
        raise ValueError(f"bias must be [M={m}, out={out}], got {tuple(bias.shape)}")
    return x


def population_linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            activation: str = "none") -> torch.Tensor:
    """Reference: act(baddbmm(b, x, W^T)). x [M, B, in] (or [B, in], shared); W [M, out, in];
    b [M, out] or None -> [M, B, out]."""
    x = _check_linear(x, weight, bias, activation)
    wt = weight.transpose(1, 2)
    y = torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)
    return torch.relu(y) if activation == "relu" else y


def population_cross_entropy_torch(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference: per-model mean cross-entropy, logits [M, B, C], labels [M, B] (int) -> [M], in
    float32 (float64 for float64 logits), as torch's autocast computes a cross-entropy."""
    m, b, c = logits.shape
    loss = F.cross_entropy(logits.reshape(m * b, c).to(_loss_dtype(logits)), labels.reshape(m * b),
                           reduction="none")
    return loss.reshape(m, b).mean(1)


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


if HAS_TRITON:

    def _population_linear_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        B, OUT, IN,
        sxm, sxb, sxi,
        swm, swo, swi,
        sbm, sbo,
        sym, syb, syo,
        ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        m = tl.program_id(1)
        n_tiles_o = tl.cdiv(OUT, BN)
        pm = pid // n_tiles_o
        pn = pid % n_tiles_o
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        m_ok = rm < B
        n_ok = rn < OUT
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, IN, BK):
            rk = k0 + tl.arange(0, BK)
            k_ok = rk < IN
            a = tl.load(x_ptr + m * sxm + rm[:, None] * sxb + rk[None, :] * sxi,
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + m * swm + rn[None, :] * swo + rk[:, None] * swi,
                        mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            if DOT_FP32:
                if ALLOW_TF32:
                    acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="tf32")
                else:
                    acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w.to(a.dtype), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + m * sbm + rn * sbo, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:
            acc = tl.maximum(acc, 0.0)
        tl.store(y_ptr + m * sym + rm[:, None] * syb + rn[None, :] * syo, acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    def _ce_forward_kernel(
        z_ptr, lab_ptr, loss_ptr, lse_ptr,
        ROWS, C, szr, szc,
        BR: tl.constexpr, BC: tl.constexpr,
    ):
        # rows are the flattened (model, sample) pairs; online logsumexp over class blocks
        rr = tl.program_id(0) * BR + tl.arange(0, BR)
        r_ok = rr < ROWS
        mx = tl.full((BR,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BR,), dtype=tl.float32)
        for c0 in range(0, C, BC):
            rc = c0 + tl.arange(0, BC)
            z = tl.load(z_ptr + rr[:, None] * szr + rc[None, :] * szc,
                        mask=r_ok[:, None] & (rc[None, :] < C), other=float("-inf")).to(tl.float32)
            new_mx = tl.maximum(mx, tl.max(z, 1))
            safe = tl.where(new_mx == float("-inf"), 0.0, new_mx)
            s = s * tl.exp(mx - safe) + tl.sum(tl.exp(z - safe[:, None]), 1)
            mx = new_mx
        lse = mx + tl.log(tl.where(r_ok, s, 1.0))
        lab = tl.load(lab_ptr + rr, mask=r_ok, other=0)
        z_y = tl.load(z_ptr + rr * szr + lab * szc, mask=r_ok, other=0.0).to(tl.float32)
        tl.store(loss_ptr + rr, lse - z_y, mask=r_ok)
        tl.store(lse_ptr + rr, lse, mask=r_ok)

    def _ce_backward_kernel(
        z_ptr, lab_ptr, lse_ptr, g_ptr, dz_ptr,
        ROWS, C, B, szr, szc, sdr, sdc,
        BR: tl.constexpr, BC: tl.constexpr,
    ):
        rr = tl.program_id(0) * BR + tl.arange(0, BR)
        r_ok = rr < ROWS
        lse = tl.load(lse_ptr + rr, mask=r_ok, other=0.0)
        lab = tl.load(lab_ptr + rr, mask=r_ok, other=-1)
        # dL[m]/B for the model m = row // B
        scale = tl.load(g_ptr + rr // B, mask=r_ok, other=0.0).to(tl.float32) / B
        for c0 in range(0, C, BC):
            rc = c0 + tl.arange(0, BC)
            mask = r_ok[:, None] & (rc[None, :] < C)
            z = tl.load(z_ptr + rr[:, None] * szr + rc[None, :] * szc, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(z - lse[:, None])
            p = tl.where(rc[None, :] == lab[:, None], p - 1.0, p)
            tl.store(dz_ptr + rr[:, None] * sdr + rc[None, :] * sdc,
                     (p * scale[:, None]).to(dz_ptr.dtype.element_ty), mask=mask)


def population_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             activation: str = "none") -> torch.Tensor:
    """Triton forward (no autograd graph); same contract as ``population_linear_torch``."""
    x = _check_linear(x, weight, bias, activation)
    m, out, fan_in = weight.shape
    b_rows = x.shape[1]
    y = torch.empty(m, b_rows, out, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bm, bn, bk = gemm_blocks(b_rows, out, fan_in)
    dot_fp32, tf32 = dot_flags(x.dtype)
    bb = bias if bias is not None else weight.new_zeros(m, out)
    grid = (cdiv(b_rows, bm) * cdiv(out, bn), m)
    jit(_population_linear_kernel)[grid](
        x, weight, bb, y, b_rows, out, fan_in,
        *x.stride(), *weight.stride(), *bb.stride(), *y.stride(),
        ACT=ACTIVATIONS[activation], HAS_BIAS=bias is not None, DOT_FP32=dot_fp32, ALLOW_TF32=tf32,
        BM=bm, BN=bn, BK=bk,
    )
    return y


class PopulationLinear(torch.autograd.Function):
    """Triton forward; backward with torch.bmm: g = dL/dy (times 1[y > 0] for relu),
    dx = g @ W, dW = g^T @ x, db = sum_b g."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        x3 = _check_linear(x, weight, bias, activation)
        y = population_linear_triton(x3, weight, bias, activation)
        ctx.activation = activation
        ctx.shared_x = x.dim() == 2
        ctx.save_for_backward(x3, weight, y)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        g = grad_y * (y > 0) if ctx.activation == "relu" else grad_y
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(g, weight.to(g.dtype)).to(x.dtype)
            if ctx.shared_x:
                dx = dx.sum(0)
        if ctx.needs_input_grad[1]:
            dw = torch.bmm(g.transpose(1, 2), x.to(g.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(1).to(weight.dtype)
        return dx, dw, db, None


def _ce_blocks(c: int) -> tuple[int, int]:
    bc = min(1024, max(16, 1 << max(0, (c - 1).bit_length())))
    br = 16 if interpreting() else max(1, min(64, 4096 // bc))
    return br, bc


def _check_ce(logits, labels):
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [M, B, C] and labels [M, B], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")


class PopulationCrossEntropy(torch.autograd.Function):
    """Fused per-model mean softmax cross-entropy; forward and backward are Triton kernels.
    Saves only the per-row logsumexp ([M*B] floats) besides the inputs."""

    @staticmethod
    def forward(ctx, logits, labels):
        _check_ce(logits, labels)
        m, b, c = logits.shape
        z = logits.reshape(m * b, c)
        lab = labels.reshape(m * b).to(torch.int64).contiguous()
        loss = torch.empty(m * b, device=logits.device, dtype=torch.float32)
        lse = torch.empty_like(loss)
        br, bc = _ce_blocks(c)
        if m * b > 0:
            jit(_ce_forward_kernel)[(cdiv(m * b, br),)](z, lab, loss, lse, m * b, c, *z.stride(),
                                                         BR=br, BC=bc)
        ctx.save_for_backward(z, lab, lse)
        ctx.shape = (m, b, c)
        return loss.reshape(m, b).mean(1).to(_loss_dtype(logits))

    @staticmethod
    def backward(ctx, grad_loss):
        z, lab, lse = ctx.saved_tensors
        m, b, c = ctx.shape
        dz = torch.empty_like(z)
        br, bc = _ce_blocks(c)
        g = grad_loss.contiguous()
        if m * b > 0:
            jit(_ce_backward_kernel)[(cdiv(m * b, br),)](z, lab, lse, g, dz, m * b, c, b, *z.stride(),
                                                          *dz.stride(), BR=br, BC=bc)
        return dz.reshape(m, b, c), None
