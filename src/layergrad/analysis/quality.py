"""The quality study's effects: for each quality metric (and model, and pool), its high split against
its low split on spectral properties of the gradients.

:func:`quality_effects` is the one place where the study's statistics are chosen. Today it calls
:func:`layergrad.analysis.compare.overall_table` (the ratio of means high / low of each example's mean
over layers and roles, a bootstrap interval and a permutation test): NOT length-controlled. The
length-controlled analysis of the statistics issue (issue 21) replaces that call here, and nothing
else has to change; until then every row carries the lengths of both splits so a reader sees where
length could explain the effect.

The follow-up paper's claim (Li et al. 2025, arXiv:2504.10766): higher-quality data have lower nuclear
norms and higher effective ranks (:data:`CLAIM`: the expected sign of log(high / low)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .compare import overall_table
from .groups import Group

#: property -> the sign of log(high / low) the paper reports (-1: high quality has the lower value)
CLAIM = {"nuclear": -1, "effective_rank": +1}
PROPERTIES = ("nuclear", "effective_rank")
ANALYSIS = "ratio of means high/low, mean over layers and roles (overall_table); not length-controlled"
COLUMNS = ["model", "pool", "metric", "property", "n_high", "n_low", "mean_high", "mean_low", "ratio", "ratio_ci_low",
           "ratio_ci_high", "p_value", "auroc", "sign", "claim", "agrees", "median_tokens_high", "median_tokens_low",
           "length_overlap", "analysis"]


@dataclass
class QualityCell:
    """One metric's two splits measured on one model (``pool``: the other axes' labels, e.g. ``her``)."""

    model: str
    pool: str
    metric: str
    high: Group
    low: Group


def length_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of all finite lengths of ``a`` and ``b`` that lie inside the other split's range: 1 when
    the ranges coincide, 0 when no example of one split is as long as any of the other."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    inside = ((a >= b.min()) & (a <= b.max())).sum() + ((b >= a.min()) & (b <= a.max())).sum()
    return float(inside / (len(a) + len(b)))


def _sign(low: float, high: float) -> int:
    """+1 / -1 when the interval of the ratio lies above / below 1, else 0 (the sign is not settled)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return 0
    return 1 if low > 1 else -1 if high < 1 else 0


def quality_effects(cells: list[QualityCell], properties=PROPERTIES, *, n_perm: int = 2000, n_boot: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per cell and property (:data:`COLUMNS`): high vs low, and whether the effect's sign
    agrees with the paper's claim (``agrees``: yes | no | unsettled, or empty where the paper claims none)."""
    rows = []
    for c in cells:
        t = overall_table([c.low, c.high], list(properties), n_perm=n_perm, n_boot=n_boot, seed=seed, pairing="none")
        for _, r in t.iterrows():
            sign = _sign(r["ratio_ci_low"], r["ratio_ci_high"])
            claim = CLAIM.get(r["metric"])
            agrees = "" if claim is None else "unsettled" if sign == 0 else "yes" if sign == claim else "no"
            rows.append({"model": c.model, "pool": c.pool, "metric": c.metric, "property": r["metric"],
                         "n_high": r["n_b"], "n_low": r["n_a"], "mean_high": r["mean_b"], "mean_low": r["mean_a"],
                         "ratio": r["ratio"], "ratio_ci_low": r["ratio_ci_low"], "ratio_ci_high": r["ratio_ci_high"],
                         "p_value": r["p_value"], "auroc": r["auroc"], "sign": sign, "claim": claim, "agrees": agrees,
                         "median_tokens_high": float(np.nanmedian(c.high.lengths)) if np.isfinite(c.high.lengths).any() else np.nan,
                         "median_tokens_low": float(np.nanmedian(c.low.lengths)) if np.isfinite(c.low.lengths).any() else np.nan,
                         "length_overlap": length_overlap(c.high.lengths, c.low.lengths), "analysis": ANALYSIS})
    return pd.DataFrame(rows, columns=COLUMNS)


# -- exploratory: the records' own quality scores against the spectral summaries --------------------
CORRELATION_COLUMNS = ["model", "pool", "score", "property", "n", "spearman", "p_value", "partial_spearman", "partial_p_value"]


def _partial_rank_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Spearman correlation of ``x`` and ``y`` controlling for ``z``: the Pearson correlation of the ranks
    of ``x`` and ``y`` after a least-squares fit on the ranks of ``z`` is removed from each; its p-value
    from Student's t with ``n - 3`` degrees of freedom."""
    from scipy import stats

    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    A = np.column_stack([np.ones_like(rz), rz])
    ex = rx - A @ np.linalg.lstsq(A, rx, rcond=None)[0]
    ey = ry - A @ np.linalg.lstsq(A, ry, rcond=None)[0]
    if not (ex.std() > 0 and ey.std() > 0):
        return float("nan"), float("nan")
    r = float(np.corrcoef(ex, ey)[0, 1])
    df = len(x) - 3
    if df < 1 or abs(r) >= 1:
        return r, float("nan") if df < 1 else 0.0
    t = r * np.sqrt(df / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), df))


def score_correlations(frame: pd.DataFrame, scores: list[str], properties=PROPERTIES) -> pd.DataFrame:
    """Per model and pool, each score against each property over the scored examples (``frame``: one row
    per example with ``model``, ``pool``, ``n_response_tokens``, the scores and the properties): Spearman's
    rho (``scipy.stats.spearmanr``) and the partial rank correlation on response length. Exploratory."""
    from scipy import stats

    rows = []
    for (model, pool), g in frame.groupby(["model", "pool"], sort=False):
        for s in scores:
            for p in properties:
                d = g[[s, p, "n_response_tokens"]].apply(pd.to_numeric, errors="coerce").dropna()
                if len(d) < 4 or d[s].nunique() < 2 or d[p].nunique() < 2:
                    continue
                rho, pv = stats.spearmanr(d[s], d[p])
                prho, ppv = _partial_rank_correlation(d[s].to_numpy(float), d[p].to_numpy(float), d["n_response_tokens"].to_numpy(float))
                rows.append({"model": model, "pool": pool, "score": s, "property": p, "n": len(d), "spearman": float(rho),
                             "p_value": float(pv), "partial_spearman": prho, "partial_p_value": ppv})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
