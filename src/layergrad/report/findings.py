"""Findings: the report's answer in words, built only from the report's tables.

One row of ``findings.csv`` per pair of groups and headline metric (nuclear norm, effective
rank: the level of the metric; MAD: how much its mean curve moves between layers). Every number a
sentence states is a column of that row, and the row's numbers are taken from the other CSVs
(``compare_overall.csv``, ``compare.csv``, ``length_matched.csv``, ``length_partial.csv``,
``mad.csv``, ``pairing.csv``), never computed here. In the HTML each number links to findings.csv
and names its row and column in a tooltip.

Verdicts (the first words of a level sentence), with ``alpha = 0.05``:

- ``no clear difference``: the overall test (compare_overall.csv) is not significant;
- ``holds at equal length``: significant overall AND in the length-matched comparison
  (length_matched.csv, role ``all``), in the same direction;
- ``not significant at equal length``: significant overall, but not after length matching:
  the difference may be a length effect;
- ``significant, not length-controlled (lengths unknown)``: runs without response lengths;
- ``not separable from length``: the groups' lengths do not overlap enough to match (fewer than
  3 matched examples in a group): the difference cannot be told apart from length.

A group with fewer than ``SMALL_N`` examples makes every sentence of its pairs start with
"Indicative only", and its intervals and tests are labelled as indicative.
"""
from __future__ import annotations

import html as htmllib

import numpy as np
import pandas as pd

from .tables import fmt

ALPHA = 0.05
SMALL_N = 10
MIN_MATCHED = 3
LOW_OVERLAP = 0.5
HEADLINE = ("nuclear", "effective_rank")
MAD_METRIC = "nuclear"
NAMES = {"nuclear": "nuclear norm", "effective_rank": "effective rank", "top1_share": "top-1 share", "spectral": "spectral norm",
         "frobenius": "Frobenius norm", "s_ratio": "S_ratio", "s_sum_per_loss": "S_sum / loss"}
FINDINGS_COLUMNS = [
    "group_a", "group_b", "metric", "kind", "verdict", "design", "pair_by", "n_a", "n_b", "n_pairs", "small_sample",
    "ratio", "ratio_ci_low", "ratio_ci_high", "p_value", "cells", "cells_higher", "cells_lower", "cells_significant", "correction",
    "matched_ratio", "matched_ci_low", "matched_ci_high", "matched_p", "n_matched_a", "n_matched_b", "matched_fraction",
    "partial_spearman", "partial_spearman_p", "roles", "roles_lower", "mad_ratio_min", "mad_ratio_max", "mad_cells",
    "mad_cells_disjoint", "sentence",
]


def findings_table(t: dict[str, pd.DataFrame], groups) -> pd.DataFrame:
    """Rows of findings.csv from the report's tables ``t`` (see module docstring)."""
    rows = []
    n_of = {g.label: g.n for g in groups}
    pairing = t["pairing"].set_index(["group_a", "group_b"]) if len(t["pairing"]) else None
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            a, b = groups[j].label, groups[k].label
            base = {"group_a": a, "group_b": b, "n_a": n_of[a], "n_b": n_of[b], "small_sample": min(n_of[a], n_of[b]) < SMALL_N}
            if pairing is not None and (a, b) in pairing.index:
                p = pairing.loc[(a, b)]
                base.update(design=p["design"], pair_by=p["pair_by"], n_pairs=int(p["n_pairs"]))
            for m in HEADLINE:
                row = _level(t, a, b, m, dict(base))
                if row is not None:
                    rows.append(row)
            row = _mad(t, a, b, MAD_METRIC, dict(base))
            if row is not None:
                rows.append(row)
    df = pd.DataFrame(rows, columns=FINDINGS_COLUMNS)
    df["sentence"] = [plain(tokens(r)) for r in df.to_dict("records")]
    return df


def _level(t, a, b, m, row):
    ov = t["compare_overall"]
    ov = ov[(ov["group_a"] == a) & (ov["group_b"] == b) & (ov["metric"] == m)]
    if len(ov) == 0:
        return None
    o = ov.iloc[0]
    c = t["compare"]
    c = c[(c["group_a"] == a) & (c["group_b"] == b) & (c["metric"] == m)]
    row.update(metric=m, kind="level", ratio=o["ratio"], ratio_ci_low=o["ratio_ci_low"], ratio_ci_high=o["ratio_ci_high"],
               p_value=o["p_value"], cells=int(c["ratio"].notna().sum()), cells_higher=int((c["ratio"] > 1).sum()),
               cells_lower=int((c["ratio"] < 1).sum()), cells_significant=int((c["p_adjusted"] < ALPHA).sum()),
               correction=str(c["correction"].iloc[0]) if len(c) else "")
    mt = t["length_matched"]
    mt = mt[(mt["group_a"] == a) & (mt["group_b"] == b) & (mt["metric"] == m) & (mt["role"] == "all")]
    if len(mt) and mt.iloc[0]["n_a"] > 0 and mt.iloc[0]["n_b"] > 0:  # else: lengths unknown (imported runs)
        x = mt.iloc[0]
        row.update(matched_ratio=x["ratio"], matched_ci_low=x["ratio_ci_low"], matched_ci_high=x["ratio_ci_high"],
                   matched_p=x["p_value"], n_matched_a=int(x["n_matched_a"]), n_matched_b=int(x["n_matched_b"]),
                   matched_fraction=x["matched_fraction"])
    pt = t["length_partial"]
    pt = pt[(pt["group_a"] == a) & (pt["group_b"] == b) & (pt["metric"] == m) & (pt["role"] == "all")]
    if len(pt):
        row.update(partial_spearman=pt.iloc[0]["partial_spearman"], partial_spearman_p=pt.iloc[0]["partial_spearman_p"])
    row["verdict"] = _verdict(row)
    return row


def _verdict(r) -> str:
    if not (np.isfinite(r["p_value"]) and r["p_value"] < ALPHA):
        return "no clear difference"
    if r.get("n_matched_a") is None or not np.isfinite(r["n_matched_a"]):
        return "significant, not length-controlled (lengths unknown)"
    if min(r["n_matched_a"], r["n_matched_b"]) < MIN_MATCHED:
        return "not separable from length"
    same_side = np.sign(np.log(r["matched_ratio"])) == np.sign(np.log(r["ratio"])) if r["matched_ratio"] > 0 else False
    if np.isfinite(r["matched_p"]) and r["matched_p"] < ALPHA and same_side:
        return "holds at equal length"
    return "not significant at equal length"


def _mad(t, a, b, m, row):
    d = t["mad"]
    d = d[d["metric"] == m]
    da, db = d[d["group"] == a].set_index(["role", "segment"]), d[d["group"] == b].set_index(["role", "segment"])
    if len(da) == 0 or len(db) == 0:
        return None
    j = da.add_suffix("_a").join(db.add_suffix("_b"), how="inner")
    j = j[np.isfinite(j["mad_a"]) & np.isfinite(j["mad_b"])]
    allseg = j.xs("all", level="segment") if len(j) and "all" in j.index.get_level_values("segment") else j.iloc[:0]
    if len(allseg) == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = allseg["mad_b"] / allseg["mad_a"]
    disjoint = (j["ci_high_b"] < j["ci_low_a"]) | (j["ci_high_a"] < j["ci_low_b"])
    row.update(metric=m, kind="mad", verdict="not length-controlled", roles=len(allseg), roles_lower=int((ratio < 1).sum()),
               mad_ratio_min=float(ratio.min()), mad_ratio_max=float(ratio.max()), mad_cells=len(j), mad_cells_disjoint=int(disjoint.sum()))
    return row


# ---- words ------------------------------------------------------------------------------------


def _n(r, col):
    return ("num", r[col], col)


def tokens(r: dict) -> list:
    """The sentence of a findings row as text pieces and ``("num", value, column)`` tokens."""
    a, b, m = r["group_a"], r["group_b"], NAMES.get(r["metric"], r["metric"])
    out: list = []
    if r["small_sample"]:
        small = a if r["n_a"] < SMALL_N else b
        out += [f"Indicative only: {small!r} has n = ", _n(r, "n_a" if small == a else "n_b"),
                f" (< {SMALL_N}); its intervals and tests are indicative. "]
    if r["design"] == "paired":
        design = ["paired on ", r["pair_by"], ", ", _n(r, "n_pairs"), " pairs"]
    else:
        design = ["independent samples, n = ", _n(r, "n_a"), " and ", _n(r, "n_b")]
    if r["kind"] == "mad":
        out += [f"MAD of the mean {m} curve (all layers), {b} vs {a}: ratio ", _n(r, "mad_ratio_min"), " to ", _n(r, "mad_ratio_max"),
                " over roles; smaller in ", _n(r, "roles_lower"), " of ", _n(r, "roles"), " roles; the 95% intervals are disjoint in ",
                _n(r, "mad_cells_disjoint"), " of ", _n(r, "mad_cells"), " (role, segment) cells. MAD is not length-controlled here."]
        return out
    verdict = r["verdict"]
    out += [f"{verdict[0].upper() + verdict[1:]}. "]
    out += [f"{m.capitalize()} (mean over layers and roles), {b} vs {a} (", *design, "): ratio of means ", _n(r, "ratio"),
            " (95% CI ", _n(r, "ratio_ci_low"), "–", _n(r, "ratio_ci_high"), ", p = ", _n(r, "p_value"), "); ",
            f"{b} higher in ", _n(r, "cells_higher"), " and lower in ", _n(r, "cells_lower"), " of ", _n(r, "cells"),
            " (layer, role) cells, ", _n(r, "cells_significant"), f" significant after {_corr(r['correction'])} (q < {ALPHA}). "]
    nm_a, nm_b = r.get("n_matched_a"), r.get("n_matched_b")
    if nm_a is None or not np.isfinite(nm_a):
        out += ["No length-matched comparison (response lengths unknown)."]
    elif min(nm_a, nm_b) < MIN_MATCHED:
        how = "do not overlap" if max(nm_a, nm_b) == 0 else "barely overlap"
        out += [f"Length: the groups' response lengths {how} (", _n(r, "n_matched_a"), " and ", _n(r, "n_matched_b"),
                " examples in shared length strata), so no length-matched comparison is possible and the difference cannot be "
                "told apart from length"]
        out += _partial(r) + ["."]
    else:
        warn = r["matched_fraction"] < LOW_OVERLAP
        out += ["At equal length (" + ("warning: lengths barely overlap, only " if warn else ""), _n(r, "n_matched_a"), " and ",
                _n(r, "n_matched_b"), " examples matched, fraction ", _n(r, "matched_fraction"), "): ratio ", _n(r, "matched_ratio"),
                " (95% CI ", _n(r, "matched_ci_low"), "–", _n(r, "matched_ci_high"), ", p = ", _n(r, "matched_p"), ")"]
        out += [", not significant" if not (r["matched_p"] < ALPHA) else ""] + _partial(r) + ["."]
    return out


def _partial(r) -> list:
    if r.get("partial_spearman") is None or not np.isfinite(r["partial_spearman"]):
        return []
    return ["; partial Spearman correlation with group given length ", _n(r, "partial_spearman"), " (p = ", _n(r, "partial_spearman_p"), ")"]


def _corr(code: str) -> str:
    return {"by": "Benjamini-Yekutieli", "bh": "Benjamini-Hochberg"}.get(code, code)


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
        return "<p>One group only: no comparison to state. The curves and MAD below describe it.</p>"
    parts, last = [], None
    for i, r in enumerate(df.to_dict("records")):
        pair = (r["group_a"], r["group_b"])
        if pair != last:
            if last is not None:
                parts.append("</ul>")
            parts.append(f'<h3>{htmllib.escape(r["group_b"])} vs {htmllib.escape(r["group_a"])}</h3><ul class="findings">')
            last = pair
        cls = "verdict-" + r["verdict"].replace(" ", "-")
        parts.append(f'<li class="{cls}">{sentence_html(r, i + 1, href)}</li>')
    parts.append("</ul>")
    return "".join(parts)


def small_sample_warnings(groups) -> list[str]:
    return [f"Group {g.label!r} has only {g.n} example{'s' if g.n != 1 else ''} (fewer than {SMALL_N}): its intervals and tests are "
            "indicative only; measure more examples before drawing conclusions." for g in groups if g.n < SMALL_N]
