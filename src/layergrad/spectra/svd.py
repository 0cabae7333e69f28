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
:func:`choose_method` picks by an operation count.

Batched functions take ``(n, t, ·)`` tensors in which padding rows are zero; zero rows add
nothing to ``G``, to its factors' cores, or to any statistic here.

The dense oracle (:func:`dense_svdvals`) is the obviously-correct slow twin; the tests hold
every fast path to it.
"""
from __future__ import annotations

from dataclasses import dataclass

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


# Relative costs in units of float64 matrix-product operations (``2 a b c`` for ``(a, b) @ (b, c)``),
# measured by ``benchmarks/calibrate.py --threads 1`` (the Gram path runs each example on one thread,
# see measure.py; torch 2.13 CPU with MKL, AMD EPYC; medians over m = 192..768): ``eigvalsh`` of an
# ``(m, m)`` float64 matrix ~ ``EIG_COST m^3``, a Cholesky ``CHOL_COST m^3``, ``svdvals`` of an
# ``(a, b)`` float32 matrix ~ ``SVD_COST a b min(a, b)``, and a float32 Householder QR (``mode="r"``)
# runs at ``1 / QR_SLOWDOWN`` the rate of a float64 product. Only ratios matter: each constant decides
# between ways of computing the same numbers, never what they are.
QR_SLOWDOWN = 0.85
SVD_COST = 8.0
EIG_COST = 5.5
CHOL_COST = 1.1


def choose_method(t: int, i: int, o: int, *, x_shared_by: int = 1) -> str:
    """``"factored"`` or ``"dense"``, whichever is cheaper by the measured costs above.

    Counts (one example): QR of an ``(f, t)`` matrix ``2 f t k - 2 k^3 / 3`` with ``k = min(f, t)``,
    an SVD of the core ``(min(o, t), min(i, t))`` or of the dense ``(o, i)`` gradient.
    ``x_shared_by`` modules share the input's factor, so each pays its share.
    """
    kx, kd = min(i, t), min(o, t)
    qr = lambda f, k: QR_SLOWDOWN * (2.0 * f * t * k - 2.0 * k**3 / 3)  # noqa: E731
    svd = lambda a, b: SVD_COST * a * b * min(a, b)  # noqa: E731
    factored = qr(i, kx) / x_shared_by + qr(o, kd) + 2.0 * kd * t * kx + svd(kd, kx)
    dense = 2.0 * o * t * i + svd(o, i)
    return "factored" if factored <= dense else "dense"


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


def gram_cost(f: int, t: int) -> float:
    """Operations of :func:`gram` on a ``(t, f)`` matrix."""
    return 2.0 * f * t * t * (0.75 if t >= SYMMETRIC_SPLIT else 1.0)


def gram_side(t: int, i: int, o: int, *, x_shared_by: int = 1, have_k_x: bool = False, have_f_x: bool = False) -> str:
    """The cheapest of :data:`GRAM_SIDES` for one example, by the measured costs above.

    A shared input's ``K_X`` and factor are paid once: each of the ``x_shared_by`` modules pays its
    share, and nothing when they are already computed (``have_k_x``, ``have_f_x``).
    """
    kx = 0.0 if have_k_x else gram_cost(i, t) / x_shared_by
    fx = 0.0 if have_f_x else kx + CHOL_COST * t**3 / x_shared_by
    eig = lambda m: EIG_COST * m**3  # noqa: E731
    a, b = min(o, i), max(o, i)
    cost = {
        "token": fx + gram_cost(o, t) + (2.5 if t >= SYMMETRIC_SPLIT else 4.0) * t**3 + eig(t),
        "out": kx + 2.0 * t * t * o + 2.0 * t * o * o + eig(o),
        "in": gram_cost(o, t) + 2.0 * t * t * i + 2.0 * t * i * i + eig(i),
        "product": 2.0 * t * i * o + 2.0 * a * a * b + eig(a),
    }
    return min(GRAM_SIDES, key=lambda s: cost[s])


# ---------------------------------------------------------------------------------------
# Metrics of a spectrum
# ---------------------------------------------------------------------------------------

from layergrad.vocab import METRICS as METRIC_NAMES  # noqa: E402  (one table: layergrad.vocab)


@dataclass
class SpectrumStats:
    """Per-example metrics of a batch of spectra; every field is ``(n,)`` except ``spectrum``."""

    nuclear: Tensor  # sum(s)
    spectral: Tensor  # s_1
    frobenius: Tensor  # sqrt(sum(s^2))
    min_sigma: Tensor  # smallest of the min(o, i) singular values (0 when rank < min(o, i))
    top1_share: Tensor  # s_1 / sum(s)
    effective_rank: Tensor  # exp(-sum p ln p), p = s / sum(s)
    stable_rank: Tensor  # sum(s^2) / s_1^2
    spectrum: Tensor  # (n, r) singular values, descending


def spectrum_stats(s: Tensor, full_rank: int, rank: Tensor | None = None) -> SpectrumStats:
    """Metrics of singular values ``s`` ``(n, r)`` (any order) of matrices with ``min(o, i) = full_rank``.

    ``rank`` ``(n,)``: each matrix's rank bound known from its shapes (``min(T, i, o)``, ``T`` its own
    tokens); values beyond it are exact zeros, and ``min_sigma`` is exactly 0 when it is below
    ``full_rank``. Default: ``r`` for every row.

    A zero gradient (``sum(s) == 0``) has nuclear, spectral, Frobenius norm and ``min_sigma`` 0 and
    NaN for the ratios (top-1 share, effective and stable rank), which are undefined there:
    never 1 or 0 (see :func:`undefined_reason`).
    """
    s = s.clamp_min(0).sort(dim=-1, descending=True).values
    n, r = s.shape[0], s.shape[-1]
    if rank is None:
        rank = torch.full((n,), r, dtype=torch.long)
    rank = rank.to(device=s.device, dtype=torch.long).clamp(max=r)
    s = torch.where(torch.arange(r, device=s.device) < rank.unsqueeze(-1), s, torch.zeros_like(s))
    nuclear = s.sum(-1)
    s1 = s[..., 0] if r else torch.zeros(n, dtype=s.dtype, device=s.device)
    sq = (s * s).sum(-1)
    zero = nuclear == 0
    p = s / torch.where(zero, torch.ones_like(nuclear), nuclear).unsqueeze(-1)
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    nan = torch.full_like(nuclear, float("nan"))
    if r >= full_rank:
        min_sigma = torch.where(rank >= full_rank, s[..., full_rank - 1], torch.zeros_like(s1))
    else:
        min_sigma = torch.zeros_like(s1)
    return SpectrumStats(
        nuclear=nuclear,
        spectral=s1,
        frobenius=sq.sqrt(),
        min_sigma=min_sigma,
        top1_share=torch.where(zero, nan, s1 / torch.where(zero, torch.ones_like(nuclear), nuclear)),
        effective_rank=torch.where(zero, nan, torch.exp(-plogp.sum(-1))),
        stable_rank=torch.where(zero, nan, sq / torch.where(zero, torch.ones_like(s1), s1 * s1)),
        spectrum=s,
    )


ZERO_GRADIENT = "zero gradient: top1_share, effective_rank and stable_rank are undefined (NaN)"


def undefined_reason(nuclear: float) -> str | None:
    """Why a row's ratio metrics are NaN, or ``None`` when every metric is defined."""
    return ZERO_GRADIENT if nuclear == 0 else None


# ---------------------------------------------------------------------------------------
# Elementwise statistics and cosines, without G where possible
# ---------------------------------------------------------------------------------------


def elementwise_stats(X: Tensor, D: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, max and min over the entries of ``G = D^T X``, each ``(n,)``.

    The mean needs no ``G`` (``1^T D^T X 1 / (o i)``); max and min do: ``G`` is formed one
    batch of one module at a time. Zero rows at padded positions are ignored as in ``G``.
    """
    G = dense_gradient(X, D)
    o, i = G.shape[-2], G.shape[-1]
    mean = (D.sum(-1) * X.sum(-1)).sum(-1) / (o * i)
    return mean, G.amax(dim=(-2, -1)), G.amin(dim=(-2, -1))


def gradient_inner(Xa: Tensor, Da: Tensor, Xb: Tensor, Db: Tensor) -> Tensor:
    """``<D_a^T X_a, D_b^T X_b>_F = sum_{t,u} (D_a D_b^T)_{tu} (X_a X_b^T)_{tu}``: ``(n,)``.

    Needs both gradients to have the same shape; only ``(t, t)`` matrices are formed.
    """
    return ((Da @ Db.transpose(-1, -2)) * (Xa @ Xb.transpose(-1, -2))).sum(dim=(-2, -1))


def gradient_cosine(Xa: Tensor, Da: Tensor, Xb: Tensor, Db: Tensor) -> Tensor:
    """Cosine similarity of two same-shaped per-example gradients, from their factors: ``(n,)``."""
    ab = gradient_inner(Xa, Da, Xb, Db)
    aa = gradient_inner(Xa, Da, Xa, Da)
    bb = gradient_inner(Xb, Db, Xb, Db)
    return ab / (aa.clamp_min(0).sqrt() * bb.clamp_min(0).sqrt())
