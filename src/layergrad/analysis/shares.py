"""Where in the response the gradient comes from: curves of token shares (``run --token-shares``).

Input: the shares table (:data:`layergrad.store.schema.SHARES`, one row per example, segment,
module group and token). For one example and (segment, module group), the response's relative
positions ``0..1`` are cut into ``bins`` equal bins (``[k/B, (k+1)/B)``, the last one closed)::

    mass_k = sum of the shares of the response tokens whose rel_position falls in bin k

The curve is the mean of ``mass_k`` over the group's examples (mean, not a density: a flat
curve of a response holding all of the gradient sits at ``1 / bins``); ``prompt_share`` is the
mean over examples of the sum of the prompt tokens' shares, so per example
``prompt + sum_k mass_k = 1``. Examples whose shares are NaN (a zero gradient) are left out of
that (segment, module group) only; ``n`` counts the examples used.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

N_BINS = 10
SHARE_CURVE_COLUMNS = ["group", "segment", "module_group", "bin", "rel_low", "rel_high", "share", "n"]
SHARE_SUMMARY_COLUMNS = ["group", "segment", "module_group", "n", "prompt_share", "response_share", "last_bin_share"]


def _masses(shares: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Per example, segment and module group: the prompt's share and each bin's mass (columns 0..bins-1)."""
    d = shares.copy()
    d["bin"] = np.where(d["response"], np.minimum(np.floor(d["rel_position"].fillna(0) * bins), bins - 1), -1).astype(int)
    keys = ["id", "segment", "module_group"]
    bad = d.groupby(keys)["share"].transform(lambda s: bool(s.isna().any()))
    d = d[~bad]
    m = d.pivot_table(index=keys, columns="bin", values="share", aggfunc="sum", fill_value=0.0)
    for k in range(-1, bins):
        if k not in m.columns:
            m[k] = 0.0
    return m[list(range(-1, bins))].reset_index()


def share_tables(shares: pd.DataFrame, group_of: dict[str, str], bins: int = N_BINS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(curve, summary)``: SHARE_CURVE_COLUMNS and SHARE_SUMMARY_COLUMNS, for the examples in ``group_of`` (id -> group label)."""
    d = shares[shares["id"].isin(set(group_of))]
    if len(d) == 0:
        return pd.DataFrame(columns=SHARE_CURVE_COLUMNS), pd.DataFrame(columns=SHARE_SUMMARY_COLUMNS)
    m = _masses(d, bins)
    m.insert(0, "group", m["id"].map(group_of))
    curve, summary = [], []
    order = list(dict.fromkeys(group_of.values()))
    for (g, seg, mg), part in sorted(m.groupby(["group", "segment", "module_group"], sort=False),
                                     key=lambda kv: (order.index(kv[0][0]), ("early", "middle", "late").index(kv[0][1]), kv[0][2])):
        n = len(part)
        for k in range(bins):
            curve.append({"group": g, "segment": seg, "module_group": mg, "bin": k, "rel_low": k / bins, "rel_high": (k + 1) / bins,
                          "share": float(part[k].mean()), "n": n})
        summary.append({"group": g, "segment": seg, "module_group": mg, "n": n, "prompt_share": float(part[-1].mean()),
                        "response_share": float(part[list(range(bins))].sum(axis=1).mean()), "last_bin_share": float(part[bins - 1].mean())})
    return pd.DataFrame(curve, columns=SHARE_CURVE_COLUMNS), pd.DataFrame(summary, columns=SHARE_SUMMARY_COLUMNS)


def selected_examples(shares: pd.DataFrame, ids: list[str], k: int = 3) -> list[str]:
    """Up to ``k`` of ``ids`` (run order) to show shaded: the ones with the most response tokens, ties to the earlier."""
    n = shares[shares["response"] & shares["id"].isin(set(ids))].groupby("id")["position"].nunique()
    rank = {e: i for i, e in enumerate(ids)}
    return sorted(n.index, key=lambda e: (-int(n[e]), rank[e]))[:k]
