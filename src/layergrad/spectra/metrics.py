"""Metrics of a spectrum: the norms, shares and ranks of a batch of singular values. Tensors only.

``s`` ``(n, r)``: singular values of ``n`` gradients, each of ``min(o, i) = full_rank``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from layergrad.vocab import METRICS as METRIC_NAMES  # noqa: F401  (one table: layergrad.vocab)


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
