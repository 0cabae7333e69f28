"""Evenness across layers, measured scale-free and corrected for sampling noise.

The paper's MAD (:mod:`.mad`) is in the metric's units: a curve of the same shape at a fifth of
the level has a fifth of the MAD, so "smaller MAD" says "smaller", not "more even". Evenness
here is the ROUGHNESS of the mean curve relative to its level, per group, role and segment::

    roughness = sqrt( max(0, mean_l [ (c_{l+1} - c_l)^2 - v_l / n ]) ) / mean_l c_l

with ``c`` the mean curve over the n examples, ``l`` running over the consecutive pairs inside
the segment, and ``v_l`` the sample variance over examples of the per-example step
``x_{i,l+1} - x_{i,l}``. The squared step of the mean curve overstates the true squared step by
exactly ``v_l / n`` in expectation (the noise of a mean; von Neumann's mean square successive
difference), so the subtraction removes the inflation that makes a noisy flat curve look rough.
It is the root-mean-square step per unit of level: unchanged when the curve is scaled, 0 for a
flat curve.

Intervals. The squared roughness ``theta = roughness^2`` is, up to the level in its denominator,
a U-statistic of degree two (``(c_{l+1}-c_l)^2 - v_l/n`` equals the mean over ordered pairs of
distinct examples ``i != j`` of ``s_i s_j``, with ``s`` the per-example steps), so it is close to
normal and its jackknife variance (leave one example out) is consistent. The 95% interval is
``theta +- t_{n-1} se_jack``, clipped at 0 and reported on the roughness scale (square roots).
In simulation (tests/test_evenness.py) it covers the true roughness at n = 8 and 12 with
per-layer noise of 10% and 30% of the level.

Comparison of two groups: the difference ``theta_b - theta_a`` with its jackknife standard error
(paired: leaving one pair out; independent: ``sqrt(se_a^2 + se_b^2)`` with ``min(n_a, n_b) - 1``
degrees of freedom, conservative), with its 95% interval (``diff_sq_ci_*``). The verdict of a row
uses the interval at level ``1 - 0.05 / R`` over the R roles compared (Bonferroni across the
roles of one pair, metric and segment, so "more even in some role" keeps a 5% error rate):
"more even" when that interval lies below 0, "less even" when above, else "no clear difference
in evenness". The ratio of roughness ``b / a`` is reported as the size of the difference.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .design import design
from .groups import Group
from .mad import SEGMENTS, segments

EVENNESS_COLUMNS = ["group", "role", "segment", "metric", "n", "roughness", "ci_low", "ci_high"]
EVENNESS_COMPARE_COLUMNS = ["group_a", "group_b", "role", "segment", "metric", "design", "n_a", "n_b", "roughness_a", "roughness_b",
                            "ratio", "diff_sq", "diff_sq_ci_low", "diff_sq_ci_high", "verdict"]
LEVEL = 0.95
MIN_N = 4


def theta(x: np.ndarray, layers: np.ndarray) -> float:
    """Squared noise-corrected relative roughness (module docstring) of complete curves x: (n, L) over ``layers``."""
    n = x.shape[0]
    xs = x[:, layers]  # (n, S)
    steps = np.diff(xs, axis=1)  # (n, S-1)
    m1 = steps.mean(axis=0)
    v = steps.var(axis=0, ddof=1)
    level = xs.mean()
    return float(np.mean(m1 ** 2 - v / n) / level ** 2) if level != 0 else np.nan


def jackknife(x: np.ndarray, layers: np.ndarray) -> tuple[float, np.ndarray]:
    """theta and its leave-one-out values (n,)."""
    return theta(x, layers), np.array([theta(np.delete(x, i, axis=0), layers) for i in range(x.shape[0])])


def _se(loo: np.ndarray) -> float:
    n = len(loo)
    return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def roughness(x: np.ndarray, layers: np.ndarray) -> tuple[float, float, float]:
    """Roughness of complete curves x: (n, L) over ``layers`` with its 95% interval (module docstring)."""
    n = x.shape[0]
    if n < MIN_N or len(layers) < 3:
        return np.nan, np.nan, np.nan
    t, loo = jackknife(x, layers)
    q = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * _se(loo)
    root = lambda v: float(np.sqrt(max(v, 0.0))) if np.isfinite(v) else np.nan  # noqa: E731
    return root(t), root(t - q), root(t + q)


def _complete(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def evenness_table(groups: list[Group], metrics=("nuclear",), *, scheme: str = "thirds") -> pd.DataFrame:
    """Per group, role, segment and metric: roughness with its 95% interval. Columns: EVENNESS_COLUMNS."""
    rows = []
    for g in groups:
        segs = segments(g.n_layers, scheme)
        for m in metrics:
            if not g.available(m):
                continue
            for r, role in enumerate(g.series):
                x = g.values[m][:, r, :]
                x = x[_complete(x)]
                for name in SEGMENTS:
                    rows.append((g.label, role, name, m, len(x), *roughness(x, segs[name])))
    return pd.DataFrame(rows, columns=EVENNESS_COLUMNS)


def compare_roughness(xa: np.ndarray, xb: np.ndarray, layers: np.ndarray, paired: bool, verdict_level: float = LEVEL) -> dict:
    """Difference of squared roughness b - a with its 95% interval, and the roughness ratio. xa, xb: complete (n, L)
    curves; paired: row i of both is pair i (left out together by the jackknife)."""
    ta, loo_a = jackknife(xa, layers)
    tb, loo_b = jackknife(xb, layers)
    if paired:
        se, df = _se(loo_b - loo_a), len(xa) - 1
    else:
        se, df = float(np.hypot(_se(loo_a), _se(loo_b))), min(len(xa), len(xb)) - 1
    q = stats.t.ppf(0.5 + LEVEL / 2, df) * se
    qv = stats.t.ppf(0.5 + verdict_level / 2, df) * se
    ra, rb = np.sqrt(max(ta, 0.0)), np.sqrt(max(tb, 0.0))
    return {"roughness_a": ra, "roughness_b": rb, "ratio": rb / ra if ra > 0 else np.nan, "diff_sq": tb - ta,
            "diff_sq_ci_low": tb - ta - q, "diff_sq_ci_high": tb - ta + q,
            "verdict": evenness_verdict(tb - ta - qv, tb - ta + qv)}


def evenness_verdict(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no inference"
    if hi < 0:
        return "more even"
    if lo > 0:
        return "less even"
    return "no clear difference in evenness"


def evenness_compare_table(groups: list[Group], metrics=("nuclear",), *, scheme: str = "thirds", pairing: str = "auto") -> pd.DataFrame:
    """Per pair of groups, role, segment and metric: the evenness comparison (module docstring). Columns: EVENNESS_COMPARE_COLUMNS."""
    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            d = design(a, b, pairing)
            segs = segments(a.n_layers, scheme)
            one_each = d.paired and not d.clustered
            for m in metrics:
                if not (a.available(m) and b.available(m)):
                    continue
                roles = [s for s in a.series if s in b.series]
                level = 1 - (1 - LEVEL) / max(len(roles), 1)
                for role in roles:
                    xa, xb = a.values[m][:, a.series.index(role), :], b.values[m][:, b.series.index(role), :]
                    if one_each:
                        ia, ib = np.array([u[0] for u in d.units_a]), np.array([u[0] for u in d.units_b])
                        keep = _complete(xa[ia]) & _complete(xb[ib])
                        xa, xb = xa[ia[keep]], xb[ib[keep]]
                    else:
                        xa, xb = xa[_complete(xa)], xb[_complete(xb)]
                    for name in SEGMENTS:
                        layers = segs[name]
                        base = {"group_a": a.label, "group_b": b.label, "role": role, "segment": name, "metric": m,
                                "design": "paired" if one_each else "independent", "n_a": len(xa), "n_b": len(xb)}
                        if min(len(xa), len(xb)) < MIN_N or len(layers) < 3:
                            rows.append({**base, "verdict": "no inference"})
                            continue
                        rows.append({**base, **compare_roughness(xa, xb, layers, one_each, level)})
    return pd.DataFrame(rows, columns=EVENNESS_COMPARE_COLUMNS)
