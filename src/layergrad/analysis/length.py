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
- :func:`matched_table`, per pair of groups, role (and ``all``: the mean over roles of the
  per-role summaries) and metric: a LENGTH-MATCHED comparison by coarsened exact matching. The
  pooled examples are put into strata of response length ``floor(ln(length) / ln(STRATUM_RATIO))``
  (each stratum spans a factor of 1.25 in length); strata holding examples of both groups are
  kept, the other examples are unmatched and left out (``n_matched_a``, ``n_matched_b``). Within a
  kept stratum ``s`` each group's mean is taken; the matched mean of a group is the average of
  its stratum means weighted by ``w_s = n_a,s + n_b,s``, the same weights for both groups, so the
  two matched means describe the same length distribution. ``ratio = matched mean_b / matched
  mean_a``; its 95% interval is a percentile bootstrap: each group's matched examples are
  resampled within the group, stratum means recomputed, and a stratum a resample leaves without
  one group's examples is dropped from that resample (weights renormalised); ``p_value`` is a two-sided stratified permutation test (labels permuted within strata,
  ``n_perm`` draws, ``(1 + #extreme) / (1 + n_perm)``) of the matched difference. Matching ignores
  pairing: paired groups (same instructions) are matched as independent samples.
  ``matched_fraction`` = matched examples / all examples; ``overlap_low``..``overlap_high`` is the
  range of lengths both groups cover (NaN when they do not overlap).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from . import bootstrap
from .groups import Group

STRATUM_RATIO = 1.25
MATCHED_COLUMNS = ["group_a", "group_b", "role", "metric", "n_a", "n_b", "n_matched_a", "n_matched_b", "n_strata",
                   "matched_fraction", "overlap_low", "overlap_high", "mean_a", "mean_b", "ratio", "ratio_ci_low", "ratio_ci_high",
                   "p_value"]

LENGTH_COLUMNS = ["group", "role", "metric", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
PARTIAL_COLUMNS = ["group_a", "group_b", "role", "metric", "n", "r_group", "partial_pearson", "partial_pearson_p", "partial_spearman", "partial_spearman_p"]


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
                pp = partial_corr(y, g, x)
                ps = partial_corr(*(stats.rankdata(v) for v in (y, g, x)))
                rows.append((a.label, b.label, s, metric, int(ok.sum()), r_group, *pp, *ps))
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


def length_strata(lengths: np.ndarray, ratio: float = STRATUM_RATIO) -> np.ndarray:
    """Stratum of each length: ``floor(ln(max(length, 1)) / ln(ratio))``; -1 for unknown lengths."""
    x = np.asarray(lengths, dtype=float)
    ok = np.isfinite(x)
    out = np.full(x.shape, -1, dtype=np.int64)
    out[ok] = np.floor(np.log(np.maximum(x[ok], 1.0)) / np.log(ratio) + 1e-9).astype(np.int64)
    return out


def matched_compare(ya: np.ndarray, yb: np.ndarray, la: np.ndarray, lb: np.ndarray, *, n_perm: int = 9999, n_boot: int = 1000,
                    rng: np.random.Generator | None = None, ratio: float = STRATUM_RATIO) -> dict:
    """Coarsened exact matching on length of one summary (module docstring). ya, la: (n_a,); yb, lb: (n_b,)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    fa, fb = np.isfinite(ya) & np.isfinite(la), np.isfinite(yb) & np.isfinite(lb)
    ya, la, yb, lb = ya[fa], la[fa], yb[fb], lb[fb]
    lo, hi = max(la.min(initial=np.inf), lb.min(initial=np.inf)), min(la.max(initial=-np.inf), lb.max(initial=-np.inf))
    out = {"n_a": len(ya), "n_b": len(yb), "n_matched_a": 0, "n_matched_b": 0, "n_strata": 0, "matched_fraction": 0.0,
           "overlap_low": lo if lo <= hi else np.nan, "overlap_high": hi if lo <= hi else np.nan,
           "mean_a": np.nan, "mean_b": np.nan, "ratio": np.nan, "ratio_ci_low": np.nan, "ratio_ci_high": np.nan, "p_value": np.nan}
    sa, sb = length_strata(la, ratio), length_strata(lb, ratio)
    common = np.intersect1d(sa, sb)
    if len(common) == 0:
        return out
    ma, mb = np.isin(sa, common), np.isin(sb, common)
    y = np.concatenate([ya[ma], yb[mb]])  # matched examples: a first
    lab = np.concatenate([np.zeros(ma.sum()), np.ones(mb.sum())])
    st = np.concatenate([sa[ma], sb[mb]])
    strata = np.searchsorted(common, st)  # 0..S-1
    S = len(common)
    n_as = np.bincount(strata[lab == 0], minlength=S).astype(float)
    n_bs = np.bincount(strata[lab == 1], minlength=S).astype(float)
    w = (n_as + n_bs) / (n_as + n_bs).sum()  # stratum weights, shared by both groups

    def diff_and_means(labels):  # labels: (P, N) 0/1 with the per-stratum counts of `lab`
        wb = w[strata] / n_bs[strata]
        wa = w[strata] / n_as[strata]
        mean_b = (labels * wb) @ y
        mean_a = ((1 - labels) * wa) @ y
        return mean_b - mean_a, mean_a, mean_b

    d_obs, m_a, m_b = diff_and_means(lab[None])
    out.update(n_matched_a=int(ma.sum()), n_matched_b=int(mb.sum()), n_strata=S,
               matched_fraction=float((ma.sum() + mb.sum()) / (len(ya) + len(yb))), mean_a=float(m_a[0]), mean_b=float(m_b[0]))
    out["ratio"] = float(m_b[0] / m_a[0]) if m_a[0] != 0 else np.nan
    # stratified permutation test: labels permuted within each stratum
    exceed = 0
    tol = 1e-9 * (np.abs(y).max() + np.finfo(float).tiny)
    members = [np.flatnonzero(strata == s) for s in range(S)]
    for start in range(0, n_perm, 512):
        c = min(512, n_perm - start)
        perm = np.empty((c, len(y)))
        for idx in members:
            perm[:, idx] = rng.permuted(np.tile(lab[idx], (c, 1)), axis=1)
        d, _, _ = diff_and_means(perm)
        exceed += int((np.abs(d) >= abs(d_obs[0]) - tol).sum())
    out["p_value"] = (exceed + 1.0) / (n_perm + 1.0)
    # bootstrap: each group's matched examples resampled (within the group); stratum means recomputed; a stratum that a
    # resample leaves without one group's examples is dropped from that resample and the weights renormalised
    onehot = np.eye(S)[strata]  # (N, S)
    w_s = (n_as + n_bs)
    sums, cnts = [], []
    for g in (0, 1):
        idx = np.flatnonzero(lab == g)
        c = bootstrap.resample_counts(len(idx), n_boot, rng)  # (B, n_g)
        sums.append((c * y[idx]) @ onehot[idx])  # (B, S)
        cnts.append(c @ onehot[idx])
    valid = (cnts[0] > 0) & (cnts[1] > 0)
    wv = np.where(valid, w_s, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = (np.where(valid, sums[0] / cnts[0], 0.0) * wv).sum(axis=1) / wv.sum(axis=1)
        mean_b = (np.where(valid, sums[1] / cnts[1], 0.0) * wv).sum(axis=1) / wv.sum(axis=1)
        boot = mean_b / mean_a
    boot[~np.isfinite(boot)] = np.nan
    if min(out["n_matched_a"], out["n_matched_b"]) >= 2:
        low, high = bootstrap.percentile_interval(boot[:, None], np.array([2]))
        out["ratio_ci_low"], out["ratio_ci_high"] = float(low[0]), float(high[0])
    return out


def summaries(group: Group, metric: str) -> tuple[list[str], np.ndarray]:
    """Per-example summaries of ``metric``: per role the mean over layers, and ``all`` the mean of those over roles; (names, (n, R+1))."""
    y = layer_mean(group, metric)  # (n, R)
    allr = np.where(np.isfinite(y).all(axis=1), np.nanmean(np.where(np.isfinite(y), y, 0), axis=1), np.nan) if y.shape[1] else np.full(group.n, np.nan)
    return ["all", *group.series], np.column_stack([allr, y])


def matched_table(groups: list[Group], metrics=("nuclear", "effective_rank"), *, n_perm: int = 9999, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Length-matched comparison of every pair of groups (module docstring). Columns: MATCHED_COLUMNS."""
    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            for metric in metrics:
                if not (a.available(metric) and b.available(metric)) or a.series != b.series:
                    continue
                names, ya = summaries(a, metric)
                _, yb = summaries(b, metric)
                for r, name in enumerate(names):
                    rng = bootstrap.group_rng(seed, f"{a.label}\0{b.label}\0{metric}\0{name}", "matching")
                    res = matched_compare(ya[:, r], yb[:, r], a.lengths, b.lengths, n_perm=n_perm, n_boot=n_boot, rng=rng)
                    rows.append({"group_a": a.label, "group_b": b.label, "role": name, "metric": metric, **res})
    return pd.DataFrame(rows, columns=MATCHED_COLUMNS)
