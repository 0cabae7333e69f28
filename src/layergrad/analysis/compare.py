"""Two groups, layer by layer: effect per (role, layer) cell with interval, AUROC, max-T adjusted p.

Design (:mod:`.design`): examples are grouped into units (instructions), paired where the groups
share instructions, independent otherwise; every statistic below is on unit values.

For groups ``a`` and ``b``, each metric, role and layer (a "cell"), on ``y = ln(value)`` of the units:

- ``ratio`` = ratio of geometric means ``exp(mean(y_b) - mean(y_a))`` and ``rel_diff = ratio - 1``;
- ``ratio_ci_low, ratio_ci_high``: its 95% t interval (:mod:`.effects`: paired t, or Welch);
- ``auroc``: independent, ``P(X_b > X_a) + 0.5 P(X_b == X_a)`` (Mann-Whitney U / (n_a n_b));
  paired, ``P(d > 0) + 0.5 P(d == 0)`` for the within-pair difference. 0.5 = no separation;
- ``p_value``: two-sided relabelling test of the studentized statistic (paired: sign flips of the
  differences; independent: permutations of the units' labels with Welch's statistic, so unequal
  spreads do not inflate it), exact when all relabellings number at most ``n_perm``;
- ``p_adjusted``: within one FAMILY = one pair of groups and one metric (every role and layer),
  by ``correction``: ``maxt`` (default; single-step max-T, Westfall & Young 1993: family-wise
  error, uses the dependence between layers, :mod:`.multiplicity`), or the FDR corrections
  ``by`` (Benjamini-Yekutieli) and ``bh`` (Benjamini-Hochberg) of ``p_value``.
  ``min_p`` is the smallest p-value the design's relabelling test can give at all: where it is at
  or above 0.05 no cell can be significant, whatever the data.

A cell whose values are not all positive has no log and no statistics (NaN).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from . import bootstrap, effects
from .curves import DEFAULT_METRICS
from .design import Design, design
from .groups import Group, require_comparable
from .multiplicity import N_PERM, maxt, min_attainable_p

CORRECTIONS = {"maxt": "max-T permutation (Westfall-Young), family-wise error", "by": "Benjamini-Yekutieli FDR",
               "bh": "Benjamini-Hochberg FDR"}
DEFAULT_CORRECTION = "maxt"
COMPARE_COLUMNS = ["group_a", "group_b", "design", "n_pairs", "role", "layer", "metric", "rel_diff", "ratio", "ratio_ci_low",
                   "ratio_ci_high", "auroc", "p_value", "p_adjusted", "correction", "min_p", "n_a", "n_b"]


def auroc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AUROC of b against a per column, ties half. a: (n_a, K), b: (n_b, K), finite -> (K,)."""
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return np.full(a.shape[1], np.nan)
    ranks = rankdata(np.concatenate([a, b]), axis=0)  # (N, K) midranks
    u_b = ranks[n_a:].sum(axis=0) - n_b * (n_b + 1) / 2.0
    return u_b / (n_a * n_b)


def superiority(d: np.ndarray) -> np.ndarray:
    """Paired probability of superiority per column: P(d > 0) + 0.5 P(d == 0). d: (n, K), NaN missing -> (K,)."""
    fin = np.isfinite(d)
    n = fin.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((d > 0) & fin).sum(axis=0) / n + 0.5 * ((d == 0) & fin).sum(axis=0) / n
    return np.where(n > 0, out, np.nan)


def _auroc_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`auroc` per column on the finite entries of each column."""
    out = np.full(a.shape[1], np.nan)
    fa, fb = np.isfinite(a), np.isfinite(b)
    patterns, which = np.unique(np.concatenate([fa, fb]).T, axis=0, return_inverse=True)
    for u, pattern in enumerate(patterns):
        cols = np.flatnonzero(which.ravel() == u)
        ra, rb = pattern[: a.shape[0]], pattern[a.shape[0]:]
        if ra.any() and rb.any():
            out[cols] = auroc(a[np.ix_(ra, cols)], b[np.ix_(rb, cols)])
    return out


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone); NaN stays NaN and is not counted."""
    return _step_up(p, by=False)


def by_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values: BH's multiplied by ``c(m) = sum_{i<=m} 1/i`` (any dependence)."""
    return _step_up(p, by=True)


def _step_up(p: np.ndarray, by: bool) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    c = float(np.sum(1.0 / np.arange(1, m + 1))) if by else 1.0
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * m * c / np.arange(1, m + 1)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out[ok[order]] = q
    return out


def compare_arrays(xa: np.ndarray, xb: np.ndarray, d: Design, *, label_a: str, label_b: str, n_perm: int = N_PERM,
                   seed: int = 0, correction: str = DEFAULT_CORRECTION) -> dict[str, np.ndarray]:
    """The statistics of the module docstring for every column of per-example values ``xa`` (n_a, K) and ``xb`` (n_b, K)
    (NaN = missing), all columns one family. Returns arrays of length K."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    ya, yb = d.aggregate(effects.log_positive(xa), effects.log_positive(xb))  # (m_a, K), (m_b, K) unit log values
    st = (effects.paired if d.paired else effects.welch)(ya, yb)
    rng = bootstrap.group_rng(seed, f"{label_a}\0{label_b}", "permutation")
    p_adj, p_raw = maxt(ya, yb, d.paired, n_perm=n_perm, rng=rng)
    if correction != "maxt":
        p_adj = _step_up(p_raw, by=correction == "by")
    auc = superiority(yb - ya) if d.paired else _auroc_nan(ya, yb)
    min_p = min_attainable_p(d.n_pairs if d.paired else d.n_units_a, d.n_units_b, d.paired, n_perm)
    return {"n_a": st["n_a"], "n_b": st["n_b"], "ratio": st["ratio"], "rel_diff": st["ratio"] - 1.0, "ratio_ci_low": st["ci_low"],
            "ratio_ci_high": st["ci_high"], "auroc": auc, "p_value": p_raw, "p_adjusted": p_adj, "min_p": np.full(len(p_raw), min_p)}


def compare_groups(a: Group, b: Group, metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, seed: int = 0,
                   pairing: str = "auto", correction: str = DEFAULT_CORRECTION) -> pd.DataFrame:
    """All cells of one comparison (``b`` against ``a``); one family per metric. Columns: COMPARE_COLUMNS."""
    require_comparable([a, b])
    metrics = [m for m in metrics if a.available(m) and b.available(m)]
    if not metrics:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    d = design(a, b, pairing)
    R, L = len(a.series), a.n_layers
    frames = []
    for m in metrics:
        xa, xb = a.values[m].reshape(a.n, -1), b.values[m].reshape(b.n, -1)  # (n, R*L)
        measured = np.isfinite(xa).any(axis=0) | np.isfinite(xb).any(axis=0)  # cells measured in neither group: structural
        st = compare_arrays(xa, xb, d, label_a=a.label, label_b=b.label, n_perm=n_perm, seed=seed, correction=correction)
        r, l = np.unravel_index(np.arange(R * L), (R, L))
        df = pd.DataFrame({"group_a": a.label, "group_b": b.label, "design": d.kind, "n_pairs": d.n_pairs,
                           "role": np.asarray(a.series, dtype=object)[r], "layer": l, "metric": m,
                           **{k: st[k] for k in ("rel_diff", "ratio", "ratio_ci_low", "ratio_ci_high", "auroc", "p_value",
                                                 "p_adjusted", "min_p", "n_a", "n_b")}, "correction": correction})
        frames.append(df[measured])
    return pd.concat(frames, ignore_index=True)[COMPARE_COLUMNS]


def compare_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, seed: int = 0,
                  pairing: str = "auto", correction: str = DEFAULT_CORRECTION) -> pd.DataFrame:
    """Every pair of groups in the given order (a before b); the correction within each pair and metric."""
    require_comparable(groups)
    frames = [
        compare_groups(groups[j], groups[k], metrics, n_perm=n_perm, seed=seed, pairing=pairing, correction=correction)
        for j in range(len(groups))
        for k in range(j + 1, len(groups))
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARE_COLUMNS)
