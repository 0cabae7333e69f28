"""Groups built in memory for the statistics tests: no run directory, no disk."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from layergrad.analysis.groups import Group


def group(label: str, values: np.ndarray, lengths=None, instructions=None, metric: str = "nuclear", roles=None) -> Group:
    """A Group whose ``metric`` is ``values`` (n, R, L); lengths (n,) response tokens; instructions (n,) pairing keys."""
    values = np.asarray(values, dtype=float)
    n, R, L = values.shape
    roles = list(roles or ("q", "k", "v", "o", "gate", "up", "down")[:R])
    lengths = np.full(n, np.nan) if lengths is None else np.asarray(lengths, dtype=float)
    keys = {"id": np.array([f"{label}-{i}" for i in range(n)], dtype=object)}
    if instructions is not None:
        keys["instruction"] = np.asarray(instructions, dtype=object)
    status = pd.DataFrame({"status": pd.Series(dtype=str), "reason": pd.Series(dtype=str), "count": pd.Series(dtype=int)})
    return Group(label, {"n_layers": L}, L, roles, frozenset(f"model.layers.{l}.{r}" for l in range(L) for r in roles),
                 np.array([f"{label}-{i}" for i in range(n)], dtype=object), {metric: values}, lengths, status, keys=keys)


def within_binomial(k: int, n: int, p: float = 0.05, level: float = 0.999) -> bool:
    """Whether k successes of n are consistent with rate p (two-sided binomial interval at ``level``)."""
    lo, hi = stats.binom.interval(level, n, p)
    return lo <= k <= hi


def curves(rng, n: int, R: int, L: int, level=1.0, sd=0.3, shape=None) -> np.ndarray:
    """(n, R, L) positive values: a smooth curve per role times lognormal example effects and per-cell noise."""
    shape = np.exp(0.2 * np.sin(np.arange(L) / 2.0))[None, None] if shape is None else shape
    ex = rng.normal(0, sd, (n, 1, 1))
    return level * shape * np.exp(ex + rng.normal(0, 0.1, (n, R, L)))
