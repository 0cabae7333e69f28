"""Groups of different models (depth, width, family) compared in shape, on relative depth.

A model of ``L`` layers puts layer ``l`` at relative depth ``l / (L - 1)`` (0: first, 1: last).
Each group's per-layer mean curve (mean over its ok examples, per role and metric) is linearly
interpolated onto the common grid :data:`GRID` (21 points 0, 0.05, ..., 1), and two models are
compared by the Pearson correlation of their gridded curves, with a percentile bootstrap interval
over examples (each group resampled on its own). Segments are the thirds of each model's OWN depth.

``normalise`` (width-dependent metrics: nuclear, Frobenius grow with the matrix size):
``none``; ``mean``: each curve divided by its own mean over layers (scale removed, shape kept);
``zscore``: each curve minus its mean over layers, divided by its standard deviation. Pearson's
correlation is the same under either (it is invariant to a positive affine map of a curve); the
normalisation changes the curves drawn and tabulated, so families of different width line up.

Roles measured in one model and not the other are named in :func:`role_coverage`, never silently
dropped; groups that share no role are refused (:class:`~layergrad.analysis.groups.IncompatibleGroups`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from layergrad.analysis.groups import Group, IncompatibleGroups

GRID = np.linspace(0.0, 1.0, 21)
NORMALISE = ("none", "mean", "zscore")
SIMILARITY_COLUMNS = ["run_a", "run_b", "role", "metric", "correlation", "ci_low", "ci_high", "n_a", "n_b",
                      "layers_a", "layers_b", "grid_points", "normalise"]


def relative_depth(n_layers: int) -> np.ndarray:
    """``(L,)`` ``l / (L - 1)``; a one-layer model sits at 0."""
    return np.arange(n_layers) / max(n_layers - 1, 1)


def normalise_curve(c: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return c
    if how == "mean":
        return c / np.nanmean(c, axis=-1, keepdims=True)
    if how == "zscore":
        return (c - np.nanmean(c, axis=-1, keepdims=True)) / np.nanstd(c, axis=-1, keepdims=True)
    raise ValueError(f"unknown normalise {how!r}; choose one of {', '.join(NORMALISE)}")


def on_grid(curve: np.ndarray, n_layers: int, grid: np.ndarray = GRID) -> np.ndarray:
    """A per-layer curve ``(..., L)`` linearly interpolated to ``grid`` (relative depth)."""
    x = relative_depth(n_layers)
    flat = curve.reshape(-1, n_layers)
    return np.stack([np.interp(grid, x, row) for row in flat]).reshape(*curve.shape[:-1], len(grid))


def mean_curve(g: Group, metric: str, role: str, rows: np.ndarray | None = None) -> np.ndarray:
    """``(L,)`` mean over (the chosen rows of) the group's examples."""
    v = g.values[metric][:, g.series.index(role), :]
    if rows is not None:
        v = v[rows]
    return np.nanmean(v, axis=0)


def role_coverage(groups: list[Group]) -> list[str]:
    """Notes naming the roles measured in one group and not another; raises when a pair shares none."""
    notes, bad = [], []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            only_a = [r for r in a.series if r not in b.series]
            only_b = [r for r in b.series if r not in a.series]
            if len(only_a) == len(a.series):
                bad.append(f"  {a.label!r} has roles {a.series}, {b.label!r} has {b.series}: none in common")
            elif only_a or only_b:
                notes.append(f"{a.label!r} vs {b.label!r}: compared on the roles both measure; "
                             f"only in {a.label!r}: {', '.join(only_a) or 'none'}; only in {b.label!r}: {', '.join(only_b) or 'none'}")
    if bad:
        raise IncompatibleGroups("cannot compare models that share no measured role:\n" + "\n".join(bad)
                                 + "\nMeasure both with the same --modules selection (e.g. --modules attn).")
    return notes


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def similarity_table(groups: list[Group], metrics, *, grid: np.ndarray = GRID, n_boot: int = 1000, seed: int = 0,
                     normalise: str = "none") -> pd.DataFrame:
    """One row per pair of groups, shared role and metric (:data:`SIMILARITY_COLUMNS`)."""
    normalise_curve(np.ones(2), normalise)  # an unknown option fails here
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j], groups[k]
            for role in [r for r in a.series if r in b.series]:
                for metric in metrics:
                    if not (a.available(metric) and b.available(metric)):
                        continue
                    ca = on_grid(normalise_curve(mean_curve(a, metric, role), normalise), a.n_layers, grid)
                    cb = on_grid(normalise_curve(mean_curve(b, metric, role), normalise), b.n_layers, grid)
                    boot = []
                    for _ in range(n_boot):
                        ra, rb = rng.integers(0, a.n, a.n), rng.integers(0, b.n, b.n)
                        boot.append(_corr(on_grid(normalise_curve(mean_curve(a, metric, role, ra), normalise), a.n_layers, grid),
                                          on_grid(normalise_curve(mean_curve(b, metric, role, rb), normalise), b.n_layers, grid)))
                    boot = np.asarray(boot)
                    boot = boot[np.isfinite(boot)]
                    lo, hi = (np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan))
                    rows.append([a.label, b.label, role, metric, _corr(ca, cb), float(lo), float(hi), a.n, b.n,
                                 a.n_layers, b.n_layers, len(grid), normalise])
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)


def depth_curves(groups: list[Group], metrics, *, normalise: str = "none") -> pd.DataFrame:
    """Long table of each group's mean curve on its own layers with their relative depth (normalised)."""
    rows = []
    for g in groups:
        x = relative_depth(g.n_layers)
        for role in g.series:
            for metric in metrics:
                if not g.available(metric):
                    continue
                c = normalise_curve(mean_curve(g, metric, role), normalise)
                rows += [(g.label, role, metric, l, float(x[l]), float(c[l])) for l in range(g.n_layers)]
    return pd.DataFrame(rows, columns=["group", "role", "metric", "layer", "relative_depth", "mean"])


def thirds_table(groups: list[Group], metrics, *, normalise: str = "none") -> pd.DataFrame:
    """Mean of each group's (normalised) curve over the thirds of its own depth."""
    rows = []
    for g in groups:
        parts = np.array_split(np.arange(g.n_layers), 3)
        for role in g.series:
            for metric in metrics:
                if not g.available(metric):
                    continue
                c = normalise_curve(mean_curve(g, metric, role), normalise)
                for name, idx in zip(("early", "middle", "late"), parts):
                    if len(idx):
                        rows.append((g.label, role, metric, name, int(idx[0]), int(idx[-1]), float(np.nanmean(c[idx]))))
    return pd.DataFrame(rows, columns=["group", "role", "metric", "segment", "first_layer", "last_layer", "mean"])
