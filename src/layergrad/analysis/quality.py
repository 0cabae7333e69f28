"""The quality study's effects: for each quality metric (and model, and pool), its high split against
its low split on spectral properties of the gradients.

:func:`quality_effects` is the one place where the study's statistics are chosen: the pre-specified
primary analysis of :mod:`.primary` (independent samples: the splits hold different instructions),
per cell and property on the geometric mean over roles of each example's layer means: the ratio
high / low overall, and at equal response length where the splits' lengths overlap (``ln y ~ 1 +
group + ln length``). Holm's adjustment runs over every cell and property of the study (one family
for the overall p-values, one for those at equal length), and each row gets its verdict word
(:mod:`.verdicts`). The SIGN compared with the paper's claim is that of the effect at equal length
where there is one (``basis = "at equal length"``), else of the overall effect (``basis = "overall,
not length-controlled"``): +1 / -1 where it lies above / below 1 with a Holm-adjusted p below 0.05
(``effect_p_holm``, the verdicts' rule), 0 otherwise.

The follow-up paper's claim (Li et al. 2025, arXiv:2504.10766): higher-quality data have lower nuclear
norms and higher effective ranks (:data:`CLAIM`: the expected sign of log(high / low)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .groups import Group
from .length import inside_counts, overlaps, partial_corr
from .multiplicity import holm
from .primary import ALL_ROLES, primary_table
from .verdicts import ALPHA, verdict

#: property -> the sign of log(high / low) the paper reports (-1: high quality has the lower value)
CLAIM = {"nuclear": -1, "effective_rank": +1}
PROPERTIES = ("nuclear", "effective_rank")
ANALYSIS = ("ratio of geometric means high/low (geometric mean over roles of each example's layer means), overall and at equal "
            "length (ln y ~ 1 + group + ln length, HC3) where the lengths overlap; Holm over the study")
COLUMNS = ["model", "pool", "metric", "property", "n_high", "n_low", "ratio", "ratio_ci_low", "ratio_ci_high", "p_holm",
           "length_control", "adj_ratio", "adj_ci_low", "adj_ci_high", "adj_p_holm", "verdict", "basis", "effect", "effect_ci_low",
           "effect_ci_high", "effect_p_holm", "sign", "claim", "agrees", "median_tokens_high", "median_tokens_low", "length_overlap", "analysis"]


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
    inside = sum(inside_counts(a, b))
    return float(inside / (len(a) + len(b)))


def _sign(effect: float, p_holm: float) -> int:
    """+1 / -1 when the effect is above / below 1 with a Holm-adjusted p below :data:`.verdicts.ALPHA` (the
    verdicts' rule), else 0 (the sign is not settled)."""
    if not (np.isfinite(effect) and np.isfinite(p_holm)) or p_holm >= ALPHA:
        return 0
    return 1 if effect > 1 else -1 if effect < 1 else 0


def _effect_row(ref: Group, other: Group, properties) -> list[dict]:
    """The primary analysis of ``other`` against ``ref`` (independent samples), one dict per property: the ratio
    other / ref overall and at equal length, with the lengths of both."""
    t = primary_table([ref, other], list(properties), pairing="none")
    med = lambda g: float(np.nanmedian(g.lengths)) if np.isfinite(g.lengths).any() else np.nan  # noqa: E731
    return [{"property": r["metric"], "n_other": r["n_b"], "n_ref": r["n_a"], "ratio": r["ratio"], "ratio_ci_low": r["ci_low"],
             "ratio_ci_high": r["ci_high"], "p_value": r["p_value"], "length_control": r["length_control"], "adj_ratio": r["adj_ratio"],
             "adj_ci_low": r["adj_ci_low"], "adj_ci_high": r["adj_ci_high"], "adj_p_value": r["adj_p_value"],
             "median_tokens_other": med(other), "median_tokens_ref": med(ref), "length_overlap": length_overlap(other.lengths, ref.lengths)}
            for _, r in t[t["role"] == ALL_ROLES].iterrows()]


def _judge(df: pd.DataFrame, claim: dict) -> pd.DataFrame:
    """Holm over the rows (overall and at equal length apart), the verdict words, the effect on its basis and its
    sign, and whether that sign is ``claim``'s (property -> expected sign of log(ratio))."""
    df["p_holm"] = holm(df["p_value"].to_numpy(float))
    df["adj_p_holm"] = holm(df["adj_p_value"].to_numpy(float))
    df["verdict"] = [verdict({**r, "ci_low": r["ratio_ci_low"], "ci_high": r["ratio_ci_high"]}) for r in df.to_dict("records")]
    at_equal = df["length_control"].isin(["equal", "model"])
    df["basis"] = np.where(at_equal, "at equal length", "overall, not length-controlled")
    for col, adj, raw in (("effect", "adj_ratio", "ratio"), ("effect_ci_low", "adj_ci_low", "ratio_ci_low"),
                          ("effect_ci_high", "adj_ci_high", "ratio_ci_high")):
        df[col] = np.where(at_equal, df[adj], df[raw])
    df["effect_p_holm"] = np.where(at_equal, df["adj_p_holm"], df["p_holm"])
    df["sign"] = [_sign(e, p) for e, p in zip(df["effect"], df["effect_p_holm"])]
    claims = [claim.get(p) for p in df["property"]]  # None where the paper claims nothing (NaN in the column)
    df["claim"] = claims
    df["agrees"] = ["" if cl is None else "unsettled" if sg == 0 else "yes" if sg == cl else "no" for sg, cl in zip(df["sign"], claims)]
    return df


def quality_effects(cells: list[QualityCell], properties=PROPERTIES) -> pd.DataFrame:
    """One row per cell and property (:data:`COLUMNS`, module docstring): high vs low, and whether the effect's
    sign agrees with the paper's claim (``agrees``: yes | no | unsettled, or empty where the paper claims none)."""
    names = {"n_other": "n_high", "n_ref": "n_low", "median_tokens_other": "median_tokens_high", "median_tokens_ref": "median_tokens_low"}
    rows = [{"model": c.model, "pool": c.pool, "metric": c.metric, **{names.get(k, k): v for k, v in r.items()}, "analysis": ANALYSIS}
            for c in cells for r in _effect_row(c.low, c.high, properties)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return _judge(pd.DataFrame(rows), CLAIM)[COLUMNS]


# -- reasoning traces against the instruction splits ---------------------------------------------
#: The follow-up paper: reasoning data (R1 traces) have the highest effective ranks; no claim on the nuclear norm.
REASONING_CLAIM = {"effective_rank": +1}
REASONING_COLUMNS = ["model", "reasoning", "against", "property", "n_reasoning", "n_against", "ratio", "ratio_ci_low", "ratio_ci_high",
                     "p_holm", "length_control", "adj_ratio", "adj_ci_low", "adj_ci_high", "adj_p_holm", "verdict", "basis", "effect",
                     "effect_ci_low", "effect_ci_high", "effect_p_holm", "sign", "claim", "agrees", "median_tokens_reasoning",
                     "median_tokens_against", "length_overlap"]


@dataclass
class ReasoningCell:
    """A reasoning group (e.g. R1 traces) and one instruction split, measured on one model."""

    model: str
    reasoning: Group
    against: Group


def reasoning_effects(cells: list[ReasoningCell], properties=PROPERTIES) -> pd.DataFrame:
    """One row per cell and property: the reasoning group over the instruction split (ratio reasoning / split),
    by the same analysis as :func:`quality_effects`, Holm over these rows; ``agrees`` against :data:`REASONING_CLAIM`."""
    names = {"n_other": "n_reasoning", "n_ref": "n_against", "median_tokens_other": "median_tokens_reasoning",
             "median_tokens_ref": "median_tokens_against"}
    rows = [{"model": c.model, "reasoning": c.reasoning.label, "against": c.against.label, **{names.get(k, k): v for k, v in r.items()}}
            for c in cells for r in _effect_row(c.against, c.reasoning, properties)]
    if not rows:
        return pd.DataFrame(columns=REASONING_COLUMNS)
    return _judge(pd.DataFrame(rows), REASONING_CLAIM)[REASONING_COLUMNS]


# -- exploratory: the records' own quality scores against the spectral summaries --------------------
CORRELATION_COLUMNS = ["model", "pool", "score", "property", "n", "spearman", "p_value", "length_support", "partial_spearman",
                       "partial_p_value"]


def score_correlations(frame: pd.DataFrame, scores: list[str], properties=PROPERTIES) -> pd.DataFrame:
    """Per model and pool, each score against each property over the scored examples (``frame``: one row
    per example with ``model``, ``pool``, ``n_response_tokens``, the scores and the properties): Spearman's
    rho (``scipy.stats.spearmanr``) and the partial rank correlation on response length
    (:func:`.length.partial_corr` on midranks). The partial one only where the lengths of the examples
    above the score's median and of those at or below it overlap (``length_support``,
    :func:`.length.overlaps`, the primary analysis's rule; where more than half share the top value,
    the split is below that value): elsewhere it would be extrapolation, and it is NaN. Exploratory."""
    from scipy import stats

    rows = []
    for (model, pool), g in frame.groupby(["model", "pool"], sort=False):
        for s in scores:
            for p in properties:
                d = g[[s, p, "n_response_tokens"]].apply(pd.to_numeric, errors="coerce").dropna()
                if len(d) < 4 or d[s].nunique() < 2 or d[p].nunique() < 2:
                    continue
                x, y, n_tok = (d[c].to_numpy(float) for c in (s, p, "n_response_tokens"))
                rho, pv = stats.spearmanr(x, y)
                above = x > np.median(x)
                if not above.any():  # more than half share the top value (integer scores): split below it
                    above = x >= np.median(x)
                support = bool(above.any() and (~above).any() and overlaps(n_tok[above], n_tok[~above]))
                prho, ppv = (partial_corr(stats.rankdata(y), stats.rankdata(x), stats.rankdata(n_tok)) if support
                             else (float("nan"), float("nan")))
                rows.append({"model": model, "pool": pool, "score": s, "property": p, "n": len(d), "spearman": float(rho),
                             "p_value": float(pv), "length_support": support, "partial_spearman": prho, "partial_p_value": ppv})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


# -- the gradients' cosines per split (the paper: near zero within a layer and between adjacent layers)
COSINE_COLUMNS = ["model", "pool", "metric", "split", "kind", "n", "mean", "ci_low", "ci_high", "mean_abs"]


def cosine_summary(cells: list[QualityCell], level: float = 0.95) -> pd.DataFrame:
    """Per cell, split (high, low) and cosine kind (``next_layer``, ``q_o``, ``k_v``, ``gapK``): each
    example's mean cosine over roles and layers, and over the examples their mean with a Student t
    interval (``level``) and the mean of each example's mean absolute cosine. No rows where the runs
    hold no cosines (made without ``cosine = true``)."""
    from scipy import stats

    rows = []
    for c in cells:
        for split, g in (("high", c.high), ("low", c.low)):
            for kind, (_, arr) in g.cosine.items():
                flat = arr.reshape(len(arr), -1)
                seen = np.isfinite(flat).any(axis=1)
                if not seen.any():
                    continue
                per_ex = np.nanmean(flat[seen], axis=1)
                per_abs = np.nanmean(np.abs(flat[seen]), axis=1)
                n, mean = len(per_ex), float(per_ex.mean())
                half = float(stats.t.ppf(0.5 + level / 2, n - 1) * per_ex.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
                rows.append({"model": c.model, "pool": c.pool, "metric": c.metric, "split": split, "kind": kind, "n": n,
                             "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "mean_abs": float(per_abs.mean())})
    return pd.DataFrame(rows, columns=COSINE_COLUMNS)
