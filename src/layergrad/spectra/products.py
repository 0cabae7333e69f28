"""Entries, inner products and cosines of per-example gradients ``G = D^T X``, from their factors
where possible. Tensors only; batched ``(n, t, ·)`` inputs with zero padding rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from layergrad.spectra.svd import GRAM_DTYPE, dense_gradient, gram

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


def token_contributions(X: Tensor, D: Tensor, K_X: Tensor | None = None) -> Tensor:
    """Token ``t``'s part of ``||G||_F^2``: ``<d_t x_t^T, G>_F = sum_u (D D^T)_{tu} (X X^T)_{tu}``, ``(t,)`` float64.

    ``X`` ``(t, i)``, ``D`` ``(t, o)``: one example's rows (``G = D^T X = sum_t d_t x_t^T``).
    The row sums of the Hadamard product of the two ``(t, t)`` Gram matrices; ``K_X = X X^T``
    may be passed when already formed (float64). They sum to ``||G||_F^2`` (a term may be negative).
    """
    K_X = gram(X) if K_X is None else K_X.to(GRAM_DTYPE)  # (t, t)
    return (gram(D) * K_X).sum(-1)  # (t,)


def token_shares(X: Tensor, D: Tensor, K_X: Tensor | None = None) -> Tensor:
    """``<d_t x_t^T, G>_F / ||G||_F^2``: ``(t,)`` float64, summing to 1 (NaN where ``G = 0``)."""
    c = token_contributions(X, D, K_X)
    total = c.sum()
    return c / total if bool(total != 0) else torch.full_like(c, float("nan"))


def inner_route(t: int, i: int, o: int, pairs: int = 1) -> str:
    """``"dense"`` or ``"gram"``: the cheaper way to take one module's gradient inner products with its
    own gradient and with ``pairs`` partners, for a batch padded to ``t`` tokens.

    From the factors each product costs ``t^2 (i + o)`` multiply-adds (two ``(t, t)`` matrices), the
    module's ``1 + pairs / 2`` products (a pair is shared by its two modules) ``(1 + pairs / 2) t^2 (i + o)``;
    forming the dense gradient costs ``t i o`` once, after which a product is ``i o``. Both are exact.
    Dense only where it is also no larger than the factors it replaces (``o i <= t (i + o)``): a module
    waits for its partners until the batch's end with ``cosine_layers``, and the memory budget counts
    the factors.
    """
    gram_cost = (1 + pairs / 2) * t * t * (i + o)
    dense_cost = t * i * o + (1 + pairs / 2) * i * o
    return "dense" if dense_cost < gram_cost and o * i <= t * (i + o) else "gram"


class InnerOperand:
    """One module's per-example gradients ready for inner products: the factors ``(X, D)`` or the dense
    ``G = D^T X`` (``route``, :func:`inner_route`), and the squared norms ``sq = <G, G>``, ``(n,)``."""

    def __init__(self, X: Tensor, D: Tensor, route: str):
        if route == "dense":
            self.X = self.D = None
            self.G = dense_gradient(X, D)
            self.sq = (self.G * self.G).sum(dim=(-2, -1))
        else:
            self.X, self.D, self.G = X, D, None
            self.sq = gradient_inner(X, D, X, D)

    def dense(self) -> Tensor:
        return self.G if self.G is not None else dense_gradient(self.X, self.D)

    def inner(self, other: "InnerOperand") -> Tensor:
        """``<G_self, G_other>_F`` per example (same-shaped gradients, one batch)."""
        if self.G is None and other.G is None:
            return gradient_inner(self.X, self.D, other.X, other.D)
        return (self.dense() * other.dense()).sum(dim=(-2, -1))

    def cosine(self, other: "InnerOperand") -> Tensor:
        return self.inner(other) / (self.sq.clamp_min(0).sqrt() * other.sq.clamp_min(0).sqrt())
