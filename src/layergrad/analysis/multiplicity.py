"""Multiplicity: max-T over the (layer, role) cells of a family, Holm across headline tests.

Max-T (Westfall & Young 1993, Algorithm 2.8; single step). A family is every (role, layer) cell
of one pair of groups and one metric. Each relabelling (paired: a sign flip of every pair's
difference; independent: a permutation of the pooled units' group labels) is drawn ONCE and
applied to every cell; per draw the largest studentized statistic over the cells is kept. A
cell's adjusted p is the share of draws whose maximum reaches the cell's observed ``|t|``
(with the observed labelling counted once when draws are random). This controls the
family-wise error rate in the strong sense under any dependence between cells, and because
neighbouring layers move together, the maximum over 210 correlated cells is far smaller than
a Bonferroni bound would assume: dependence is used, not paid for.

Attainable p. A relabelling test cannot give a p below the share of relabellings that are as
extreme as the data itself: ``2 / 2^n`` for n pairs (the observed signs and their mirror),
``1 / C(n_a + n_b, n_b)`` (doubled when ``n_a == n_b``) for independent units, and
``1 / (n_perm + 1)`` for random draws. :func:`min_attainable_p` gives it, so a sentence can say
"with 5 pairs no cell can reach 0.05" instead of "no difference".

Holm (1979): the headline tests of a report (every pair of groups x headline metric) are one
family, adjusted step-down by ``statsmodels.stats.multitest.multipletests(method="holm")``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from statsmodels.stats.multitest import multipletests

from .effects import studentized_signflip, studentized_welch

N_PERM = 9999
_CHUNK = 256


def min_attainable_p(n_a: int, n_b: int, paired: bool, n_perm: int = N_PERM) -> float:
    """The smallest p-value a two-sided relabelling test of this design can give (module docstring)."""
    if paired:
        if n_a < 1:
            return 1.0
        total = 2 ** n_a
        return 2.0 / total if total <= n_perm else max(2.0 / total, 1.0 / (n_perm + 1))
    if n_a < 1 or n_b < 1:
        return 1.0
    total = math.comb(n_a + n_b, n_b)
    orbit = 2.0 if n_a == n_b else 1.0
    return orbit / total if total <= n_perm else max(orbit / total, 1.0 / (n_perm + 1))


def _signs(n: int, n_perm: int, rng: np.random.Generator):
    """Sign patterns (c, n): all 2^n when that is at most n_perm (exact), else n_perm random ones; and whether exact."""
    if 2 ** n <= n_perm:
        return [1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None]) & 1)], True
    return [rng.choice(np.array([-1.0, 1.0]), size=(min(_CHUNK, n_perm - s), n)) for s in range(0, n_perm, _CHUNK)], False


def _labels(n_a: int, n_b: int, n_perm: int, rng: np.random.Generator):
    """Label matrices (c, n_a + n_b), 1 = group b: all splits when few enough (exact), else random; and whether exact."""
    n = n_a + n_b
    if math.comb(n, n_b) <= n_perm:
        combos = list(itertools.combinations(range(n), n_b))
        m = np.zeros((len(combos), n))
        for i, c in enumerate(combos):
            m[i, list(c)] = 1.0
        return [m], True
    base = np.zeros(n)
    base[n_a:] = 1.0
    return [rng.permuted(np.tile(base, (min(_CHUNK, n_perm - s), 1)), axis=1) for s in range(0, n_perm, _CHUNK)], False


def maxt(ya: np.ndarray, yb: np.ndarray, paired: bool, *, n_perm: int = N_PERM,
         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Single-step max-T adjusted p-values of every column (cell) of one family; and the raw permutation p-values.

    ya, yb: (m_a, K), (m_b, K) unit values on the analysis scale (NaN missing); paired: row i of both is pair i.
    Columns with no statistic (too few units, zero spread) get NaN and take no part in the maximum."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if paired:
        d = yb - ya
        obs = studentized_signflip(d, np.ones((1, d.shape[0])))[0]
        chunks, exact = _signs(d.shape[0], n_perm, rng)
        stat = lambda m: studentized_signflip(d, m)  # noqa: E731
        n_units = np.isfinite(d).sum(axis=0)
        valid = n_units >= 2
    else:
        y = np.concatenate([ya, yb])
        lab = np.concatenate([np.zeros(ya.shape[0]), np.ones(yb.shape[0])])[None]
        obs = studentized_welch(y, lab)[0]
        chunks, exact = _labels(ya.shape[0], yb.shape[0], n_perm, rng)
        stat = lambda m: studentized_welch(y, m)  # noqa: E731
        valid = (np.isfinite(ya).sum(axis=0) >= 2) & (np.isfinite(yb).sum(axis=0) >= 2)
    valid &= obs > 0
    K = ya.shape[1]
    adj, raw = np.full(K, np.nan), np.full(K, np.nan)
    if not valid.any():
        return adj, raw
    tol = 1e-9 * np.maximum(obs, 1.0)
    exceed_max, exceed_raw, total = np.zeros(K), np.zeros(K), 0
    for m in chunks:
        t = stat(m)[:, valid]  # (c, K_valid)
        mx = t.max(axis=1)  # (c,)
        exceed_max[valid] += (mx[:, None] >= obs[valid] - tol[valid]).sum(axis=0)
        exceed_raw[valid] += (t >= obs[valid] - tol[valid]).sum(axis=0)
        total += m.shape[0]
    if exact:
        adj[valid], raw[valid] = exceed_max[valid] / total, exceed_raw[valid] / total
    else:
        adj[valid], raw[valid] = (exceed_max[valid] + 1) / (total + 1), (exceed_raw[valid] + 1) / (total + 1)
    return adj, raw


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values over the finite entries of ``p`` (one family); NaN stays NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def layer_ranges(layers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    out, start, prev = [], None, None
    for x in sorted(set(int(v) for v in layers)):
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = x
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)
