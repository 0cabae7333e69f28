"""Effects on the log scale, per column: the ratio of geometric means with a t interval.

All gradient metrics compared here are positive and multiplicative (a norm halves, a rank
doubles), so every effect is estimated on ``y = ln(value)`` and reported as a RATIO OF
GEOMETRIC MEANS ``exp(mean(y_b) - mean(y_a))``. The inputs are unit values (:mod:`.design`:
one value per instruction, the mean of ln over its examples).

- Paired (``ya[i]``, ``yb[i]`` one pair): ``d = yb - ya``; the one-sample t statistic
  ``t = mean(d) / (sd(d) / sqrt(n))``, ``n - 1`` degrees of freedom; interval
  ``exp(mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n))`` (Student 1908).
- Independent: Welch's statistic ``t = (mean_b - mean_a) / sqrt(v_a / n_a + v_b / n_b)`` with
  Welch-Satterthwaite degrees of freedom (Welch 1947): valid with unequal spreads and sizes.

Columns are independent of each other here; NaN entries are left out of their column only (a
pair counts where both members are finite). A column with a value ``<= 0`` has no log: it is NaN
throughout. Fewer than 2 units (paired: pairs) in a column, or zero spread, give NaN statistics.

:func:`studentized` is the same statistic for many relabellings at once (sign flips of ``d``, or
label permutations of the pooled units): the statistic of :mod:`.multiplicity`'s max-T test.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.95


def log_positive(x: np.ndarray) -> np.ndarray:
    """``ln(x)`` where ``x > 0``; NaN where ``x <= 0`` or not finite."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x) & (x > 0), np.log(np.where(x > 0, x, 1.0)), np.nan)


def _moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: count of finite values, mean, sample variance (ddof 1). y: (n, K)."""
    fin = np.isfinite(y)
    n = fin.sum(axis=0).astype(float)
    y0 = np.where(fin, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = y0.sum(axis=0) / n
        var = (np.where(fin, (y - mean) ** 2, 0.0)).sum(axis=0) / (n - 1)
    return n, mean, var


def paired(ya: np.ndarray, yb: np.ndarray, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Paired log-scale effect per column. ya, yb: (n, K) log unit values, row i = pair i."""
    d = yb - ya  # NaN where either is missing
    n, mean, var = _moments(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(var / n)
        t = mean / se
    df = n - 1
    return _finish(mean, se, t, df, n, n, level)


def welch(ya: np.ndarray, yb: np.ndarray, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Independent log-scale effect per column (Welch). ya: (n_a, K), yb: (n_b, K) log unit values."""
    na, ma, va = _moments(ya)
    nb, mb, vb = _moments(yb)
    with np.errstate(invalid="ignore", divide="ignore"):
        qa, qb = va / na, vb / nb
        se = np.sqrt(qa + qb)
        t = (mb - ma) / se
        df = (qa + qb) ** 2 / (qa ** 2 / (na - 1) + qb ** 2 / (nb - 1))
    return _finish(mb - ma, se, t, df, na, nb, level)


def _finish(est, se, t, df, n_a, n_b, level) -> dict[str, np.ndarray]:
    ok = np.isfinite(t) & np.isfinite(df) & (df > 0) & (se > 0)
    dfs = np.where(ok, df, 1.0)
    q = stats.t.ppf(0.5 + level / 2.0, dfs)
    with np.errstate(over="ignore", invalid="ignore"):
        out = {
            "log_ratio": np.where(np.isfinite(est), est, np.nan),
            "se": np.where(ok, se, np.nan),
            "t": np.where(ok, t, np.nan),
            "df": np.where(ok, df, np.nan),
            "ratio": np.exp(est),
            "ci_low": np.where(ok, np.exp(est - q * se), np.nan),
            "ci_high": np.where(ok, np.exp(est + q * se), np.nan),
            "p_value": np.where(ok, 2.0 * stats.t.sf(np.abs(np.where(ok, t, 0.0)), dfs), np.nan),
            "n_a": n_a.astype(int),
            "n_b": n_b.astype(int),
        }
    return out


def studentized_signflip(d: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """|t| of the paired statistic under sign patterns. d: (n, K) with NaN missing; signs: (c, n) of +-1 -> (c, K).

    ``sum(d^2)`` is the same under every sign pattern, so each pattern costs one product."""
    fin = np.isfinite(d)
    d0 = np.where(fin, d, 0.0)
    n = fin.sum(axis=0).astype(float)
    ss = (d0 ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (signs @ d0) / n  # (c, K)
        var = (ss - n * mean ** 2) / (n - 1)
        t = mean / np.sqrt(np.maximum(var, 0.0) / n)
    return np.abs(np.where(np.isfinite(t), t, 0.0))


def studentized_welch(y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|t| of Welch's statistic under relabellings. y: (N, K) pooled units (NaN missing); labels: (c, N) 1 = group b -> (c, K)."""
    fin = np.isfinite(y)
    y0 = np.where(fin, y, 0.0)
    f = fin.astype(float)
    tot_n, tot_s, tot_q = f.sum(axis=0), y0.sum(axis=0), (y0 ** 2).sum(axis=0)
    nb, sb, qb = labels @ f, labels @ y0, labels @ (y0 ** 2)
    na, sa, qa = tot_n - nb, tot_s - sb, tot_q - qb
    with np.errstate(invalid="ignore", divide="ignore"):
        mb, ma = sb / nb, sa / na
        vb = (qb - nb * mb ** 2) / (nb - 1)
        va = (qa - na * ma ** 2) / (na - 1)
        t = (mb - ma) / np.sqrt(np.maximum(va, 0.0) / na + np.maximum(vb, 0.0) / nb)
    return np.abs(np.where(np.isfinite(t), t, 0.0))
