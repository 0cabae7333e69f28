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


def choose_method(t: int, i: int, o: int, *, x_shared_by: int = 1) -> str:
    """``"factored"`` or ``"dense"``, whichever needs fewer floating-point operations.

    Counts (leading terms, one example): QR of an ``(f, t)`` matrix ~ ``2 f k^2`` with
    ``k = min(f, t)``, discounted by 2 for ``mode="r"`` work being BLAS-2-heavy
    (measured slower per flop than a product); an SVD of an ``(a, b)`` matrix ~ ``6 a b min(a, b)``.
    ``x_shared_by`` modules share the input's factor, so each pays its share.
    """
    kx, kd = min(i, t), min(o, t)
    qr = lambda f, k: 4.0 * f * t * k  # noqa: E731
    svd = lambda a, b: 6.0 * a * b * min(a, b)  # noqa: E731
    factored = qr(i, kx) / x_shared_by + qr(o, kd) + 2.0 * kd * t * kx + svd(kd, kx)
    dense = 2.0 * o * t * i + svd(o, i)
    return "factored" if factored <= dense else "dense"


# ---------------------------------------------------------------------------------------
# Metrics of a spectrum
# ---------------------------------------------------------------------------------------

METRIC_NAMES = ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank")


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


def spectrum_stats(s: Tensor, full_rank: int) -> SpectrumStats:
    """Metrics of singular values ``s`` ``(n, r)`` (any order) of matrices with ``min(o, i) = full_rank``.

    A zero gradient has nuclear = 0 and NaN for the ratios (share, effective and stable rank),
    which are undefined there.
    """
    s = s.clamp_min(0).sort(dim=-1, descending=True).values
    nuclear = s.sum(-1)
    s1 = s[..., 0]
    sq = (s * s).sum(-1)
    p = s / nuclear.unsqueeze(-1)
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    if s.shape[-1] >= full_rank:
        min_sigma = s[..., full_rank - 1]
    else:
        min_sigma = torch.zeros_like(s1)
    return SpectrumStats(
        nuclear=nuclear,
        spectral=s1,
        frobenius=sq.sqrt(),
        min_sigma=min_sigma,
        top1_share=s1 / nuclear,
        effective_rank=torch.exp(-plogp.sum(-1)),
        stable_rank=sq / (s1 * s1),
        spectrum=s,
    )


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
