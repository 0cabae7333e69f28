"""Nonparametric bootstrap over examples, vectorised as resample counts.

A bootstrap resample of ``n`` examples (drawn with replacement) is stored as its count vector
``w`` (how often each example was drawn; ``sum(w) = n``). One ``(B, n)`` count matrix per group
is drawn once and applied to every metric, role and layer, so all intervals of a group come from
the same resamples and are coherent across layers (a resample's curve is a real curve). The mean
of a resample is ``(w @ x) / (w @ finite)`` with NaN entries weighted zero: an example with no
value in one cell is excluded from that cell only.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np

LEVEL = 0.95


def group_rng(seed: int, label: str, purpose: str = "bootstrap") -> np.random.Generator:
    """Generator for one group: fixed by ``seed`` and the group label, independent of other groups."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{purpose}\0{label}".encode())])


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) int counts of ``n_boot`` resamples of ``n`` examples with replacement."""
    if n == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def means(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 ignoring NaN, and the number of finite values. x: (n, ...) -> (...), (...)."""
    fin = np.isfinite(x)
    cnt = fin.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(fin, x, 0.0).sum(axis=0) / cnt, cnt


def resampled_means(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Bootstrap means. x: (n, ...) with NaN for missing; counts: (B, n) -> (B, ...).

    A resample that drew no finite value for a cell gives NaN there.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)  # (n, K)
    fin = np.isfinite(flat)
    num = counts @ np.where(fin, flat, 0.0)  # (B, K)
    den = counts @ fin.astype(np.float64)  # (B, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return out.reshape((counts.shape[0],) + x.shape[1:])


def percentile_interval(boot: np.ndarray, n: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of ``boot``; NaN where fewer than 2 examples (``n``) exist.

    Resamples that are NaN in a cell (no finite value drawn) are dropped for that cell.
    """
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells give NaN, on purpose
        lo, hi = np.nanquantile(boot, [alpha, 1.0 - alpha], axis=0)
    undefined = np.asarray(n) < 2
    return np.where(undefined, np.nan, lo), np.where(undefined, np.nan, hi)


def bias_corrected_interval(boot: np.ndarray, estimate: np.ndarray, n: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected (BC) percentile interval (Efron 1981) over axis 0 of ``boot``.

    For statistics whose bootstrap distribution is shifted from the estimate (a MAD is inflated by
    noise, so resampled MADs sit mostly above the sample's), the plain percentile interval can
    exclude the estimate itself. BC moves the percentiles by ``z0 = Phi^-1(P*(boot < estimate))``
    (ties half): ``alpha_lo = Phi(2 z0 + z_{alpha/2})``, ``alpha_hi = Phi(2 z0 + z_{1-alpha/2})``.
    With ``z0 = 0`` it is the percentile interval. NaN where fewer than 2 examples (``n``).
    """
    from scipy.stats import norm

    fin = np.isfinite(boot)
    B = fin.sum(axis=0)  # finite resamples per cell
    with np.errstate(invalid="ignore", divide="ignore"):
        below = ((boot < estimate) & fin).sum(axis=0) + 0.5 * ((boot == estimate) & fin).sum(axis=0)
        p0 = np.clip(below / B, 1.0 / (B + 1.0), B / (B + 1.0))
    z0 = norm.ppf(p0)
    z = norm.ppf([(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0])
    srt = np.sort(np.where(fin, boot, np.inf), axis=0)  # NaN resamples last

    def quantile(a: np.ndarray) -> np.ndarray:
        pos = np.nan_to_num(a) * np.maximum(B - 1, 0)  # linear interpolation between order statistics; NaN cells masked below
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, np.maximum(B - 1, 0))
        v_lo = np.take_along_axis(srt, lo[None], axis=0)[0]
        v_hi = np.take_along_axis(srt, hi[None], axis=0)[0]
        with np.errstate(invalid="ignore"):
            return v_lo + (pos - lo) * (v_hi - v_lo)

    with np.errstate(invalid="ignore"):
        low, high = quantile(norm.cdf(2 * z0 + z[0])), quantile(norm.cdf(2 * z0 + z[1]))
    undefined = (np.asarray(n) < 2) | (B == 0) | ~np.isfinite(estimate)
    return np.where(undefined, np.nan, low), np.where(undefined, np.nan, high)
