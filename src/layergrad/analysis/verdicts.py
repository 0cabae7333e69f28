"""Verdict rules: the words of a finding, from a row of the primary table (:mod:`.primary`).

Pre-specified; the first rule that applies gives the verdict. "Significant" means a
Holm-adjusted p below ``ALPHA`` (``p_holm`` overall, ``adj_p_holm`` at equal length).
"Negligible" means the 95% interval lies inside ``[1/NEGLIGIBLE, NEGLIGIBLE]`` (a difference of
at most 10% either way). The table :data:`RULES` is what the docs and the report's Methods
print; :func:`verdict` implements it, one test per row in ``tests/test_verdicts.py``.
"""
from __future__ import annotations

import numpy as np

ALPHA = 0.05
NEGLIGIBLE = 1.1

#: (verdict word, when it applies), in the order the rules are tried.
RULES: list[tuple[str, str]] = [
    ("no inference", "too few units with finite values, or no spread: no interval or test is possible (the reason is stated)"),
    ("lower at equal length / higher at equal length",
     "the effect at equal length is significant, and the overall effect is significant in the same direction"),
    ("reversed at equal length", "the effect at equal length is significant, and the overall effect is significant in the opposite direction"),
    ("hidden by length", "the effect at equal length is significant, the overall effect is not: length masks it"),
    ("explained by length", "the overall effect is significant; at equal length the interval is negligible"),
    ("unclear at equal length", "the overall effect is significant; at equal length it is neither significant nor negligible"),
    ("not separable from length", "the overall effect is significant, but the groups' lengths do not overlap enough to compare them "
     "at equal length (no length-adjusted number is given)"),
    ("lower, length not controlled / higher, length not controlled",
     "the overall effect is significant and the response lengths are unknown"),
    ("negligible difference", "nothing significant, and the interval (at equal length where available) is negligible"),
    ("no clear difference", "nothing significant, and the interval allows effects that are not negligible (the sentence gives "
     "the interval: the data cannot tell; measure more examples)"),
]
WORDS = ("no inference", "lower at equal length", "higher at equal length", "reversed at equal length", "hidden by length",
         "explained by length", "unclear at equal length", "not separable from length", "lower, length not controlled",
         "higher, length not controlled", "negligible difference", "no clear difference")


def _sig(p) -> bool:
    return p is not None and np.isfinite(p) and p < ALPHA


def _negligible(lo, hi) -> bool:
    return np.isfinite(lo) and np.isfinite(hi) and lo >= 1.0 / NEGLIGIBLE and hi <= NEGLIGIBLE


def _dir(ratio) -> str:
    return "lower" if ratio < 1 else "higher"


def verdict(r: dict) -> str:
    """The verdict word of a primary-table row (``ratio``, ``ci_*``, ``p_holm``, ``length_control``, ``adj_*``)."""
    if not np.isfinite(r.get("p_value", np.nan)):
        return "no inference"
    sig = _sig(r.get("p_holm"))
    lc = r.get("length_control", "")
    if lc in ("equal", "model"):
        if _sig(r.get("adj_p_holm")):
            if not sig:
                return "hidden by length"
            if (r["adj_ratio"] < 1) != (r["ratio"] < 1):
                return "reversed at equal length"
            return f"{_dir(r['adj_ratio'])} at equal length"
        if _negligible(r["adj_ci_low"], r["adj_ci_high"]):
            return "explained by length" if sig else "negligible difference"
        return "unclear at equal length" if sig else "no clear difference"
    if sig:
        if lc == "lengths unknown":
            return f"{_dir(r['ratio'])}, length not controlled"
        return "not separable from length"
    return "negligible difference" if _negligible(r["ci_low"], r["ci_high"]) else "no clear difference"
