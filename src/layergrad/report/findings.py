"""Findings: the report's answer in words, built only from the report's tables.

One row of ``findings.csv`` per pair of groups and headline metric (``kind = level``: nuclear
norm, effective rank; from ``primary.csv``, the pre-specified primary analysis of
:mod:`layergrad.analysis.primary`, with the cell-level max-T result from ``compare.csv``), and
one per pair for evenness (``kind = evenness``, from ``evenness_compare.csv``). Every number a
sentence states is a column of its row, copied from those tables, never computed here. In the
HTML each number links to findings.csv and names its row and column in a tooltip.

The verdict of a level row is :func:`layergrad.analysis.verdicts.verdict` of its primary row (the
rules: ``analysis.verdicts.RULES``). The verdict of an evenness row: "more even" ("less even")
when at least one role's roughness is significantly lower (higher) over all layers and none the
other way; "mixed evenness" when both occur; "no clear difference in evenness" when none; "no
inference" when no role could be compared.
"""
from __future__ import annotations

import html as htmllib

import numpy as np
import pandas as pd

from layergrad.analysis.multiplicity import layer_ranges
from layergrad.analysis.primary import ALL_ROLES, HEADLINE
from layergrad.analysis.verdicts import ALPHA, verdict

from .tables import fmt

SMALL_N = 10
EVENNESS_METRIC = "nuclear"
NAMES = {"nuclear": "nuclear norm", "effective_rank": "effective rank", "top1_share": "top-1 share", "spectral": "spectral norm",
         "frobenius": "Frobenius norm", "s_ratio": "S_ratio", "s_sum_per_loss": "S_sum / loss"}
FINDINGS_COLUMNS = [
    "group_a", "group_b", "metric", "kind", "verdict", "design", "pair_by", "clustered", "n_a", "n_b", "n_units_a", "n_units_b",
    "n_pairs", "n_left", "ratio", "ci_low", "ci_high", "p_holm", "length_control", "adj_ratio", "adj_ci_low", "adj_ci_high",
    "adj_p_holm", "length_ratio", "cells", "cells_significant", "significant_where", "min_p", "roles", "roles_more_even",
    "roles_less_even", "cut", "reason", "sentence",
]


def findings_table(t: dict[str, pd.DataFrame], groups) -> pd.DataFrame:
    """Rows of findings.csv from the report's tables ``t`` (``primary``, ``compare``, ``evenness_compare``)."""
    rows = []
    prim = t["primary"]
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j].label, groups[k].label
            for m in HEADLINE:
                p = prim[(prim["group_a"] == a) & (prim["group_b"] == b) & (prim["metric"] == m) & (prim["role"] == ALL_ROLES)]
                if len(p):
                    rows.append(_level(p.iloc[0].to_dict(), t["compare"]))
            ev = _evenness(t.get("evenness_compare"), a, b, prim[(prim["group_a"] == a) & (prim["group_b"] == b)])
            if ev is not None:
                rows.append(ev)
    df = pd.DataFrame(rows, columns=FINDINGS_COLUMNS)
    df["sentence"] = [plain(tokens(r)) for r in df.to_dict("records")]
    return df


def _level(p: dict, compare: pd.DataFrame) -> dict:
    row = {c: p.get(c) for c in FINDINGS_COLUMNS if c in p}
    row.update(kind="level", verdict=verdict(p), n_left=int(p["n_left_a"] + p["n_left_b"]), reason=p.get("reason", ""))
    c = compare[(compare["group_a"] == p["group_a"]) & (compare["group_b"] == p["group_b"]) & (compare["metric"] == p["metric"])]
    c = c[np.isfinite(c["p_adjusted"].astype(float))]
    row["cells"] = len(c)
    if len(c):
        sig = c[c["p_adjusted"] < ALPHA]
        row["cells_significant"] = len(sig)
        row["min_p"] = float(c["min_p"].iloc[0])
        where = []
        for role, s in sig.groupby("role", sort=False):
            where.append(f"{role} layers {layer_ranges(s['layer'].tolist())}")
        row["significant_where"] = "; ".join(where)
    return row


def _evenness(ev: pd.DataFrame | None, a: str, b: str, prim: pd.DataFrame) -> dict | None:
    if ev is None or len(ev) == 0:
        return None
    e = ev[(ev["group_a"] == a) & (ev["group_b"] == b) & (ev["metric"] == EVENNESS_METRIC) & (ev["segment"] == "all")]
    if len(e) == 0:
        return None
    judged = e[e["verdict"] != "no inference"]
    more, less = int((judged["verdict"] == "more even").sum()), int((judged["verdict"] == "less even").sum())
    if len(judged) == 0:
        word = "no inference"
    elif more and less:
        word = "mixed evenness"
    elif more:
        word = "more even"
    elif less:
        word = "less even"
    else:
        word = "no clear difference in evenness"
    first = prim.iloc[0] if len(prim) else {}
    return {"group_a": a, "group_b": b, "metric": EVENNESS_METRIC, "kind": "evenness", "verdict": word,
            "design": first.get("design", ""), "n_a": first.get("n_a"), "n_b": first.get("n_b"), "roles": len(judged),
            "roles_more_even": more, "roles_less_even": less,
            "reason": "" if len(judged) else "fewer than 4 complete curves per group, or fewer than 3 layers"}


# ---- words ------------------------------------------------------------------------------------


def _n(r, col):
    return ("num", r[col], col)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def tokens(r: dict) -> list:
    """The sentence of a findings row as text pieces and ``("num", value, column)`` tokens."""
    a, b, m = r["group_a"], r["group_b"], NAMES.get(r["metric"], r["metric"])
    if r["kind"] == "evenness":
        if r["verdict"] == "no inference":
            return [f"No inference on evenness of {b} vs {a}: {r['reason']}."]
        return [f"{_cap(r['verdict'])}: relative roughness of the mean {m} curve over all layers (noise-corrected, scale-free), "
                f"{b} vs {a}: lower in ", _n(r, "roles_more_even"), " and higher in ", _n(r, "roles_less_even"), " of ", _n(r, "roles"),
                " roles (intervals Bonferroni-adjusted over the roles; evenness_compare.csv)."]
    v = r["verdict"]
    out: list = [f"{_cap(v)}. {_cap(m)} of {b} vs {a} (geometric mean over roles; "]
    if r["design"] == "paired":
        out += ["paired on ", str(r["pair_by"]), ", ", _n(r, "n_pairs"), " pairs"]
    else:
        out += ["independent, ", _n(r, "n_units_a"), " and ", _n(r, "n_units_b"), " " + ("instructions" if r["pair_by"] else "examples")]
    if r["clustered"]:
        out += [", repeated instructions averaged"]
    if r["n_left"]:
        out += ["; ", _n(r, "n_left"), " examples without a partner left out"]
    out += ["). "]
    if v == "no inference":
        return out + [_cap(str(r["reason"]) or "no interval or test is possible") + "."]
    out += ["Overall ratio ", _n(r, "ratio"), " (95% CI ", _n(r, "ci_low"), "–", _n(r, "ci_high"), ", Holm p ", _n(r, "p_holm"), "). "]
    lc = r["length_control"]
    if lc == "equal":
        how = f" ({r['cut']})" if isinstance(r.get("cut"), str) and r["cut"] else ""
        who = "Every pair has" if r["design"] == "paired" else "Every response of both groups has"
        out += [f"{who} the same number of response tokens{how}, so this is the effect at exactly equal length."]
    elif lc == "model":
        out += ["At equal length (ln y ~ group + ln length; ", b, "'s responses ", _n(r, "length_ratio"), "x as long): ratio ",
                _n(r, "adj_ratio"), " (95% CI ", _n(r, "adj_ci_low"), "–", _n(r, "adj_ci_high"), ", Holm p ", _n(r, "adj_p_holm"), ")."]
    elif lc == "no common support":
        out += ["The lengths do not overlap enough (", b, "'s responses ", _n(r, "length_ratio"), "x as long), so these data cannot "
                "separate the difference from length; measuring ", b, " cut to ", a, "'s lengths (layergrad run --truncate-to) would."]
    elif lc == "lengths unknown":
        out += ["Response lengths are unknown, so this is not length-controlled."]
    if v == "no clear difference":
        lo, hi = ("adj_ci_low", "adj_ci_high") if lc in ("equal", "model") else ("ci_low", "ci_high")
        out += [" The data allow ratios from ", _n(r, lo), " to ", _n(r, hi), ": too uncertain to tell; measure more examples."]
    out += _cells(r)
    return out


def _cells(r: dict) -> list:
    cells = r.get("cells")
    if not cells or not np.isfinite(cells):
        return []
    min_p = r.get("min_p")
    if min_p is not None and np.isfinite(min_p) and min_p >= ALPHA:
        n = r["n_pairs"] if r["design"] == "paired" else f"{r['n_units_a']} and {r['n_units_b']}"
        return [f" Per (layer, role) cell: with {n} {'pairs' if r['design'] == 'paired' else 'units'} no cell test can reach {ALPHA} "
                "(smallest attainable p ", _n(r, "min_p"), "); measure more examples."]
    if r["cells_significant"]:
        return [" Per cell (max-T, family-wise 5%): significant in ", _n(r, "cells_significant"), " of ", _n(r, "cells"), " (",
                str(r["significant_where"]), ")."]
    return [" Per cell (max-T, family-wise 5%): none of ", _n(r, "cells"), " significant."]


def plain(toks: list) -> str:
    return "".join(fmt(t[1], t[2]) if isinstance(t, tuple) else t for t in toks)


def sentence_html(row: dict, row_number: int, href: str = "findings.csv") -> str:
    """The sentence with every number a link to ``href``, its row and column in the tooltip."""
    out = []
    for t in tokens(row):
        if isinstance(t, tuple):
            out.append(f'<a class="fnum" href="{htmllib.escape(href)}" title="{htmllib.escape(href)} row {row_number}, column {t[2]}">'
                       f'{htmllib.escape(fmt(t[1], t[2]))}</a>')
        else:
            out.append(htmllib.escape(t))
    return "".join(out)


def findings_html(df: pd.DataFrame, href: str = "findings.csv", with_pair: bool = False) -> str:
    """The findings as a list grouped by pair of groups (``with_pair``: also name the pair in each item)."""
    if len(df) == 0:
        return "<p>One group only: no comparison to state. The curves below describe it.</p>"
    parts, last = [], None
    for i, r in enumerate(df.to_dict("records")):
        pair = (r["group_a"], r["group_b"])
        if pair != last:
            if last is not None:
                parts.append("</ul>")
            parts.append(f'<h3>{htmllib.escape(r["group_b"])} vs {htmllib.escape(r["group_a"])}</h3><ul class="findings">')
            last = pair
        cls = "verdict-" + r["verdict"].replace(" ", "-").replace(",", "")
        parts.append(f'<li class="{cls}">{sentence_html(r, i + 1, href)}</li>')
    parts.append("</ul>")
    return "".join(parts)


def small_sample_warnings(groups) -> list[str]:
    return [f"Group {g.label!r} has only {g.n} example{'s' if g.n != 1 else ''} (fewer than {SMALL_N}): its intervals are wide; "
            "measure more examples before drawing conclusions." for g in groups if g.n < SMALL_N]
