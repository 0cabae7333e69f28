"""The verdict table (first screen of a report and of an experiment overview) and the short findings.

This is the ONE place that reads the analysis' verdicts for display: :func:`verdict_table` turns the
findings' rows into cells (verdict word, effect text, interval, reason, css class); :func:`table_html`
and :func:`short_findings_html` only lay those out. To show another analysis' verdicts, change
:func:`verdict_table` (and :data:`CSS`) and nothing else.
"""
from __future__ import annotations

import html as htmllib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import findings
from .tables import fmt

#: verdict word -> css class (colour). A word not listed gets ``v-missing`` (grey, muted).
CSS = {
    "holds at equal length": "v-holds",
    "not significant at equal length": "v-length",
    "not separable from length": "v-length",
    "no clear difference": "v-none",
    "significant, not length-controlled (lengths unknown)": "v-uncontrolled",
    "not length-controlled": "v-descriptive",
}
LEGEND = (("v-holds", "difference holds at equal length"), ("v-length", "may be a length effect"),
          ("v-none", "no clear difference"), ("v-uncontrolled", "significant, length not controlled"),
          ("v-descriptive", "descriptive only"))


@dataclass
class Cell:
    verdict: str  # the verdict word(s), as the analysis names them
    effect: str  # the effect in words, e.g. "×1.23 at equal length"
    interval: str  # e.g. "95% CI 1.10–1.37"; "" when there is none (``reason`` says why)
    reason: str  # why there is no interval or no equal-length effect, and small-sample flags; "" when none
    css: str  # the colour class (:data:`CSS`)


@dataclass
class VerdictTable:
    columns: list[tuple[str, str]]  # (key, header): key = "<kind>:<metric>"
    rows: list[tuple[str, dict[str, Cell]]] = field(default_factory=list)  # (row label, key -> cell)


def column_key(row: dict) -> str:
    return f"{row['kind']}:{row['metric']}"


def column_header(key: str) -> str:
    kind, metric = key.split(":", 1)
    name = findings.NAMES.get(metric, metric)
    return f"MAD of the {name} curve" if kind == "mad" else name[0].upper() + name[1:]


def _num(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v


def cell(r: dict) -> Cell:
    """One findings row (a dict with findings.FINDINGS_COLUMNS) as a cell; see :func:`verdict_table`."""
    verdict = str(r["verdict"])
    css = CSS.get(verdict, "v-missing")
    flags = []
    if bool(r.get("small_sample")):
        flags.append(f"indicative only: n = {fmt(r['n_a'])} and {fmt(r['n_b'])} (< {findings.SMALL_N} in a group)")
    if r["kind"] == "mad":
        lo, hi = _num(r.get("mad_ratio_min")), _num(r.get("mad_ratio_max"))
        effect = (f"ratio {fmt(lo)} to {fmt(hi)} over roles" if np.isfinite(lo) and np.isfinite(hi) else "no ratio (no finite MAD)")
        why = "no interval for the ratio"
        if np.isfinite(_num(r.get("mad_cells"))):
            why += f"; intervals disjoint in {fmt(r['mad_cells_disjoint'])} of {fmt(r['mad_cells'])} (role, segment) cells"
        return Cell(verdict, effect, "", "; ".join([why, *flags]), css)
    nm_a, nm_b = _num(r.get("n_matched_a")), _num(r.get("n_matched_b"))
    matched = np.isfinite(nm_a) and np.isfinite(nm_b) and min(nm_a, nm_b) >= findings.MIN_MATCHED
    if matched and np.isfinite(_num(r.get("matched_ratio"))):
        effect = f"×{fmt(_num(r['matched_ratio']))} at equal length"
        lo, hi = _num(r.get("matched_ci_low")), _num(r.get("matched_ci_high"))
        interval = f"95% CI {fmt(lo)}–{fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else ""
        why = "" if interval else "no interval (too few matched examples to resample)"
        if np.isfinite(_num(r.get("matched_fraction"))) and _num(r["matched_fraction"]) < findings.LOW_OVERLAP:
            why = "; ".join(x for x in (why, f"lengths barely overlap ({fmt(_num(r['matched_fraction']))} matched)") if x)
        return Cell(verdict, effect, interval, "; ".join(x for x in (why, *flags) if x), css)
    ratio, lo, hi = _num(r.get("ratio")), _num(r.get("ratio_ci_low")), _num(r.get("ratio_ci_high"))
    effect = f"×{fmt(ratio)} overall" if np.isfinite(ratio) else "no ratio"
    interval = f"95% CI {fmt(lo)}–{fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else ""
    if not (np.isfinite(nm_a) and np.isfinite(nm_b)):
        why = "no effect at equal length: response lengths unknown"
    else:
        why = (f"no effect at equal length: lengths {'do not' if max(nm_a, nm_b) == 0 else 'barely'} overlap "
               f"({fmt(int(nm_a))} and {fmt(int(nm_b))} examples in shared length strata)")
    if not interval:
        why += "; no interval (too few examples to resample)"
    return Cell(verdict, effect, interval, "; ".join([why, *flags]), css)


def verdict_table(rows: pd.DataFrame, label=None) -> VerdictTable:
    """The first screen's table from the findings' rows.

    Input contract: ``rows`` has one row per (pair of groups, headline metric) with the columns of
    ``findings.csv`` (:data:`layergrad.report.findings.FINDINGS_COLUMNS`); used here:
    ``group_a, group_b`` (the pair: b is compared against a), ``metric``, ``kind`` (``level`` or
    ``mad``), ``verdict`` (the words of :mod:`.findings`; colours in :data:`CSS`), ``n_a, n_b,
    small_sample``; level rows: ``ratio, ratio_ci_low, ratio_ci_high`` (overall, not length-
    controlled), ``matched_ratio, matched_ci_low, matched_ci_high, n_matched_a, n_matched_b,
    matched_fraction`` (at equal length; NaN/None when lengths are unknown); mad rows:
    ``mad_ratio_min, mad_ratio_max, mad_cells, mad_cells_disjoint``. Missing values may be NaN or None.
    ``label(row) -> str`` names a table row (default ``"<group_b> vs <group_a>"``; the overview adds
    model and comparison). Columns appear in the order of their first row; a pair without a row for
    a column gets no cell there.
    """
    label = label or (lambda r: f"{r['group_b']} vs {r['group_a']}")
    recs = rows.to_dict("records")
    keys = list(dict.fromkeys(column_key(r) for r in recs))
    table = VerdictTable([(k, column_header(k)) for k in keys])
    by_row: dict[str, dict[str, Cell]] = {}
    for r in recs:
        by_row.setdefault(label(r), {})[column_key(r)] = cell(r)
    table.rows = list(by_row.items())
    return table


def table_html(table: VerdictTable, caption: str = "") -> str:
    """The table as HTML (class ``verdicts``), with a colour legend."""
    e = htmllib.escape
    out = ['<table class="verdicts">']
    if caption:
        out.append(f"<caption>{e(caption)}</caption>")
    out.append("<thead><tr><th>comparison</th>" + "".join(f"<th>{e(h)}</th>" for _, h in table.columns) + "</tr></thead><tbody>")
    for name, cells in table.rows:
        tds = []
        for key, _ in table.columns:
            c = cells.get(key)
            if c is None:
                tds.append('<td class="v-missing"><span class="reason">not computed for this pair</span></td>')
                continue
            parts = [f'<span class="word">{e(c.verdict)}</span>', f'<span class="effect">{e(c.effect)}</span>']
            parts += [f'<span class="ci">{e(c.interval)}</span>'] if c.interval else []
            parts += [f'<span class="reason">{e(c.reason)}</span>'] if c.reason else []
            tds.append(f'<td class="{c.css}">{"".join(parts)}</td>')
        out.append(f'<tr><td class="pair">{e(name)}</td>{"".join(tds)}</tr>')
    out.append("</tbody></table>")
    used = {c.css for _, cells in table.rows for c in cells.values()}
    out.append('<p class="legend">' + "".join(f'<span class="{k}">{e(t)}</span>' for k, t in LEGEND if k in used) + "</p>")
    return "".join(out)


def short_findings_html(rows: pd.DataFrame, href: str = "findings.csv") -> str:
    """One line per finding (verdict, metric, pair, effect), its full sentence with linked numbers one click
    away (a ``details`` element); grouped by pair."""
    if len(rows) == 0:
        return "<p>One group only: no comparison to state. The curves and MAD below describe it.</p>"
    e = htmllib.escape
    out, last = [], None
    for i, r in enumerate(rows.to_dict("records")):
        pair = (r["group_a"], r["group_b"])
        if pair != last:
            out.append(("</ul>" if last is not None else "") + f'<h3>{e(str(r["group_b"]))} vs {e(str(r["group_a"]))}</h3><ul class="findings">')
            last = pair
        c = cell(r)
        what = column_header(column_key(r))
        line = f"<strong>{e(what)}</strong>: {e(c.verdict)}; {e(c.effect)}" + (f" ({e(c.interval)})" if c.interval else "") + "."
        if bool(r.get("small_sample")):
            line += f" Indicative only: n = {e(fmt(r['n_a']))} and {e(fmt(r['n_b']))}."
        out.append(f'<li class="{c.css}"><details><summary>{line}</summary><div>{findings.sentence_html(r, i + 1, href)}</div></details></li>')
    out.append("</ul>")
    return "".join(out)
