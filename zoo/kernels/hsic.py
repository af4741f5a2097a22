"""``gram_hsic``: linear CKA for many model pairs without n x n Gram matrices.

For features X_m [n, d] of M models on the same n probe inputs, column-centred (Xc = X - mean_n X),
the linear HSIC (Gretton et al. 2005, biased estimator, with linear kernels K = X X^T, L = Y Y^T and
H = I - 11^T/n) is

    HSIC(X, Y) = tr(K H L H) / (n-1)^2 = ||Yc^T Xc||_F^2 / (n-1)^2,

and linear CKA (Kornblith et al. 2019) is CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))
= ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

The reference (``gram_hsic_torch``) forms the [d, d] cross products with ``torch.bmm`` per pair
(materialising [Q, d, d], 1024 pairs at a time) and reduces. The Triton kernel computes each
(d-tile x d-tile) block of Xc_i^T Xc_j by streaming the n axis, squares and sums it in registers,
and writes one partial sum per block; the self terms are the pairs (m, m) in the same launch.

When it pays: the feature route costs 2·n·d^2 FLOPs per pair and reads 2·n·d values, against
2·n^2·d per model plus n^2 per pair for the Gram route (n x n matrices, O(M n^2) memory). With
logits (d = 10) on n = 1000 probes, all 2016 pairs of 64 models, the feature route is 0.4 GFLOP
against 5.3 GFLOP and never allocates the 4 MB-per-model Gram matrices; for hidden features with
d > n the Gram route is cheaper and the torch path picks it. The kernel's gain over bmm is only
the [Q, d, d] round trip and the gathered copies of X_i, X_j per pair: worth it for many pairs of
wide features (2016 pairs at d = 512 is 2 GB of cross products); for d = 10 both are bound by
reading the features.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, cdiv, dot_flags, interpreting, jit, tl


def _check(features: torch.Tensor, pairs: torch.Tensor):
    if features.dim() != 3:
        raise ValueError(f"features must be [M, n, d], got {tuple(features.shape)}")
    pairs = torch.as_tensor(pairs, device=features.device).to(torch.int64)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [Q, 2] model indices, got {tuple(pairs.shape)}")
    m = features.shape[0]
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= m):
        raise ValueError(f"pairs index models 0..{m - 1}, got values in [{pairs.min()}, {pairs.max()}]")
    return pairs


def _result(cross: torch.Tensor, self_: torch.Tensor, pairs: torch.Tensor, n: int) -> dict:
    norm = max(n - 1, 1) ** 2
    denom = torch.sqrt(self_[pairs[:, 0]] * self_[pairs[:, 1]])
    return {"cka": cross / denom, "hsic": cross / norm, "hsic_self": self_ / norm}


def gram_hsic_torch(features: torch.Tensor, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference linear CKA for pairs of models.

    features [M, n, d]; pairs [Q, 2] (int indices into M). Returns ``cka`` [Q], ``hsic`` [Q]
    (HSIC(X_i, X_j) with the 1/(n-1)^2 normalisation) and ``hsic_self`` [M] (HSIC(X_m, X_m)), float32
    (float64 for float64 input). Uses the [d, d] cross products when d <= n and the [n, n] centred
    Gram matrices otherwise (the same numbers; only the cost differs).
    """
    pairs = _check(features, pairs)
    x = features.float() if features.dtype != torch.float64 else features
    m, n, d = x.shape
    xc = x - x.mean(1, keepdim=True)
    if d <= n:
        self_ = torch.bmm(xc.transpose(1, 2), xc).square().sum((1, 2))
        cross = torch.cat([
            torch.bmm(xc[pc[:, 0]].transpose(1, 2), xc[pc[:, 1]]).square().sum((1, 2))
            for pc in pairs.split(1024)
        ]) if len(pairs) else x.new_zeros(0)
    else:
        gram = torch.bmm(xc, xc.transpose(1, 2))  # centred Gram matrices Kc = H K H, [M, n, n]
        self_ = gram.square().sum((1, 2))
        cross = (gram[pairs[:, 0]] * gram[pairs[:, 1]]).sum((1, 2)) if len(pairs) else x.new_zeros(0)
    return _result(cross, self_, pairs, n)


if HAS_TRITON:

    def _cross_sq_kernel(
        x_ptr, pi_ptr, pj_ptr, out_ptr,
        N, D, sxm, sxn, sxd, so_q,
        DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr,
        BA: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
    ):
        # out[q, tile] = sum over the (a, b) block of (Xc_i^T Xc_j)[a, b]^2
        q = tl.program_id(0)
        tile = tl.program_id(1)
        i = tl.load(pi_ptr + q)
        j = tl.load(pj_ptr + q)
        n_tiles_b = tl.cdiv(D, BB)
        ra = (tile // n_tiles_b) * BA + tl.arange(0, BA)
        rb = (tile % n_tiles_b) * BB + tl.arange(0, BB)
        a_ok = ra < D
        b_ok = rb < D
        acc = tl.zeros((BA, BB), dtype=tl.float32)
        for n0 in range(0, N, BN):
            rn = n0 + tl.arange(0, BN)
            n_ok = rn < N
            xi = tl.load(x_ptr + i * sxm + rn[None, :] * sxn + ra[:, None] * sxd,
                         mask=a_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)  # [BA, BN]
            xj = tl.load(x_ptr + j * sxm + rn[:, None] * sxn + rb[None, :] * sxd,
                         mask=n_ok[:, None] & b_ok[None, :], other=0.0).to(tl.float32)  # [BN, BB]
            if ALLOW_TF32:
                acc = tl.dot(xi, xj, acc, input_precision="tf32")
            else:
                acc = tl.dot(xi, xj, acc, input_precision="ieee")
        tl.store(out_ptr + q * so_q + tile, tl.sum(tl.sum(acc * acc, 1), 0))


def gram_hsic_triton(features: torch.Tensor, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Triton linear CKA (feature route for any d); same contract as ``gram_hsic_torch``."""
    pairs = _check(features, pairs)
    x = features.float() if features.dtype != torch.float64 else features
    m, n, d = x.shape
    xc = (x - x.mean(1, keepdim=True)).float().contiguous()
    ar = torch.arange(m, device=x.device)
    all_pairs = torch.cat([pairs, torch.stack([ar, ar], 1)])
    pi = all_pairs[:, 0].contiguous()
    pj = all_pairs[:, 1].contiguous()
    if interpreting():
        ba = bb = bn = 16
    else:
        ba = bb = max(16, min(64, 1 << max(0, (d - 1).bit_length())))
        bn = 32
    tiles = cdiv(d, ba) * cdiv(d, bb)
    partial = torch.zeros(len(all_pairs), tiles, device=x.device, dtype=torch.float32)
    if n and d:
        _, tf32 = dot_flags(torch.float32)
        jit(_cross_sq_kernel)[(len(all_pairs), tiles)](
            xc, pi, pj, partial, n, d, *xc.stride(), partial.stride(0),
            DOT_FP32=True, ALLOW_TF32=tf32, BA=ba, BB=bb, BN=bn,
        )
    sums = partial.to(x.dtype).sum(1)
    return _result(sums[: len(pairs)], sums[len(pairs):], pairs, n)
