"""MAD: how much the mean curve moves from one layer to the next.

For a mean curve ``c_0 .. c_{L-1}`` (``curves.py``) and a set of layers ``S``::

    MAD(S) = mean over pairs (l, l+1) with BOTH l and l+1 in S of |c_{l+1} - c_l|

Segments are the thirds of the depth ``L = n_layers`` (from the manifest, never per model)::

    early, middle, late = np.array_split(np.arange(L), 3)

so the first ``L % 3`` thirds get one layer more (L=30: 0-9, 10-19, 20-29; L=32: 0-10, 11-21,
22-31). A third of ``k`` layers has ``k - 1`` pairs; the two pairs that straddle a boundary
(9->10 and 19->20 for L=30) belong to no third, but to ``all``, which uses all ``L - 1`` pairs.
A segment with fewer than 2 layers has no pair and its MAD is NaN; so is a MAD whose curve has a
NaN (a layer with no example).

The interval comes from the MADs of the resampled mean curves (the same resamples as the curves'
intervals). Noise inflates a MAD (a flat true curve has MAD 0 but every sample curve wiggles), so
resampled MADs sit above the sample's; the interval is therefore the bias-corrected (BC)
percentile interval (``bootstrap.bias_corrected_interval``), not the plain percentile one, which
can miss the estimate altogether. Compare MADs of groups with similar n: the inflation shrinks
like 1/sqrt(n).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import bootstrap
from .curves import DEFAULT_METRICS, N_BOOT, group_curves
from .groups import Group

SEGMENTS = ("early", "middle", "late", "all")
MAD_COLUMNS = ["group", "role", "segment", "metric", "mad", "ci_low", "ci_high"]


def segments(n_layers: int) -> dict[str, np.ndarray]:
    """Layer indices of each segment: thirds by ``np.array_split`` and ``all``."""
    early, middle, late = np.array_split(np.arange(n_layers), 3)
    return {"early": early, "middle": middle, "late": late, "all": np.arange(n_layers)}


def mad_of_curve(curve: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """MAD of ``curve`` (..., L) over consecutive pairs inside the contiguous ``layers``; (...)."""
    if len(layers) < 2:
        return np.full(curve.shape[:-1], np.nan)
    steps = np.abs(np.diff(curve, axis=-1))  # (..., L-1): step l is |c_{l+1} - c_l|
    return steps[..., layers[:-1]].mean(axis=-1)


def mad_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Columns ``group, role, segment, metric, mad, ci_low, ci_high``."""
    rows = []
    for g in groups:
        segs = segments(g.n_layers)
        for m in metrics:
            if not g.available(m):
                continue
            c = group_curves(g, m, n_boot=n_boot, seed=seed)
            for name in SEGMENTS:
                layers = segs[name]
                n_min = c.n[:, layers].min(axis=1) if len(layers) else np.zeros(len(c.series))  # (R,)
                est = mad_of_curve(c.mean, layers)  # (R,)
                low, high = bootstrap.bias_corrected_interval(mad_of_curve(c.boot, layers), est, n_min)
                for r, s in enumerate(c.series):
                    rows.append((g.label, s, name, m, est[r], low[r], high[r]))
    return pd.DataFrame(rows, columns=MAD_COLUMNS)
