"""Entries, inner products and cosines of per-example gradients ``G = D^T X``, from their factors
where possible. Tensors only; batched ``(n, t, ·)`` inputs with zero padding rows.
"""
from __future__ import annotations

from torch import Tensor

from layergrad.spectra.svd import dense_gradient

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
