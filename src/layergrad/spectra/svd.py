"""Singular values of per-example weight gradients, from their factors. Tensors only.

Conventions (n: examples in a batch, t: tokens, i: input features, o: output features).
A linear module computes ``y = x W^T`` with ``W`` of shape ``(o, i)``. For one example,
``X`` ``(t, i)`` holds the module's inputs and ``D`` ``(t, o)`` the loss gradients at its
outputs, over all ``t`` tokens of the example. The example's weight gradient is

    G = D^T X                                                    (o, i)

and ``rank(G) <= min(t, i, o)``. With thin QR factorisations ``X^T = Q_X R_X`` and
``D^T = Q_D R_D`` (``R_X``: ``(min(i, t), t)``), ``G = Q_D (R_D R_X^T) Q_X^T`` with orthonormal
columns in ``Q_D`` and ``Q_X``, so the singular values of ``G`` are those of the small core
``R_D R_X^T`` (``(min(o, t), min(i, t))``) — no ``(o, i)`` matrix is needed. When ``t`` is large
relative to ``i`` and ``o`` the core is as large as ``G`` and forming ``G`` is cheaper:
:mod:`.methods` picks one way per module and example by an operation count.

Batched functions take ``(n, t, ·)`` tensors in which padding rows are zero; zero rows add
nothing to ``G``, to its factors' cores, or to any statistic here.

The dense oracle (:func:`dense_svdvals`) is the obviously-correct slow twin; the tests hold
every fast path to it.
"""
from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------
# The oracle and the fast path
# ---------------------------------------------------------------------------------------


def dense_gradient(X: Tensor, D: Tensor) -> Tensor:
    """``G = D^T X``: ``(n, t, i), (n, t, o) -> (n, o, i)`` (or unbatched ``(t, ·) -> (o, i)``)."""
    return D.transpose(-1, -2) @ X


def dense_svdvals(X: Tensor, D: Tensor) -> Tensor:
    """Singular values of ``G = D^T X`` by forming ``G``: ``(n, min(o, i))``, descending."""
    return torch.linalg.svdvals(dense_gradient(X, D))


def r_factor(A: Tensor) -> Tensor:
    """``R`` of the thin QR of ``A^T``: ``(n, t, f) -> (n, min(f, t), t)`` with ``R^T R = A A^T``."""
    return torch.linalg.qr(A.transpose(-1, -2), mode="r").R


def core(R_X: Tensor, R_D: Tensor) -> Tensor:
    """The small core ``R_D R_X^T`` ``(n, min(o, t), min(i, t))`` whose singular values are G's."""
    return R_D @ R_X.transpose(-1, -2)


def factored_svdvals(X: Tensor, D: Tensor, R_X: Tensor | None = None) -> Tensor:
    """Nonzero-capable singular values of ``G = D^T X`` without forming ``G``: ``(n, min(o, i, t))``.

    ``R_X`` may be passed in when several modules share the input ``X`` (q, k, v; gate, up).
    """
    if R_X is None:
        R_X = r_factor(X)
    return torch.linalg.svdvals(core(R_X, r_factor(D)))


# ---------------------------------------------------------------------------------------
# The Gram path: squared singular values from a symmetric eigenproblem, one example at a time
# ---------------------------------------------------------------------------------------
#
# For one example (no padding rows), with K_X = X X^T and K_D = D D^T (t, t), the nonzero
# eigenvalues of these symmetric positive semi-definite matrices are the squared singular values
# of G = D^T X, so ``eigvalsh`` of any of them gives the spectrum (a symmetric tridiagonal
# reduction: cheaper than an SVD of the same size, and no float32 SVD of a t x t core is needed):
#
#   "token"    F^T K_D F   (t, t)            F F^T = K_X (a Cholesky factor, shared by q, k, v)
#   "out"      D^T K_X D   (o, o)            no factorisation at all (k, v of grouped-query attention)
#   "in"       X^T K_D X   (i, i)
#   "product"  G G^T or G^T G  (min(o, i))   long sequences: G itself is the smallest object
#
# Accuracy: an eigenvalue s_k^2 computed with unit roundoff u is off by about u * s_1^2, so s_k may be
# off by up to sqrt(u) * s_1. Everything here is therefore computed in float64 (GRAM_DTYPE) from the
# captured float32 (or bf16) X and D, where sqrt(u) ~ 1e-8: below the float32 rounding already in X and
# D, and more accurate than the float32 QR path (measured on SmolLM2's gradients: nuclear norms within
# 1e-9 of float64 QR, against 3e-7 for float32 QR). This is the path for float32 (or lower)
# statistics; float64 statistics keep the QR path, whose error is u * s_1, not sqrt(u) * s_1.
# Float32 Gram matrices are not enough: on the same gradients they were off by up to 1e-5 relative,
# with Cholesky breakdowns.
#
# Float32 routes (issue 16, item 3; BENCHMARKS.md, "Precision of float32 routes on real gradients";
# benchmarks/precision.py: SmolLM2 on GSM8K, layers 0, 15, 29 and the tied head, 132 cases, against float64
# svdvals of the dense G). The bar: every statistic within 1e-6 relative and every value within 1e-6 s_1,
# with the heavy work in float32.
#   * a squared matrix through float32 anywhere (the products, or the eigensolver alone) leaves
#     sqrt(u32) s_1 = 2.4e-4 s_1: measured 1e-4 to 4e-4 s_1 on the small values, nuclear norms to 3e-3,
#     effective ranks to 3e-2 (1e-1 on the tied head's token side, whose X X^T mixes two scales);
#   * Ritz values ||G^T v_k|| from float32 eigenvectors, even in float64: 3e-4 to 7e-4 s_1 (every
#     s_k < 2.4e-4 s_1 is in one cluster of width u32 s_1^2, whose float32 eigenvectors mix freely);
#   * unsquared float32 (QR core = the "factored" way, dense SVD): the float32 floor, ~10 u32 s_1, 6e-7 s_1
#     in the decoder layers and 1.5e-6 on the head, effective rank to 3.6e-6 (hundreds of exact zeros, from
#     repeated tokens, each carrying the floor);
#   * the same after merging repeated token rows exactly and refining the 16 largest values in float64
#     (float32_qr_svdvals below): 4.6e-7 s_1 and 4.6e-7 on every statistic over every module of the model
#     (976 cases). The one route that meets the bar: the opt-in RunConfig.gram_precision="float32-qr".
# Float32 Gram matrices stay out: the default remains float64 (GRAM_DTYPE), whose own effective ranks are off
# by up to 1.5e-6 from the same exact zeros (merging would bring that to 1.1e-7, but would change its numbers).

GRAM_DTYPE = torch.float64
GRAM_SIDES = ("token", "out", "in", "product")


def gram(A: Tensor, dtype: torch.dtype = GRAM_DTYPE, block: int = 1024) -> Tensor:
    """``A A^T``: ``(t, f) -> (t, t)`` in ``dtype``, converting ``block`` columns at a time (bounded memory).

    From :data:`SYMMETRIC_SPLIT` rows on, ``A`` is split into two row halves and only three of the
    four blocks are multiplied (the result is symmetric): three quarters of the operations.
    """
    t = A.shape[-2]
    h = t // 2 if t >= SYMMETRIC_SPLIT else t
    pairs = ((slice(0, h), slice(0, h)),) if h == t else ((slice(0, h), slice(0, h)), (slice(h, t), slice(0, h)), (slice(h, t), slice(h, t)))
    blocks: list[Tensor | None] = [None] * len(pairs)
    for c in range(0, A.shape[-1], block):
        Ac = A[:, c : c + block].to(dtype)
        for k, (rows, cols) in enumerate(pairs):
            a, b = Ac[rows], Ac[cols]
            blocks[k] = a @ b.mT if blocks[k] is None else blocks[k].addmm_(a, b.mT)
    if blocks[0] is None:  # no columns
        return A.new_zeros((t, t), dtype=dtype)
    if h == t:
        return blocks[0]
    k11, k21, k22 = blocks
    return torch.cat([torch.cat([k11, k21.mT], 1), torch.cat([k21, k22], 1)], 0)


SYMMETRIC_SPLIT = 256  # rows from which gram() multiplies three blocks instead of the whole product


def psd_factor(K: Tensor) -> tuple[Tensor, bool]:
    """``(F, lower)``: ``F`` ``(t, t)`` with ``F F^T = K`` for a symmetric positive semi-definite ``K``.

    The lower Cholesky factor (``lower=True``; backward stable whenever it completes:
    ``|F_ab|^2 <= K_aa``); where it breaks down on a singular ``K`` (repeated rows, e.g. repeated
    tokens in layer 0; more rows than features), eigenvectors scaled by the square roots of the
    eigenvalues clamped at 0 (``lower=False``).
    """
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        return L, True
    w, V = torch.linalg.eigh(K)
    return V * w.clamp_min(0).sqrt().unsqueeze(-2), False


def congruence(F: Tensor, K: Tensor, lower: bool = False) -> Tensor:
    """``F^T K F`` ``(t, t)`` for a symmetric ``K``; a lower-triangular ``F`` (``lower``) skips its zero block.

    With ``F = [[F11, 0], [F21, F22]]`` in halves, ``K F`` needs three block products and the
    symmetric result four: ``2.5 t^3`` operations instead of ``4 t^3``.
    """
    t = F.shape[-1]
    if not lower or t < SYMMETRIC_SPLIT:
        return F.mT @ K @ F
    h = t // 2
    F11, F21, F22 = F[:h, :h], F[h:, :h], F[h:, h:]
    W1 = K[:, :h] @ F11 + K[:, h:] @ F21  # (t, h)
    W2 = K[:, h:] @ F22  # (t, t - h)
    M11 = F11.mT @ W1[:h] + F21.mT @ W1[h:]
    M21 = F22.mT @ W1[h:]
    M22 = F22.mT @ W2[h:]
    return torch.cat([torch.cat([M11, M21.mT], 1), torch.cat([M21, M22], 1)], 0)


def sqrt_eigvalsh(S: Tensor, r: int) -> Tensor:
    """The ``r`` largest singular values, descending, from ``S`` ``(m, m)`` whose eigenvalues are their squares.

    ``r`` is the rank bound known from the shapes (``min(t, i, o)``), so exactly ``r`` values are kept
    and nothing is thresholded: only the negative eigenvalues that rounding produces for a
    semi-definite ``S`` are clipped to 0. Each value is then within about ``sqrt(u) * s_1`` of the
    exact one (``u`` the unit roundoff; ``1e-8 * s_1`` in float64), whichever Gram side built ``S``.
    """
    w = torch.linalg.eigvalsh(S).flip(-1)[..., :r]  # descending
    return w.clamp_min(0).sqrt()


def nonzero_terms(X: Tensor, D: Tensor) -> Tensor:
    """How many tokens add a nonzero term ``d_t x_t^T`` to ``G = D^T X``: ``(·, t, i), (·, t, o) -> (·,)``.

    ``rank(G)`` is at most this (and ``min(i, o)``): a tighter bound than ``t`` when rows of ``D`` are
    exactly zero (a query at position 0 attends to one key only, so its softmax passes no gradient)
    or are padding. Singular values past it are exact zeros, not rounding noise.
    """
    return ((X != 0).any(-1) & (D != 0).any(-1)).sum(-1)


def gram_svdvals(X: Tensor, D: Tensor, side: str, *, K_X: Tensor | None = None,
                 F_X: tuple[Tensor, bool] | None = None) -> Tensor:
    """Singular values of ``G = D^T X`` for one example: ``(t, i), (t, o) -> (min(t, i, o),)``, in float64.

    Exactly ``min(nonzero_terms(X, D), i, o)`` of them are computed, then zeros up to ``min(t, i, o)``.
    ``K_X = gram(X)`` and ``F_X = psd_factor(K_X)`` may be passed in when modules share ``X``.
    """
    if side not in GRAM_SIDES:
        raise ValueError(f"unknown Gram side {side!r}; choose one of {', '.join(GRAM_SIDES)}")
    t, i = X.shape
    o = D.shape[-1]
    r = min(t, i, o)
    k = min(int(nonzero_terms(X, D)), r)
    dt = GRAM_DTYPE
    if side == "token":
        F, lower = F_X if F_X is not None else psd_factor(K_X if K_X is not None else gram(X))
        S = congruence(F, gram(D), lower)  # (t, t)
    elif side == "out":
        K = K_X if K_X is not None else gram(X)
        Dd = D.to(dt)
        S = Dd.mT @ (K @ Dd)  # (o, o)
    elif side == "in":
        Xd = X.to(dt)
        S = Xd.mT @ (gram(D) @ Xd)  # (i, i)
    else:
        G = D.to(dt).mT @ X.to(dt)  # (o, i)
        S = G @ G.mT if o <= i else G.mT @ G
    s = sqrt_eigvalsh(S, k)
    return torch.cat([s, s.new_zeros(r - k)]) if k < r else s


# ---------------------------------------------------------------------------------------
# The float32 route (RunConfig.gram_precision = "float32-qr"): distinct rows, then float32 QR
# ---------------------------------------------------------------------------------------
#
# Opt-in, for GPUs whose FP64 runs at 1/32-1/64 of FP32. Two exact steps, then float32 throughout:
#
# 1. Distinct rows (:func:`distinct_rows`): tokens whose input rows are equal are merged by summing their
#    output-gradient rows, then tokens whose (summed) output-gradient rows are equal by summing their input
#    rows; ``D'^T X' = D^T X`` exactly (the sums in float64, rounded once to float32). The merged example's
#    ``nonzero_terms`` then bounds the rank where repeated tokens lower it (layer 0's q, k, v, whose input is
#    a function of the token id; a tied head's one-hot rows), so those values are exact zeros instead of
#    rounding noise: without this step every float32 route left ~1e-7 s_1 on each of hundreds of them and
#    effective ranks off by up to 3.6e-6.
# 2. The ``factored`` way in float32: Householder QR of ``X'^T`` and ``D'^T`` (backward stable token by
#    token, so rows of very different scales cost nothing) and ``svdvals`` of the small core. No matrix is
#    squared: the error is the float32 floor, ~10 u32 s_1 per value, not sqrt(u32) s_1.
# 3. The REFINE_TOP largest values refined by one float64 Rayleigh-Ritz step through the float32 factors
#    (:func:`_refine_top`: skinny products only), which removes the float32 SVD's share of their error; they
#    carry the spectral norm, the stable rank and the top-1 share, which were otherwise off by up to 1.5e-6 on
#    some of the 30 layers' modules.
#
# Measured (benchmarks/precision.py, BENCHMARKS.md: SmolLM2-135M on GSM8K, every module of all 30 layers and
# the tied head, 976 module-examples, against float64 svdvals of the dense G): every singular value within
# 4.6e-7 s_1, nuclear norm, effective rank, stable rank, top-1 share, spectral and Frobenius norm within 4.6e-7
# relative, min_sigma within 4e-9 s_1. The float64 Gram path (the default): 1.4e-8 s_1 and 1.5e-6 on effective ranks.


def distinct_rows(X: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    """``(X', D')`` float64, ``(t', i), (t', o)`` with ``D'^T X' = D^T X`` and no two rows of ``D'`` equal:
    rows of ``D`` whose rows of ``X`` are equal summed, then rows of ``X`` whose summed rows of ``D`` are
    equal summed. Zero (padding) rows merge into at most one zero row."""
    dt = torch.float64
    Xu, inv = torch.unique(X, dim=0, return_inverse=True)
    Du = torch.zeros((Xu.shape[0], D.shape[-1]), dtype=dt, device=D.device).index_add_(0, inv, D.to(dt))
    Du, inv = torch.unique(Du, dim=0, return_inverse=True)
    Xu = torch.zeros((Du.shape[0], X.shape[-1]), dtype=dt, device=X.device).index_add_(0, inv, Xu.to(dt))
    return Xu, Du


#: How many of the largest singular values :func:`float32_qr_svdvals` refines in float64.
REFINE_TOP = 16


def _refine_top(s: Tensor, C: Tensor, RX: Tensor, RD: Tensor, p: int = REFINE_TOP) -> Tensor:
    """The ``p`` largest of ``s`` ``(n, m)`` (the float32 singular values of the core ``C = R_D R_X^T``)
    replaced by a float64 Rayleigh-Ritz step: with ``U_p``, ``V_p`` the float32 SVD's top singular vectors
    made orthonormal in float64, the singular values of ``U_p^T R_D (R_X^T V_p)`` ``(p, p)``, formed in float64
    through the factors (O(p t k) operations: skinny products, a ``k x p`` QR and a ``p x p`` SVD), re-sorted.

    A Ritz value's error is second order in the vectors' error (~10 u32 s_1 over the gap to the rest of the
    spectrum), so what remains is the float32 QR's backward error; values clustered within the top ``p`` are
    resolved together. These values carry the spectral norm and dominate the Frobenius norm, the stable rank
    and the top-1 share. The vectors come from a second float32 SVD: ``svdvals`` alone (no vectors) keeps
    the small values more accurate than an SVD with vectors does, and those carry the effective rank.
    """
    p = min(p, s.shape[-1])
    if p == 0:
        return s
    dt = torch.float64
    U, _, Vh = torch.linalg.svd(C, full_matrices=False)
    # orthonormal in float64 (float32 vectors are orthonormal only to ~u32 sqrt(k): first order in the values)
    u, v = torch.linalg.qr(U[..., :p].to(dt)).Q, torch.linalg.qr(Vh[..., :p, :].mT.to(dt)).Q  # (n, kd, p), (n, kx, p)
    B = u.mT @ (RD.to(dt) @ (RX.to(dt).mT @ v))  # (n, p, p) = U_p^T C V_p in float64
    out = s.clone()
    out[..., :p] = torch.linalg.svdvals(B)
    return out.sort(dim=-1, descending=True).values


def float32_qr_svdvals(X: Tensor, D: Tensor) -> Tensor:
    """Singular values of ``G = D^T X`` by the float32 route: ``(t, i), (t, o) -> (min(t, i, o),)`` for one
    example, or ``(n, t, i), (n, t, o) -> (n, min(t, i, o))`` for a padded batch (zero padding rows);
    float64 tensors holding float32 results, descending. Values past the merged example's
    ``nonzero_terms`` (after :func:`distinct_rows`) are exact zeros.
    """
    if X.dim() == 2:
        return float32_qr_svdvals(X.unsqueeze(0), D.unsqueeze(0))[0]
    n, t, i = X.shape
    o = D.shape[-1]
    r = min(t, i, o)
    parts = [distinct_rows(X[b], D[b]) for b in range(n)]
    T = max([p[0].shape[0] for p in parts], default=0)
    out = torch.zeros((n, r), dtype=torch.float64, device=X.device)
    if T == 0 or r == 0:
        return out
    Xp = torch.zeros((n, T, i), dtype=torch.float32, device=X.device)
    Dp = torch.zeros((n, T, o), dtype=torch.float32, device=D.device)
    for b, (Xb, Db) in enumerate(parts):
        Xp[b, : Xb.shape[0]] = Xb
        Dp[b, : Db.shape[0]] = Db
    k = nonzero_terms(Xp, Dp).clamp(max=r)  # (n,)
    RX, RD = r_factor(Xp), r_factor(Dp)  # float32 Householder QR
    C = core(RX, RD)  # (n, kd, kx) float32
    s = torch.linalg.svdvals(C).to(torch.float64)  # (n, min(o, i, T)): no vectors (the values are more accurate so)
    s = _refine_top(s, C, RX, RD)
    m = min(r, s.shape[-1])
    keep = torch.arange(m, device=s.device) < k.to(s.device).unsqueeze(-1)
    out[:, :m] = torch.where(keep, s[:, :m], torch.zeros((), dtype=s.dtype, device=s.device))
    return out
