"""MAD: how much the mean curve moves from one layer to the next.

For a mean curve ``c_0 .. c_{L-1}`` (``curves.py``) and a set of layers ``S``::

    MAD(S) = mean over pairs (l, l+1) with BOTH l and l+1 in S of |c_{l+1} - c_l|

Segments are the thirds of the depth ``L = n_layers`` (from the manifest, never per model)::

    early, middle, late = np.array_split(np.arange(L), 3)

so the first ``L % 3`` thirds get one layer more (L=30: 0-9, 10-19, 20-29; L=32: 0-10, 11-21,
22-31). A third of ``k`` layers has ``k - 1`` pairs; the two pairs that straddle a boundary
(9->10 and 19->20 for L=30) belong to no third, but to ``all``, which uses all ``L - 1`` pairs.
With ``scheme="paper"`` the segments are the paper's own splits (``code_vis/exp_utils.py`` of
Layer_Gradient) for the depths its code knows: 26 layers ``[:7] [7:20] [20:]``; 28 ``[:7] [7:21]
[21:]``; 32 ``[:10] [10:20] [20:]``; 42 ``[:12] [12:30] [30:]``; other depths fall back to the thirds
above (:func:`segment_note` says so). The paper's MAD of a segment is the same formula: the mean
absolute difference of consecutive layers of the per-layer mean curve within the segment.

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


SCHEMES = ("thirds", "paper")
#: The paper's early/middle/late boundaries by depth: (end of early, end of middle).
PAPER_SPLITS = {26: (7, 20), 28: (7, 21), 32: (10, 20), 42: (12, 30)}


def segments(n_layers: int, scheme: str = "thirds") -> dict[str, np.ndarray]:
    """Layer indices of each segment and ``all``: thirds by ``np.array_split``, or the paper's splits."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown segment scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    layers = np.arange(n_layers)
    if scheme == "paper" and n_layers in PAPER_SPLITS:
        e, m = PAPER_SPLITS[n_layers]
        early, middle, late = layers[:e], layers[e:m], layers[m:]
    else:
        early, middle, late = np.array_split(layers, 3)
    return {"early": early, "middle": middle, "late": late, "all": layers}


def segment_note(n_layers: int, scheme: str = "thirds") -> str | None:
    """A note when ``scheme="paper"`` has no split for this depth (thirds are used instead)."""
    if scheme == "paper" and n_layers not in PAPER_SPLITS:
        known = ", ".join(str(k) for k in PAPER_SPLITS)
        return (f"--segments paper: the paper's code has no layer split for {n_layers} layers (it knows {known}); "
                "the thirds of the depth (np.array_split) are used instead")
    return None


def describe_segments(n_layers: int, scheme: str = "thirds") -> str:
    segs = segments(n_layers, scheme)
    return ", ".join(f"{k} = layers {v[0]}-{v[-1]}" if len(v) else f"{k} = (none)" for k, v in segs.items() if k != "all")


def mad_of_curve(curve: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """MAD of ``curve`` (..., L) over consecutive pairs inside the contiguous ``layers``; (...)."""
    if len(layers) < 2:
        return np.full(curve.shape[:-1], np.nan)
    steps = np.abs(np.diff(curve, axis=-1))  # (..., L-1): step l is |c_{l+1} - c_l|
    return steps[..., layers[:-1]].mean(axis=-1)


def mad_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_boot: int = N_BOOT, seed: int = 0, scheme: str = "thirds") -> pd.DataFrame:
    """Columns ``group, role, segment, metric, mad, ci_low, ci_high``."""
    rows = []
    for g in groups:
        segs = segments(g.n_layers, scheme)
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
