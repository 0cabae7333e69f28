"""The design of a comparison of two groups: which examples are paired, which are clustered.

Units. Every test of :mod:`.effects`, :mod:`.primary` and :mod:`.multiplicity` runs on *units*,
not on raw examples. A unit is one instruction (one key): the examples of a group that share a
key form a cluster and enter as their mean (of the log values, for the log-scale analyses), so
two responses to one instruction count once and the tests see the clustering instead of
ignoring it (a random intercept per instruction, fitted exactly by averaging within it).

Keys, tried in this order (``pairing="auto"``): a ``pair_key`` column of the examples (when the
data carries one), then the ``instruction`` text as scored. The example id is a key only when
asked (``pairing="id"``): two unrelated datasets both numbering their records "0".."9" must
not be paired. ``pairing="none"`` never pairs (units are still clusters of one instruction).

PAIRED when the two groups share at least ``max(3, MIN_PAIRED_FRACTION x min(keys_a, keys_b))``
keys: the units are the shared keys, the same order in both groups; examples whose key has no
partner take no part, and are COUNTED (``n_left_a``, ``n_left_b``) so every sentence can say how
many were left out. Otherwise INDEPENDENT: the units of each group are its own keys (or its
examples, when it has no key column).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .groups import Group

AUTO_KEYS = ("pair_key", "instruction")
PAIRINGS = ("auto", "none", "pair_key", "instruction", "id")
MIN_PAIRED_FRACTION = 0.8


@dataclass
class Design:
    """Units of a comparison (module docstring). ``units_a[u]`` holds the example rows of group a in unit u."""

    kind: str  # "paired" | "independent"
    by: str | None  # the key that formed the units: pair_key | instruction | id | None (one unit per example)
    units_a: list[np.ndarray]
    units_b: list[np.ndarray]
    n_a: int  # examples of each group
    n_b: int

    @property
    def paired(self) -> bool:
        return self.kind == "paired"

    @property
    def n_units_a(self) -> int:
        return len(self.units_a)

    @property
    def n_units_b(self) -> int:
        return len(self.units_b)

    @property
    def n_pairs(self) -> int:
        return len(self.units_a) if self.paired else 0

    @property
    def n_left_a(self) -> int:
        """Examples of a in no unit (paired design: their key has no partner in b)."""
        return self.n_a - sum(len(u) for u in self.units_a)

    @property
    def n_left_b(self) -> int:
        return self.n_b - sum(len(u) for u in self.units_b)

    @property
    def clustered(self) -> bool:
        """Whether some unit holds more than one example (repeated instructions)."""
        return any(len(u) > 1 for u in self.units_a) or any(len(u) > 1 for u in self.units_b)

    def aggregate(self, xa: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit means of per-example values ``xa`` (n_a, ...) and ``xb`` (n_b, ...), NaN ignored; (m_a, ...), (m_b, ...).

        A unit with no finite value in a cell is NaN there."""
        return _unit_means(xa, self.units_a), _unit_means(xb, self.units_b)

    def words(self) -> str:
        """The design in a few words, for sentences."""
        if self.paired:
            s = f"paired on {self.by}, {self.n_pairs} pairs"
        else:
            s = f"independent samples, {self.n_units_a} and {self.n_units_b} " + ("instructions" if self.by else "examples")
        if self.clustered:
            s += " (repeated instructions averaged within each)"
        left = [f"{n} of {g}" for n, g in ((self.n_left_a, "a"), (self.n_left_b, "b")) if n]
        if left:
            s += f"; {self.n_left_a + self.n_left_b} examples without a partner left out"
        return s


def _unit_means(x: np.ndarray, units: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(units),) + x.shape[1:], np.nan)
    for u, rows in enumerate(units):
        v = x[rows]
        fin = np.isfinite(v)
        cnt = fin.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[u] = np.where(cnt > 0, np.where(fin, v, 0.0).sum(axis=0) / np.maximum(cnt, 1), np.nan)
    return out


def _clusters(keys: np.ndarray | None, n: int) -> dict:
    """key -> example rows (first-seen order); examples without a usable key are their own cluster."""
    out: dict = {}
    for i in range(n):
        k = keys[i] if keys is not None else None
        if k is None or (isinstance(k, float) and math.isnan(k)) or str(k) == "":
            k = ("\0row", i)
        out.setdefault(k, []).append(i)
    return out


def design(a: Group, b: Group, pairing: str = "auto") -> Design:
    """The design of comparing ``b`` against ``a`` (module docstring)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
    keys = () if pairing == "none" else AUTO_KEYS if pairing == "auto" else (pairing,)
    for key in keys:
        ka, kb = a.keys.get(key), b.keys.get(key)
        if ka is None or kb is None:
            continue
        ca, cb = _clusters(ka, a.n), _clusters(kb, b.n)
        common = [k for k in ca if k in cb and not (isinstance(k, tuple) and k[:1] == ("\0row",))]
        need = max(3, math.ceil(MIN_PAIRED_FRACTION * min(len(ca), len(cb))))
        if len(common) >= need:
            return Design("paired", key, [np.array(ca[k]) for k in common], [np.array(cb[k]) for k in common], a.n, b.n)
    # independent: units are each group's own instructions where the data has a key, else its examples
    for key in AUTO_KEYS:
        ka, kb = a.keys.get(key), b.keys.get(key)
        if ka is not None and kb is not None:
            ca, cb = _clusters(ka, a.n), _clusters(kb, b.n)
            return Design("independent", key, [np.array(v) for v in ca.values()], [np.array(v) for v in cb.values()], a.n, b.n)
    return Design("independent", None, [np.array([i]) for i in range(a.n)], [np.array([i]) for i in range(b.n)], a.n, b.n)


DESIGN_COLUMNS = ["group_a", "group_b", "design", "pair_by", "n_a", "n_b", "n_units_a", "n_units_b", "n_pairs", "clustered",
                  "n_left_a", "n_left_b"]


def design_row(a: Group, b: Group, d: Design) -> dict:
    return {"group_a": a.label, "group_b": b.label, "design": d.kind, "pair_by": d.by or "", "n_a": a.n, "n_b": b.n,
            "n_units_a": d.n_units_a, "n_units_b": d.n_units_b, "n_pairs": d.n_pairs, "clustered": d.clustered,
            "n_left_a": d.n_left_a, "n_left_b": d.n_left_b}


def design_table(groups: list[Group], pairing: str = "auto") -> pd.DataFrame:
    """Per pair of groups: the design, its key, units and the examples left out of pairing."""
    rows = [design_row(groups[j], groups[k], design(groups[j], groups[k], pairing))
            for j in range(len(groups)) for k in range(j + 1, len(groups))]
    return pd.DataFrame(rows, columns=DESIGN_COLUMNS)
