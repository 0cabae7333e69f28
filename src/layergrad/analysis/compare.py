"""Two groups, layer by layer: design, effect size with interval, AUROC, permutation p-value, FDR.

Design. Two groups are compared as PAIRED samples when their examples answer the same
instructions (:func:`pair_examples`): an example of ``a`` and one of ``b`` form a pair when they
share a key, tried in this order: a ``pair_key`` column of the examples (when a run stores one),
the ``instruction`` text as scored, and the example id with a built-in synthetic style suffix
removed (``layergrad.inputs.synthetic.pair_key``: ``arith-0007-detailed`` -> ``arith-0007``). A key that
occurs more than once in either group is ambiguous and dropped from pairing (counted in
``n_dup_keys``), deterministically. The first key giving at least ``max(3, 0.8 min(n_a, n_b))``
pairs wins; then only the paired examples enter the tests (``n_pairs``; unpaired ones are
counted). Otherwise the groups are INDEPENDENT samples and all examples enter.

For groups ``a`` and ``b`` and each metric, role and layer (a "cell"), with ``x_a``, ``x_b`` the
per-example values that are finite in that cell (paired: the pairs where both are finite):

- ``ratio = mean(x_b) / mean(x_a)`` (ratio of means; NaN when mean(x_a) == 0) and
  ``rel_diff = ratio - 1`` (with ``|mean(x_a)|`` in the denominator);
- ``ratio_ci_low, ratio_ci_high``: 95% percentile bootstrap interval of the ratio. Independent:
  each group's examples are resampled on their own (the same resamples as the group's curves,
  ``bootstrap.group_rng(seed, label)``); paired: the PAIRS are resampled, both members together;
- ``auroc``: independent: ``P(X_b > X_a) + 0.5 P(X_b == X_a)`` for a random example of each
  group (Mann-Whitney U / (n_a n_b), midranks). Paired: the probability of superiority within a
  pair, ``P(d > 0) + 0.5 P(d == 0)`` for ``d = x_b - x_a`` of a random pair. 0.5 = no separation;
- ``p_value``: two-sided permutation test of the mean difference. Independent: the group labels
  of the pooled examples are permuted; paired: the sign of each pair's difference is flipped at
  random (sign-flip test). ``n_perm`` draws (fixed seed), ``p = (1 + #{|stat_perm| >= |stat_obs|})
  / (1 + n_perm)``; when all relabellings (``C(n_a + n_b, n_b)``) or all sign patterns
  (``2^n_pairs``) number at most ``n_perm`` they are enumerated and p is exact;
- ``p_adjusted``: FDR adjustment across ALL tests of one comparison (every metric, role and
  layer of one pair of groups), by ``correction``: ``by`` (default; Benjamini-Yekutieli 2001,
  valid under any dependence: the tests share examples and neighbouring layers, and two-sided
  tests need not satisfy the positive dependence that BH assumes) or ``bh``
  (Benjamini-Hochberg, more powerful, valid under positive regression dependence).

:func:`compare_arrays` is the core on any ``(n, K)`` matrices; :func:`compare_groups` applies it
to every cell, :mod:`layergrad.report.findings` to per-example summaries.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from . import bootstrap
from .curves import DEFAULT_METRICS, N_BOOT
from .groups import Group, require_comparable

N_PERM = 9999
_CHUNK = 512  # permutations per matrix product
CORRECTIONS = {"by": "Benjamini-Yekutieli", "bh": "Benjamini-Hochberg"}
DEFAULT_CORRECTION = "by"
PAIR_KEYS = ("pair_key", "instruction", "id")
MIN_PAIRED_FRACTION = 0.8
COMPARE_COLUMNS = ["group_a", "group_b", "design", "n_pairs", "role", "layer", "metric", "rel_diff", "ratio", "ratio_ci_low",
                   "ratio_ci_high", "auroc", "p_value", "p_adjusted", "correction", "n_a", "n_b"]
PAIRING_COLUMNS = ["group_a", "group_b", "design", "pair_by", "n_a", "n_b", "n_pairs", "n_dup_keys", "n_unpaired_a", "n_unpaired_b"]


# ---- pairing ---------------------------------------------------------------------------------


@dataclass
class Pairing:
    design: str  # "paired" | "independent"
    by: str | None  # key used: pair_key | instruction | id
    ia: np.ndarray  # (n_pairs,) rows of a
    ib: np.ndarray  # (n_pairs,) rows of b
    n_dup_keys: int = 0  # keys dropped because they repeat in a group (for the key used, or the best tried)

    @property
    def paired(self) -> bool:
        return self.design == "paired"

    @property
    def n_pairs(self) -> int:
        return len(self.ia) if self.paired else 0


def _match(ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows (ia, ib) sharing a key that is unique in both; and the number of repeated keys dropped."""
    def unique(keys):
        s = pd.Series(keys)
        s = s[s.notna() & (s.astype(str) != "")]
        counts = s.value_counts()
        dup = set(counts.index[counts > 1])
        return {k: i for i, k in s.items() if k not in dup}, dup

    ua, da = unique(ka)
    ub, db = unique(kb)
    common = [k for k in ua if k in ub]  # in a's order: deterministic
    return np.array([ua[k] for k in common], dtype=int), np.array([ub[k] for k in common], dtype=int), len(da | db)


def pair_examples(a: Group, b: Group, pairing: str = "auto") -> Pairing:
    """How to compare ``a`` and ``b``: paired on shared keys (module docstring) or independent.

    ``pairing``: ``auto`` (pair when the keys allow), ``none`` (always independent), or one key name
    to use only that key.
    """
    empty = np.zeros(0, dtype=int)
    if pairing == "none":
        return Pairing("independent", None, empty, empty)
    keys = PAIR_KEYS if pairing == "auto" else (pairing,)
    need = max(3, math.ceil(MIN_PAIRED_FRACTION * min(a.n, b.n)))
    best_dup = 0
    for key in keys:
        ka, kb = a.keys.get(key), b.keys.get(key)
        if ka is None or kb is None:
            continue
        ia, ib, dup = _match(ka, kb)
        if len(ia) >= need:
            return Pairing("paired", key, ia, ib, dup)
        best_dup = max(best_dup, dup)
    return Pairing("independent", None, empty, empty, best_dup)


def pairing_row(a: Group, b: Group, p: Pairing) -> dict:
    n_pairs = p.n_pairs
    return {"group_a": a.label, "group_b": b.label, "design": p.design, "pair_by": p.by or "", "n_a": a.n, "n_b": b.n,
            "n_pairs": n_pairs, "n_dup_keys": p.n_dup_keys, "n_unpaired_a": a.n - n_pairs if p.paired else 0,
            "n_unpaired_b": b.n - n_pairs if p.paired else 0}


# ---- tests -----------------------------------------------------------------------------------


def auroc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AUROC of b against a per column, ties half. a: (n_a, K), b: (n_b, K), finite -> (K,)."""
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return np.full(a.shape[1], np.nan)
    ranks = rankdata(np.concatenate([a, b]), axis=0)  # (N, K) midranks
    u_b = ranks[n_a:].sum(axis=0) - n_b * (n_b + 1) / 2.0
    return u_b / (n_a * n_b)


def superiority(d: np.ndarray) -> np.ndarray:
    """Paired probability of superiority per column: P(d > 0) + 0.5 P(d == 0). d: (n, K) finite -> (K,)."""
    if d.shape[0] == 0:
        return np.full(d.shape[1], np.nan)
    return (d > 0).mean(axis=0) + 0.5 * (d == 0).mean(axis=0)


def _splits(n_a: int, n_b: int, n_perm: int, rng: np.random.Generator):
    """Yield (c, N) 0/1 matrices marking group b under relabelling; and whether they are exhaustive."""
    n = n_a + n_b
    if math.comb(n, n_b) <= n_perm:
        combos = list(itertools.combinations(range(n), n_b))
        m = np.zeros((len(combos), n))
        for i, c in enumerate(combos):
            m[i, list(c)] = 1.0
        return [m], True
    base = np.zeros(n)
    base[:n_b] = 1.0
    chunks = []
    for start in range(0, n_perm, _CHUNK):
        c = min(_CHUNK, n_perm - start)
        chunks.append(rng.permuted(np.tile(base, (c, 1)), axis=1))
    return chunks, False


def permutation_pvalues(a: np.ndarray, b: np.ndarray, n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-sided permutation p-values of mean(b) - mean(a), per column. a: (n_a, K), b: (n_b, K), finite.

    All columns share the same relabellings (they are tests on the same examples).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return np.full(a.shape[1], np.nan)
    z = np.concatenate([a, b])  # (N, K)
    tot = z.sum(axis=0)
    obs = b.mean(axis=0) - a.mean(axis=0)
    # Rounding must not make the observed split look less extreme than itself.
    tol = 1e-9 * (np.abs(z).max(axis=0) + np.finfo(float).tiny)
    exceed = np.zeros(z.shape[1])
    total = 0
    chunks, exact = _splits(n_a, n_b, n_perm, rng)
    for m in chunks:
        sb = m @ z  # (c, K) sums of the relabelled group b
        diff = sb / n_b - (tot - sb) / n_a
        exceed += (np.abs(diff) >= np.abs(obs) - tol).sum(axis=0)
        total += m.shape[0]
    return exceed / total if exact else (exceed + 1.0) / (total + 1.0)


def signflip_pvalues(d: np.ndarray, n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-sided sign-flip (paired permutation) p-values of mean(d), per column. d: (n, K) finite.

    Under the null of exchangeable pair members each difference is as likely ``+d`` as ``-d``. All
    ``2^n`` sign patterns are enumerated when ``2^n <= n_perm`` (exact p); otherwise ``n_perm``
    random patterns, ``p = (1 + #extreme) / (1 + n_perm)``. All columns share the same patterns.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n = d.shape[0]
    if n == 0:
        return np.full(d.shape[1], np.nan)
    obs = np.abs(d.sum(axis=0))
    tol = 1e-9 * (np.abs(d).sum(axis=0) + np.finfo(float).tiny)
    exceed = np.zeros(d.shape[1])
    if 2 ** n <= n_perm:
        signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None]) & 1)  # (2^n, n)
        exceed = (np.abs(signs @ d) >= obs - tol).sum(axis=0)
        return exceed / len(signs)
    for start in range(0, n_perm, _CHUNK):
        c = min(_CHUNK, n_perm - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(c, n))
        exceed += (np.abs(signs @ d) >= obs - tol).sum(axis=0)
    return (exceed + 1.0) / (n_perm + 1.0)


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone); NaN stays NaN and is not counted."""
    return _step_up(p, by=False)


def by_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values: BH's multiplied by ``c(m) = sum_{i<=m} 1/i`` (any dependence)."""
    return _step_up(p, by=True)


def adjust(p: np.ndarray, correction: str = DEFAULT_CORRECTION) -> np.ndarray:
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    return _step_up(p, by=correction == "by")


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


def _ratio_interval(xa: np.ndarray, xb: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of mean_b / mean_a over bootstrap counts ``ca`` (B, n_a), ``cb`` (B, n_b)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = bootstrap.resampled_means(xb, cb) / bootstrap.resampled_means(xa, ca)
    boot[~np.isfinite(boot)] = np.nan
    n = np.minimum(np.isfinite(xa).sum(axis=0), np.isfinite(xb).sum(axis=0))
    return bootstrap.percentile_interval(boot, n)


def compare_arrays(xa: np.ndarray, xb: np.ndarray, pairing: Pairing, *, label_a: str, label_b: str, n_perm: int = N_PERM,
                   n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """The statistics of the module docstring for every column of ``xa`` (n_a, K) and ``xb`` (n_b, K)
    (NaN = missing). Returns arrays of length K: n_a, n_b, ratio, ratio_ci_low, ratio_ci_high, auroc, p_value."""
    if pairing.paired:
        xa, xb = xa[pairing.ia].copy(), xb[pairing.ib].copy()
        both = np.isfinite(xa) & np.isfinite(xb)
        xa[~both], xb[~both] = np.nan, np.nan
    K = xa.shape[1]
    fin_a, fin_b = np.isfinite(xa), np.isfinite(xb)
    n_a, n_b = fin_a.sum(axis=0), fin_b.sum(axis=0)
    auc, p = np.full(K, np.nan), np.full(K, np.nan)
    rng = bootstrap.group_rng(seed, f"{label_a}\0{label_b}", "permutation")
    fin = fin_a.T if pairing.paired else np.concatenate([fin_a, fin_b]).T
    # Columns sharing the same pattern of missing values are tested together on the same examples.
    patterns, which = np.unique(fin, axis=0, return_inverse=True)
    for u, pattern in enumerate(patterns):
        cols = np.flatnonzero(which.ravel() == u)
        if pairing.paired:
            if not pattern.any():
                continue
            d = xb[np.ix_(pattern, cols)] - xa[np.ix_(pattern, cols)]
            auc[cols] = superiority(d)
            p[cols] = signflip_pvalues(d, n_perm, rng)
        else:
            ra, rb = pattern[: xa.shape[0]], pattern[xa.shape[0]:]
            if not ra.any() or not rb.any():
                continue
            sa, sb = xa[np.ix_(ra, cols)], xb[np.ix_(rb, cols)]
            auc[cols] = auroc(sa, sb)
            p[cols] = permutation_pvalues(sa, sb, n_perm, rng)
    ma, _ = bootstrap.means(xa)
    mb, _ = bootstrap.means(xb)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(ma != 0, mb / ma, np.nan)
    if pairing.paired:
        ca = cb = bootstrap.resample_counts(xa.shape[0], n_boot, bootstrap.group_rng(seed, f"{label_a}\0{label_b}", "paired"))
    else:
        ca = bootstrap.resample_counts(xa.shape[0], n_boot, bootstrap.group_rng(seed, label_a))
        cb = bootstrap.resample_counts(xb.shape[0], n_boot, bootstrap.group_rng(seed, label_b))
    low, high = _ratio_interval(xa, xb, ca, cb)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (mb - ma) / np.abs(ma)
    return {"n_a": n_a, "n_b": n_b, "mean_a": ma, "mean_b": mb, "rel_diff": rel, "ratio": ratio, "ratio_ci_low": low,
            "ratio_ci_high": high, "auroc": auc, "p_value": p}


def compare_groups(a: Group, b: Group, metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, n_boot: int = N_BOOT, seed: int = 0,
                   pairing: str = "auto", correction: str = DEFAULT_CORRECTION) -> pd.DataFrame:
    """All tests of one comparison (``b`` against ``a``), FDR-adjusted together. Columns: COMPARE_COLUMNS."""
    require_comparable([a, b])
    metrics = [m for m in metrics if a.available(m) and b.available(m)]
    if not metrics:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    pr = pair_examples(a, b, pairing)
    R, L = len(a.series), a.n_layers
    xa = np.concatenate([a.values[m].reshape(a.n, -1) for m in metrics], axis=1)  # (n_a, K), K = M*R*L
    xb = np.concatenate([b.values[m].reshape(b.n, -1) for m in metrics], axis=1)  # (n_b, K)
    K = xa.shape[1]
    measured = np.isfinite(xa).any(axis=0) | np.isfinite(xb).any(axis=0)  # drop cells measured in neither group (structural)
    st = compare_arrays(xa, xb, pr, label_a=a.label, label_b=b.label, n_perm=n_perm, n_boot=n_boot, seed=seed)
    mi, r, l = np.unravel_index(np.arange(K), (len(metrics), R, L))
    df = pd.DataFrame(
        {"group_a": a.label, "group_b": b.label, "design": pr.design, "n_pairs": pr.n_pairs,
         "role": np.asarray(a.series, dtype=object)[r], "layer": l, "metric": np.asarray(metrics, dtype=object)[mi],
         **{k: st[k] for k in ("rel_diff", "ratio", "ratio_ci_low", "ratio_ci_high", "auroc", "p_value")},
         "p_adjusted": np.nan, "correction": correction, "n_a": st["n_a"], "n_b": st["n_b"]}
    )[measured].reset_index(drop=True)
    df["p_adjusted"] = adjust(df["p_value"].to_numpy(), correction)
    return df[COMPARE_COLUMNS]


def compare_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_perm: int = N_PERM, n_boot: int = N_BOOT, seed: int = 0,
                  pairing: str = "auto", correction: str = DEFAULT_CORRECTION) -> pd.DataFrame:
    """Every pair of groups in the given order (a before b); the correction within each pair."""
    require_comparable(groups)
    frames = [
        compare_groups(groups[j], groups[k], metrics, n_perm=n_perm, n_boot=n_boot, seed=seed, pairing=pairing, correction=correction)
        for j in range(len(groups))
        for k in range(j + 1, len(groups))
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARE_COLUMNS)


OVERALL_COLUMNS = ["group_a", "group_b", "metric", "summary", "design", "n_pairs", "n_a", "n_b", "mean_a", "mean_b", "ratio",
                   "ratio_ci_low", "ratio_ci_high", "auroc", "p_value"]


def overall_table(groups: list[Group], metrics=("nuclear", "effective_rank"), *, n_perm: int = N_PERM, n_boot: int = N_BOOT,
                  seed: int = 0, pairing: str = "auto") -> pd.DataFrame:
    """Per pair of groups and metric, one test on the per-example summary ``all`` (the mean over all
    layers of each role, averaged over roles; ``length.summaries``): the headline effect of the
    findings, with the same design, interval and test as a cell (module docstring). Not FDR-adjusted:
    it is one pre-specified test per pair and metric."""
    from .length import summaries

    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            pr = pair_examples(a, b, pairing)
            for m in metrics:
                if not (a.available(m) and b.available(m)):
                    continue
                ya, yb = summaries(a, m)[1][:, :1], summaries(b, m)[1][:, :1]
                st = compare_arrays(ya, yb, pr, label_a=a.label, label_b=b.label, n_perm=n_perm, n_boot=n_boot, seed=seed)
                rows.append({"group_a": a.label, "group_b": b.label, "metric": m, "summary": "mean over layers and roles",
                             "design": pr.design, "n_pairs": pr.n_pairs, **{c: st[c][0] for c in OVERALL_COLUMNS if c in st}})
    return pd.DataFrame(rows, columns=OVERALL_COLUMNS)


def pairing_table(groups: list[Group], pairing: str = "auto") -> pd.DataFrame:
    """Per pair of groups: the design chosen, the key, and how many examples were paired."""
    rows = [pairing_row(groups[j], groups[k], pair_examples(groups[j], groups[k], pairing))
            for j in range(len(groups)) for k in range(j + 1, len(groups))]
    return pd.DataFrame(rows, columns=PAIRING_COLUMNS)
