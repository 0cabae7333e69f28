"""Two groups, layer by layer: effect size, AUROC, permutation p-value, FDR.

For groups ``a`` and ``b`` (independent samples: paired data is NOT assumed) and each metric,
role and layer, with ``x_a``, ``x_b`` the per-example values that are finite in that cell:

- ``rel_diff = (mean(x_b) - mean(x_a)) / |mean(x_a)|`` (NaN when mean(x_a) == 0);
- ``auroc = P(X_b > X_a) + 0.5 P(X_b == X_a)`` for a random example of each group: the
  Mann-Whitney U of ``b`` divided by ``n_a n_b``, ties counted half (midranks). 0.5 = no
  separation, 1 = every b above every a, 0 = every b below every a;
- ``p_value``: two-sided permutation test of the difference of means. The group labels of the
  pooled examples are permuted ``n_perm`` times (fixed seed);
  ``p = (1 + #{|diff_perm| >= |diff_obs|}) / (1 + n_perm)``. When the number of distinct
  splits ``C(n_a + n_b, n_b)`` is at most ``n_perm``, all splits are enumerated instead and the
  p-value is exact (the observed split is one of them, so no +1 is added);
- ``p_adjusted``: Benjamini-Hochberg FDR adjustment across ALL tests of one comparison (one pair
  of groups: every metric, role and layer together). The tests of a comparison are positively
  dependent (same examples, neighbouring layers), the setting in which BH is known to control
  the FDR (Benjamini & Yekutieli 2001, PRDS).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from . import bootstrap
from .curves import DEFAULT_METRICS
from .groups import Group, require_comparable

N_PERM = 9999
_CHUNK = 512  # permutations per matrix product
COMPARE_COLUMNS = ["group_a", "group_b", "role", "layer", "metric", "rel_diff", "auroc", "p_value", "p_adjusted", "n_a", "n_b"]


def auroc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AUROC of b against a per column, ties half. a: (n_a, K), b: (n_b, K), finite -> (K,)."""
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return np.full(a.shape[1], np.nan)
    ranks = rankdata(np.concatenate([a, b]), axis=0)  # (N, K) midranks
    u_b = ranks[n_a:].sum(axis=0) - n_b * (n_b + 1) / 2.0
    return u_b / (n_a * n_b)


def _splits(n_a: int, n_b: int, n_perm: int, rng: np.random.Generator):
    """Yield (c, N) 0/1 matrices marking group b under relabelling; and whether they are exhaustive."""
    n = n_a + n_b
    if math.comb(n, n_b) <= n_perm:
        combos = list(itertools.combinations(range(n), n_b))
        m = np.zeros((len(combos), n))
        for i, c in enumerate(combos):
            m[i, list(c)] = 1.0
        return [m], True
    base = np.zeros(n)
    base[:n_b] = 1.0
    chunks = []
    for start in range(0, n_perm, _CHUNK):
        c = min(_CHUNK, n_perm - start)
        chunks.append(rng.permuted(np.tile(base, (c, 1)), axis=1))
    return chunks, False


def permutation_pvalues(a: np.ndarray, b: np.ndarray, n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-sided permutation p-values of mean(b) - mean(a), per column. a: (n_a, K), b: (n_b, K), finite.

    All columns share the same relabellings (they are tests on the same examples).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return np.full(a.shape[1], np.nan)
    z = np.concatenate([a, b])  # (N, K)
    tot = z.sum(axis=0)
    obs = b.mean(axis=0) - a.mean(axis=0)
    # Rounding must not make the observed split look less extreme than itself.
    tol = 1e-9 * (np.abs(z).max(axis=0) + np.finfo(float).tiny)
    exceed = np.zeros(z.shape[1])
    total = 0
    chunks, exact = _splits(n_a, n_b, n_perm, rng)
    for m in chunks:
        sb = m @ z  # (c, K) sums of the relabelled group b
        diff = sb / n_b - (tot - sb) / n_a
        exceed += (np.abs(diff) >= np.abs(obs) - tol).sum(axis=0)
        total += m.shape[0]
    return exceed / total if exact else (exceed + 1.0) / (total + 1.0)


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone); NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out[ok[order]] = q
    return out


def compare_groups(a: Group, b: Group, metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, seed: int = 0) -> pd.DataFrame:
    """All tests of one comparison (``b`` against ``a``), BH-adjusted together. Columns: COMPARE_COLUMNS."""
    require_comparable([a, b])
    metrics = [m for m in metrics if a.available(m) and b.available(m)]
    if not metrics:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    R, L = len(a.series), a.n_layers
    xa = np.concatenate([a.values[m].reshape(a.n, -1) for m in metrics], axis=1)  # (n_a, K), K = M*R*L
    xb = np.concatenate([b.values[m].reshape(b.n, -1) for m in metrics], axis=1)  # (n_b, K)
    K = xa.shape[1]
    fin = np.concatenate([np.isfinite(xa), np.isfinite(xb)])  # (N, K)
    n_a, n_b = np.isfinite(xa).sum(axis=0), np.isfinite(xb).sum(axis=0)
    auc, p = np.full(K, np.nan), np.full(K, np.nan)
    rng = bootstrap.group_rng(seed, f"{a.label}\0{b.label}", "permutation")
    # Columns sharing the same pattern of missing values are tested together on the same examples.
    patterns, which = np.unique(fin.T, axis=0, return_inverse=True)
    for u, pattern in enumerate(patterns):
        cols = np.flatnonzero(which.ravel() == u)
        ra, rb = pattern[: a.n], pattern[a.n:]
        if not ra.any() or not rb.any():
            continue
        sa, sb = xa[np.ix_(ra, cols)], xb[np.ix_(rb, cols)]
        auc[cols] = auroc(sa, sb)
        p[cols] = permutation_pvalues(sa, sb, n_perm, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.where(np.isfinite(xa), xa, 0).sum(axis=0) / n_a
        mb = np.where(np.isfinite(xb), xb, 0).sum(axis=0) / n_b
        rel = (mb - ma) / np.abs(ma)
    keep = (n_a > 0) | (n_b > 0)  # drop cells measured in neither group (structural)
    mi, r, l = np.unravel_index(np.arange(K), (len(metrics), R, L))
    df = pd.DataFrame(
        {"group_a": a.label, "group_b": b.label, "role": np.asarray(a.series, dtype=object)[r], "layer": l,
         "metric": np.asarray(metrics, dtype=object)[mi], "rel_diff": rel, "auroc": auc, "p_value": p,
         "p_adjusted": np.nan, "n_a": n_a, "n_b": n_b}
    )[keep].reset_index(drop=True)
    df["p_adjusted"] = bh_adjust(df["p_value"].to_numpy())
    return df[COMPARE_COLUMNS]


def compare_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, seed: int = 0) -> pd.DataFrame:
    """Every pair of groups in the given order (a before b); BH within each pair."""
    require_comparable(groups)
    frames = [
        compare_groups(groups[j], groups[k], metrics, n_perm=n_perm, seed=seed)
        for j in range(len(groups))
        for k in range(j + 1, len(groups))
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARE_COLUMNS)
