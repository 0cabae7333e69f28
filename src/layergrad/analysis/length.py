"""Is a difference only a length effect? Response length against gradient size.

Per example and role, the summary value is the metric's mean over all layers of the depth
(default ``nuclear``); an example with no finite value in some layer of that role is left out
(``n`` says how many remain). Length is ``n_response_tokens`` (the loss terms).

- :func:`length_table`, per group and role: Pearson r and Spearman rho of length vs the summary,
  with their two-sided p-values (scipy).
- :func:`partial_table`, per pair of groups and role (and ``all``, see :func:`summaries`), on the pooled examples of both groups with
  ``g = 0`` for group_a and ``1`` for group_b:
  ``r_group`` = Pearson correlation of the summary with ``g`` (point-biserial, no control);
  ``partial_pearson`` = Pearson partial correlation of the summary with ``g`` controlling for
  length: the correlation of the residuals of the least-squares fits ``summary ~ 1 + length`` and
  ``g ~ 1 + length``; ``partial_spearman`` = the same on ranks (midranks) of summary, g and
  length, robust to a monotone but nonlinear length effect. p-values from
  ``t = r sqrt((n - 3) / (1 - r^2))`` with ``n - 3`` degrees of freedom.
  A ``partial`` near 0 while ``r_group`` is not says the group difference is carried by length.
  Exploratory, and only where the groups' lengths overlap (the same common-support rule as the
  primary analysis, :mod:`.primary`): without overlap a partial correlation is extrapolation, and
  its row is NaN with ``support = False``. The findings use the primary analysis, not this table.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .groups import Group


MIN_OVERLAP = 3  # common support of two groups' lengths: values of each inside the other's range ...
MIN_OVERLAP_FRACTION = 0.25  # ... and this share of each group
LENGTH_COLUMNS = ["group", "role", "metric", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
PARTIAL_COLUMNS = ["group_a", "group_b", "role", "metric", "n", "support", "r_group", "partial_pearson", "partial_pearson_p",
                   "partial_spearman", "partial_spearman_p"]


def layer_mean(group: Group, metric: str = "nuclear") -> np.ndarray:
    """(n, R) per-example mean over layers; NaN if any layer of the depth is missing for that role."""
    x = group.values[metric]  # (n, R, L)
    present = np.isfinite(x).any(axis=0)  # (R, L): layers where the role is measured at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(np.where(present[None], x, np.nan), axis=2)  # structural gaps do not count
    complete = (np.isfinite(x) | ~present[None]).all(axis=2)
    return np.where(complete, out, np.nan)


def _corr(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (np.nan,) * 4
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    return float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue)


def length_table(groups: list[Group], metric: str = "nuclear") -> pd.DataFrame:
    rows = []
    for g in groups:
        if not g.available(metric):
            continue
        y = layer_mean(g, metric)
        for r, s in enumerate(g.series):
            ok = np.isfinite(y[:, r]) & np.isfinite(g.lengths)
            rows.append((g.label, s, metric, int(ok.sum()), *_corr(g.lengths[ok], y[ok, r])))
    return pd.DataFrame(rows, columns=LENGTH_COLUMNS)


def partial_corr(y: np.ndarray, g: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Pearson partial correlation of y and g given x (residuals of OLS on [1, x]); (r, p)."""
    n = len(y)
    if n < 4 or np.ptp(g) == 0:
        return np.nan, np.nan
    design = np.column_stack([np.ones(n), x])  # (n, 2)
    res_y = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    res_g = g - design @ np.linalg.lstsq(design, g, rcond=None)[0]
    den = np.sqrt((res_y @ res_y) * (res_g @ res_g))
    if den == 0:
        return np.nan, np.nan
    r = float(np.clip(res_y @ res_g / den, -1.0, 1.0))
    t = r * np.sqrt((n - 3) / max(1.0 - r * r, 1e-300))
    return r, float(2 * stats.t.sf(abs(t), n - 3))


def inside_counts(la: np.ndarray, lb: np.ndarray) -> tuple[int, int]:
    """How many values of ``la`` lie inside the range of ``lb``, and of ``lb`` inside the range of ``la`` (0, 0 if either is empty)."""
    if len(la) == 0 or len(lb) == 0:
        return 0, 0
    return int(((la >= lb.min()) & (la <= lb.max())).sum()), int(((lb >= la.min()) & (lb <= la.max())).sum())


def overlaps(la: np.ndarray, lb: np.ndarray) -> bool:
    """Whether two samples of lengths share enough common support: at least ``MIN_OVERLAP`` values and
    ``MIN_OVERLAP_FRACTION`` of each inside the other's range (the rule of :mod:`.primary`)."""
    in_a, in_b = inside_counts(la, lb)
    return min(in_a, in_b) >= MIN_OVERLAP and in_a >= MIN_OVERLAP_FRACTION * len(la) and in_b >= MIN_OVERLAP_FRACTION * len(lb)


def partial_table(groups: list[Group], metric: str = "nuclear") -> pd.DataFrame:
    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            if not (a.available(metric) and b.available(metric)) or a.series != b.series:
                continue
            names, ya = summaries(a, metric)
            _, yb = summaries(b, metric)
            for r, s in enumerate(names):
                y = np.concatenate([ya[:, r], yb[:, r]])
                g = np.concatenate([np.zeros(a.n), np.ones(b.n)])
                x = np.concatenate([a.lengths, b.lengths])
                ok = np.isfinite(y) & np.isfinite(x)
                y, g, x = y[ok], g[ok], x[ok]
                r_group = float(np.corrcoef(y, g)[0, 1]) if len(y) > 2 and np.ptp(g) > 0 and np.ptp(y) > 0 else np.nan
                support = overlaps(x[g == 0], x[g == 1])
                pp = partial_corr(y, g, x) if support else (np.nan, np.nan)
                ps = partial_corr(*(stats.rankdata(v) for v in (y, g, x))) if support else (np.nan, np.nan)
                rows.append((a.label, b.label, s, metric, int(ok.sum()), support, r_group, *pp, *ps))
    return pd.DataFrame(rows, columns=PARTIAL_COLUMNS)


def length_points(groups: list[Group], metric: str = "nuclear") -> pd.DataFrame:
    """The scatter's points: group, id, n_response_tokens, role, and the per-example layer mean of ``metric``."""
    frames = []
    for g in groups:
        if not g.available(metric):
            continue
        y = layer_mean(g, metric)  # (n, R)
        frames.append(pd.DataFrame({
            "group": g.label,
            "id": np.repeat(g.ids, len(g.series)),
            "n_response_tokens": np.repeat(g.lengths, len(g.series)),
            "role": np.tile(np.asarray(g.series, dtype=object), g.n),
            metric: y.ravel(),
        }))
    cols = ["group", "id", "n_response_tokens", "role", metric]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def summaries(group: Group, metric: str) -> tuple[list[str], np.ndarray]:
    """Per-example summaries of ``metric``: per role the mean over layers, and ``all`` the mean of those over roles; (names, (n, R+1))."""
    y = layer_mean(group, metric)  # (n, R)
    allr = np.where(np.isfinite(y).all(axis=1), np.nanmean(np.where(np.isfinite(y), y, 0), axis=1), np.nan) if y.shape[1] else np.full(group.n, np.nan)
    return ["all", *group.series], np.column_stack([allr, y])
