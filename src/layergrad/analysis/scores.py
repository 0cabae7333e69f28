"""Data-quality scores beside the gradient spectra: correlations and a high/low split.

Inputs are a run's :class:`~layergrad.store.Results` and its score table
(:func:`layergrad.analysis.selection.score_table`: one row per example, one column per METRIC name such as
``ifd``, ``loss``, ``effective_rank:attn:mean``). Pure functions, no plotting, no file I/O.

- :func:`score_summary`: the distribution of each score per group (the report's histograms/boxes).
- :func:`spearman_matrix`: Spearman rank correlations among scores over the ``ok`` examples,
  pairwise complete (an example with a NaN in one score leaves only the pairs with that score).
- :func:`split_ids`/:func:`split_groups`: the examples with the highest and the lowest scores
  (a ``fraction`` of the eligible ones each; ``0.5``: the two halves, the middle example of an odd
  count in neither), ranked as :func:`layergrad.analysis.selection.select` ranks (same eligibility, ties by
  input order). :func:`split_groups` gives two :class:`~layergrad.analysis.groups.Group`, so the
  per-layer curves of :mod:`curves` and :mod:`mad` apply to them unchanged.
- :func:`split_curves`: per half, role set and layer, the mean over examples of the per-example
  mean over that layer's modules of the role set (the follow-up paper's figure: nuclear norm and
  effective rank per layer, high vs low quality side by side); :func:`split_segments` the same
  averaged over the early/middle/late thirds and the whole depth.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .groups import Group, group_from_results

SUMMARY_COLUMNS = ["group", "score", "n", "n_nan", "mean", "std", "min", "q25", "median", "q75", "max"]
CURVE_COLUMNS = ["half", "roles", "layer", "metric", "mean", "n"]
SEGMENT_COLUMNS = ["half", "roles", "segment", "metric", "mean", "n"]


def score_columns(table: pd.DataFrame) -> list[str]:
    from layergrad.analysis.selection import ID_COLUMNS

    return [c for c in table.columns if c not in ID_COLUMNS and c not in ("ifd_reason", "rank", "selected")]


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "ok"] if "status" in table else table


def score_summary(table: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Per group (the table's ``group`` column) and score: count, NaNs, mean, sd and quantiles (ok examples)."""
    t = _ok(table)
    rows = []
    groups = list(dict.fromkeys(t["group"])) if "group" in t else [None]
    for g in groups:
        part = t[t["group"] == g] if g is not None else t
        for c in columns or score_columns(table):
            v = pd.to_numeric(part[c], errors="coerce").astype(float).to_numpy()
            f = v[np.isfinite(v)]
            q = np.quantile(f, [0, 0.25, 0.5, 0.75, 1]) if len(f) else [np.nan] * 5
            rows.append((g, c, len(f), int(len(v) - len(f)), f.mean() if len(f) else np.nan,
                         f.std(ddof=1) if len(f) > 1 else np.nan, *q))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def spearman_matrix(table: pd.DataFrame, columns: list[str] | None = None, min_n: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rho, n)``: square frames over ``columns`` (default: every score of the table).

    ``rho[a][b]`` is Spearman's rank correlation (Pearson on midranks) over the ok examples where
    both are finite; NaN when fewer than ``min_n`` such examples or a constant column.
    """
    cols = columns or score_columns(table)
    t = _ok(table)
    x = t[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    x = x.where(np.isfinite(x))
    rho = pd.DataFrame(np.nan, index=cols, columns=cols)
    n = pd.DataFrame(0, index=cols, columns=cols)
    for i, a in enumerate(cols):
        for b in cols[i:]:
            both = x[[a]].dropna() if a == b else x[[a, b]].dropna()
            if a == b:
                n.loc[a, a] = len(both)
                rho.loc[a, a] = 1.0 if len(both) >= min_n and both[a].nunique() > 1 else np.nan
                continue
            n.loc[a, b] = n.loc[b, a] = len(both)
            if len(both) < min_n or both[a].nunique() < 2 or both[b].nunique() < 2:
                continue
            r = both.rank().corr().iloc[0, 1]
            rho.loc[a, b] = rho.loc[b, a] = r
    return rho, n


def split_ids(table: pd.DataFrame, by: str, fraction: float = 0.5, *, ifd_filter: bool = False) -> tuple[list[str], list[str]]:
    """``(high, low)`` ids: the first and the last ``floor(fraction * eligible)`` eligible examples,
    ranked once as :func:`layergrad.analysis.selection.select` ranks them (highest first, ties by input order).

    One ranking, cut at both ends: the two parts are disjoint also when ties straddle a cut.
    """
    from layergrad.analysis.selection import Amount, parse_metric, select

    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5] so the halves do not overlap, got {fraction}")
    sel = select(table, parse_metric(by), Amount("top", fraction=fraction), ifd_filter=ifd_filter)
    k = len(sel.ids)
    return sel.ranked[:k], sel.ranked[::-1][:k]


def subset(results, ids):
    """``results`` restricted to the examples ``ids`` (all tables)."""
    keep = set(ids)
    from dataclasses import replace

    return replace(
        results,
        examples=results.examples[results.examples["id"].isin(keep)].reset_index(drop=True),
        modules=results.modules[results.modules["id"].isin(keep)].reset_index(drop=True),
        cosine=results.cosine[results.cosine["id"].isin(keep)].reset_index(drop=True) if len(results.cosine) else results.cosine,
    )


def split_groups(results, table: pd.DataFrame, by: str, fraction: float = 0.5, *, ifd_filter: bool = False) -> list[Group]:
    """Two groups, ``high <by>`` and ``low <by>``, for :func:`curves.curve_table` and friends."""
    from layergrad.analysis.selection import parse_metric

    name = parse_metric(by).name
    high, low = split_ids(table, by, fraction, ifd_filter=ifd_filter)
    return [group_from_results(f"high {name}", subset(results, high)), group_from_results(f"low {name}", subset(results, low))]


def measured_role_sets(results) -> tuple[str, ...]:
    """The role sets a run measured, as :func:`layergrad.analysis.selection.default_metrics` picks them: ``attn``
    and/or ``mlp``, and ``all`` when it measured neither (e.g. only an lm_head or unknown roles)."""
    from layergrad.analysis.selection import ROLE_GROUPS

    mods = results.modules
    roles = set(mods.loc[mods["layer"] >= 0, "role"].dropna()) if len(mods) else set()
    return tuple(g for g in ("attn", "mlp") if roles & set(ROLE_GROUPS[g])) or ("all",)


def split_curves(results, table: pd.DataFrame, by: str, fraction: float = 0.5, *, metrics=("nuclear", "effective_rank"),
                 roles=None, ifd_filter: bool = False) -> pd.DataFrame:
    """Columns ``half, roles, layer, metric, mean, n``: per-layer curves of the two halves.

    ``roles``: role sets (``attn``, ``mlp``, ``all``, ``q,k``, ...); default: those the run measured (:func:`measured_role_sets`).

    ``mean`` is the mean over the half's examples of METRIC ``<metric>:<roles>:<layer>`` (the
    example's mean over that layer's modules of the role set); ``n`` the examples with a value.
    """
    from layergrad.analysis.selection import run_depth, metric_values, parse_metric

    high, low = split_ids(table, by, fraction, ifd_filter=ifd_filter)
    roles = measured_role_sets(results) if roles is None else roles
    rows = []
    for metric in metrics:
        for r in roles:
            for layer in range(run_depth(results)):
                v = metric_values(results, parse_metric(f"{metric}:{r}:{layer}"))
                for half, ids in (("high", high), ("low", low)):
                    x = v.reindex(ids).to_numpy(float)
                    x = x[np.isfinite(x)]
                    rows.append((half, r, layer, metric, x.mean() if len(x) else np.nan, len(x)))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def split_segments(results, table: pd.DataFrame, by: str, fraction: float = 0.5, *, metrics=("nuclear", "effective_rank"),
                   roles=None, ifd_filter: bool = False) -> pd.DataFrame:
    """Columns ``half, roles, segment, metric, mean, n``: as :func:`split_curves`, per third and overall."""
    from layergrad.analysis.selection import metric_values, parse_metric

    high, low = split_ids(table, by, fraction, ifd_filter=ifd_filter)
    roles = measured_role_sets(results) if roles is None else roles
    rows = []
    for metric in metrics:
        for r in roles:
            for seg in ("early", "middle", "late", "mean"):
                v = metric_values(results, parse_metric(f"{metric}:{r}:{seg}"))
                for half, ids in (("high", high), ("low", low)):
                    x = v.reindex(ids).to_numpy(float)
                    x = x[np.isfinite(x)]
                    rows.append((half, r, "all" if seg == "mean" else seg, metric, x.mean() if len(x) else np.nan, len(x)))
    return pd.DataFrame(rows, columns=SEGMENT_COLUMNS)
