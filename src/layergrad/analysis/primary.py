"""The pre-specified primary analysis: per pair of groups and headline metric, the effect overall
and at equal response length.

Written down before any data is seen (the report's Methods repeats it):

1. Outcome. Per example and role, the metric's mean over the layers; per example the headline
   value is the GEOMETRIC mean of those over the roles, ``y = mean_r ln(mean_l x[r, l])``, so no
   module decides the headline by its size (an ``o`` projection with ten times the nuclear norm
   of ``k`` weighs the same). Per role the same analysis is made on ``ln(mean_l x[r, l])``.
2. Units (:mod:`.design`): instructions. Examples sharing an instruction are averaged within it
   (a random intercept per instruction, fitted exactly); paired when the groups share
   instructions, independent otherwise.
3. Unadjusted effect: the ratio of geometric means, ``exp(mean(y_b) - mean(y_a))``, with its 95%
   t interval and p (:mod:`.effects`: paired t on the differences, or Welch).
4. Effect at equal length: the same ratio where ``ln(response tokens)`` is equal.
   - ``equal``: every pair has the same number of response tokens (e.g. one group cut to the
     other's lengths: an exact comparison at equal length), or, independent, every response of
     both groups has: the unadjusted effect IS the effect at equal length.
   - ``model``: paired, the within-pair regression ``d_i = b0 + b1 (ln len_b,i - ln len_a,i) +
     e_i`` (the pair intercepts of ``ln y ~ group + ln length + pair`` removed by differencing;
     ``statsmodels`` OLS), ``exp(b0)`` with its t interval; independent,
     ``ln y ~ 1 + group + ln length`` by OLS with HC3 (heteroscedasticity-consistent, MacKinnon &
     White 1985) standard errors and ``n - 3`` degrees of freedom, ``exp(b_group)``.
   - ``no common support``: the model would extrapolate. Required before it is fitted: paired, at
     least ``MIN_SIDE`` pairs whose b response is no longer than a's and ``MIN_SIDE`` whose b
     response is no shorter (equal length lies inside the data); independent, at least
     ``MIN_OVERLAP`` units and ``MIN_OVERLAP_FRACTION`` of each group's units inside the other
     group's range of log length. Without support no length-adjusted number is given.
   - ``lengths unknown``: a group without response lengths (imported without a tokenizer).
5. Multiplicity: the report's headline tests, every pair x headline metric, are one family for
   the unadjusted p and one for the p at equal length, each Holm-adjusted (``p_holm``,
   ``adj_p_holm``); the verdicts (:mod:`.verdicts`) read the adjusted values.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from . import effects
from .design import Design, design
from .groups import Group
from .length import inside_counts, layer_mean, overlaps
from .multiplicity import holm

HEADLINE = ("nuclear", "effective_rank")
ALPHA = 0.05
MIN_SIDE = 2
EQUAL_TOL = 1e-9
ALL_ROLES = "all"

PRIMARY_COLUMNS = [
    "group_a", "group_b", "metric", "role", "design", "pair_by", "clustered", "n_a", "n_b", "n_units_a", "n_units_b", "n_pairs",
    "n_left_a", "n_left_b", "n_used", "ratio", "ci_low", "ci_high", "p_value", "p_holm", "length_control", "adj_ratio",
    "adj_ci_low", "adj_ci_high", "adj_p_value", "adj_p_holm", "length_slope", "length_ratio", "overlap_a", "overlap_b", "cut",
    "reason",
]


def headline_values(group: Group, metric: str) -> tuple[list[str], np.ndarray]:
    """Per example: ``all`` (geometric mean over roles of the per-role layer means) and each role; names, (n, 1 + R) on the log scale.

    An example missing a role (or a layer of it) has no ``all`` value."""
    y = effects.log_positive(layer_mean(group, metric))  # (n, R)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        allr = np.where(np.isfinite(y).all(axis=1) & (y.shape[1] > 0), np.nanmean(y, axis=1) if y.shape[1] else np.nan, np.nan)
    return [ALL_ROLES, *group.series], np.column_stack([allr, y])


def _empty_row(a: Group, b: Group, d: Design, metric: str, role: str) -> dict:
    return {"group_a": a.label, "group_b": b.label, "metric": metric, "role": role, "design": d.kind, "pair_by": d.by or "",
            "clustered": d.clustered, "n_a": a.n, "n_b": b.n, "n_units_a": d.n_units_a, "n_units_b": d.n_units_b,
            "n_pairs": d.n_pairs, "n_left_a": d.n_left_a, "n_left_b": d.n_left_b, "n_used": 0, **{c: np.nan for c in (
                "ratio", "ci_low", "ci_high", "p_value", "p_holm", "adj_ratio", "adj_ci_low", "adj_ci_high", "adj_p_value",
                "adj_p_holm", "length_slope", "length_ratio", "overlap_a", "overlap_b")}, "length_control": "", "reason": "",
            "cut": cut_note(a, b)}


def cut_note(a: Group, b: Group) -> str:
    """How a group's responses were cut (``layergrad run --truncate-to`` / ``--truncate-response``), from its manifest."""
    for g in (b, a):
        m = g.manifest or {}
        if m.get("truncate_to"):
            partner = ", ".join(map(str, m.get("truncate_to_groups") or [])) or str(m["truncate_to"])
            return f"{g.label}'s responses cut to the lengths of {partner}"
        if m.get("truncate_response"):
            return f"{g.label}'s responses cut after {int(m['truncate_response'])} tokens"
    return ""


def effect(ya: np.ndarray, yb: np.ndarray, la: np.ndarray, lb: np.ndarray, paired: bool) -> dict:
    """The primary analysis of one outcome on units (module docstring, items 3 and 4).

    ya, yb: log outcome per unit; la, lb: log length per unit (NaN unknown); paired: unit i of a and b form a pair."""
    import statsmodels.api as sm

    out: dict = {"reason": ""}
    if paired:
        keep = np.isfinite(ya) & np.isfinite(yb)
        ya, yb, la, lb = ya[keep], yb[keep], la[keep], lb[keep]
        n_used = int(keep.sum())
    else:
        ka, kb = np.isfinite(ya), np.isfinite(yb)
        ya, la, yb, lb = ya[ka], la[ka], yb[kb], lb[kb]
        n_used = int(ka.sum() + kb.sum())
    out["n_used"] = n_used
    n_min = len(ya) if paired else min(len(ya), len(yb))
    if n_min < 2:
        out["length_control"] = "too few"
        out["reason"] = (f"only {n_min} pair{'s' if n_min != 1 else ''} with finite values" if paired else
                         f"a group has only {n_min} unit{'s' if n_min != 1 else ''} with finite values") + "; no interval or test is possible"
        return out
    st = (effects.paired if paired else effects.welch)(ya[:, None], yb[:, None])
    out.update(ratio=st["ratio"][0], ci_low=st["ci_low"][0], ci_high=st["ci_high"][0], p_value=st["p_value"][0])
    if not np.isfinite(st["p_value"][0]):
        out["length_control"] = "too few"
        out["reason"] = "no spread in the values (every difference equal, or constant values); no interval or test is possible"
        return out
    if not (np.isfinite(la).all() and np.isfinite(lb).all()):
        out["length_control"] = "lengths unknown"
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        out["length_ratio"] = float(np.exp(np.mean(lb) - np.mean(la)))
    if paired:
        dl = lb - la
        d = yb - ya
        if np.all(np.abs(dl) <= EQUAL_TOL):
            out.update(length_control="equal", adj_ratio=out["ratio"], adj_ci_low=out["ci_low"], adj_ci_high=out["ci_high"],
                       adj_p_value=out["p_value"])
            return out
        side_le, side_ge = int((dl <= EQUAL_TOL).sum()), int((dl >= -EQUAL_TOL).sum())
        out["overlap_a"], out["overlap_b"] = side_le, side_ge
        if min(side_le, side_ge) < MIN_SIDE or len(d) < 4:
            out["length_control"] = "no common support"
            return out
        fit = sm.OLS(d, sm.add_constant(dl, has_constant="add")).fit()
        b0, lo, hi, p, slope = fit.params[0], *fit.conf_int(ALPHA)[0], fit.pvalues[0], fit.params[1]
    else:
        if np.ptp(np.concatenate([la, lb])) <= EQUAL_TOL:  # every response equally long
            out.update(length_control="equal", adj_ratio=out["ratio"], adj_ci_low=out["ci_low"], adj_ci_high=out["ci_high"],
                       adj_p_value=out["p_value"])
            return out
        out["overlap_a"], out["overlap_b"] = inside_counts(la, lb)
        if not overlaps(la, lb) or len(ya) + len(yb) < 5:
            out["length_control"] = "no common support"
            return out
        y = np.concatenate([ya, yb])
        X = np.column_stack([np.ones(len(y)), np.r_[np.zeros(len(ya)), np.ones(len(yb))], np.concatenate([la, lb])])
        fit = sm.OLS(y, X).fit(cov_type="HC3", use_t=True)
        b0, lo, hi, p, slope = fit.params[1], *fit.conf_int(ALPHA)[1], fit.pvalues[1], fit.params[2]
    if not np.isfinite(p):
        out["length_control"] = "no common support"
        out["reason"] = "the length model cannot be fitted (length and group are collinear)"
        return out
    out.update(length_control="model", adj_ratio=float(np.exp(b0)), adj_ci_low=float(np.exp(lo)), adj_ci_high=float(np.exp(hi)),
               adj_p_value=float(p), length_slope=float(slope))
    return out


def primary_rows(a: Group, b: Group, metric: str, pairing: str = "auto") -> list[dict]:
    """Rows of the primary table for one pair of groups and metric: ``all`` roles first, then each role."""
    d = design(a, b, pairing)
    names, xa = headline_values(a, metric)
    names_b, xb = headline_values(b, metric)
    la = effects.log_positive(a.lengths)
    lb = effects.log_positive(b.lengths)
    ua, ub = d.aggregate(xa, xb)
    lua, lub = d.aggregate(la, lb)
    rows = []
    for r, name in enumerate(names):
        row = _empty_row(a, b, d, metric, name)
        if name not in names_b:
            continue
        rb = names_b.index(name)
        row.update(effect(ua[:, r], ub[:, rb], lua, lub, d.paired))
        rows.append(row)
    return rows


def primary_table(groups: list[Group], metrics=HEADLINE, *, pairing: str = "auto") -> pd.DataFrame:
    """Every pair of groups (a before b) x metric x (all roles, each role). ``p_holm`` and ``adj_p_holm`` are
    Holm-adjusted over the ``all`` rows of the whole table (the headline family); per-role rows are descriptive."""
    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            for m in metrics:
                if a.available(m) and b.available(m):
                    rows.extend(primary_rows(a, b, m, pairing))
    df = pd.DataFrame(rows, columns=PRIMARY_COLUMNS)
    head = df["role"] == ALL_ROLES
    df.loc[head, "p_holm"] = holm(df.loc[head, "p_value"].to_numpy(float))
    df.loc[head, "adj_p_holm"] = holm(df.loc[head, "adj_p_value"].to_numpy(float))
    return df
