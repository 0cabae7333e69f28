"""Per-layer curves: the mean over examples of a metric, per group, role and layer, with a CI.

The interval is the 95% percentile bootstrap over examples (``bootstrap.py``): B resamples of
the group's ok examples, the same resamples for every role, layer and metric of the group.
An example with no finite value in a cell is excluded from that cell only; ``n`` says how many
examples each cell averages. Fewer than 2 examples: the interval is undefined (NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from layergrad.vocab import DEFAULT_REPORT_METRICS as DEFAULT_METRICS  # one table: layergrad.vocab

from . import bootstrap
from .groups import Group

N_BOOT = 1000

CURVE_COLUMNS = ["group", "role", "layer", "metric", "mean", "ci_low", "ci_high", "n"]
COSINE_COLUMNS = ["group", "kind", "role", "layer", "mean", "ci_low", "ci_high", "n"]


@dataclass
class Curves:
    """One group's curves of one metric. Shapes: R series x L layers; B resamples."""

    series: list[str]
    mean: np.ndarray  # (R, L)
    low: np.ndarray  # (R, L)
    high: np.ndarray  # (R, L)
    n: np.ndarray  # (R, L) examples with a finite value
    boot: np.ndarray  # (B, R, L) resampled means


def curves_of(group: Group, x: np.ndarray, series: list[str], *, n_boot: int = N_BOOT, seed: int = 0) -> Curves:
    """Curves of per-example values ``x`` (n, R, L) of ``group``; resamples fixed by (seed, label)."""
    counts = bootstrap.resample_counts(group.n, n_boot, bootstrap.group_rng(seed, group.label))  # (B, n)
    mean, n = bootstrap.means(x)
    boot = bootstrap.resampled_means(x, counts)
    low, high = bootstrap.percentile_interval(boot, n)
    return Curves(series, mean, low, high, n, boot)


def group_curves(group: Group, metric: str, *, n_boot: int = N_BOOT, seed: int = 0) -> Curves:
    return curves_of(group, group.values[metric], group.series, n_boot=n_boot, seed=seed)


def _rows(label: str, c: Curves, extra: dict) -> list[dict]:
    rows = []
    for r, s in enumerate(c.series):
        for layer in np.nonzero(c.n[r] > 0)[0]:
            rows.append(
                {"group": label, **extra, "role": s, "layer": int(layer), "mean": c.mean[r, layer],
                 "ci_low": c.low[r, layer], "ci_high": c.high[r, layer], "n": int(c.n[r, layer])}
            )
    return rows


def curve_table(groups: list[Group], metrics=DEFAULT_METRICS, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Columns ``group, role, layer, metric, mean, ci_low, ci_high, n``; one row per measured cell.

    Metrics a group does not store (e.g. ``effective_rank`` of runs imported from the paper's
    format) have no rows for that group.
    """
    rows = []
    for g in groups:
        for m in metrics:
            if g.available(m):
                rows += _rows(g.label, group_curves(g, m, n_boot=n_boot, seed=seed), {"metric": m})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def cosine_table(groups: list[Group], *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Cosine similarities per kind (next_layer, q_o, k_v), role (of module_a) and layer (of module_a)."""
    rows = []
    for g in groups:
        for kind, (series, x) in g.cosine.items():
            rows += _rows(g.label, curves_of(g, x, series, n_boot=n_boot, seed=seed), {"kind": kind})
    return pd.DataFrame(rows, columns=COSINE_COLUMNS)
