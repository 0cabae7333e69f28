"""Tables: one DataFrame, four renderings (CSV for numbers, Markdown and LaTeX for papers, HTML).

CSV keeps full precision; the text renderings show 4 significant digits (p-values 3), NaN as
an en dash. All four are made from the same DataFrame, so every shown number is in the CSV.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

_P_COLUMNS = {"p_value", "p_adjusted", "min_p_adjusted", "pearson_p", "spearman_p", "partial_pearson_p", "partial_spearman_p",
               "p_holm", "adj_p_holm", "effect_p_holm", "partial_p_value"}
NAN = "–"



def _numeric(col: pd.Series) -> bool:
    """A column of numbers (right-aligned); booleans are words (True/False), not numbers."""
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)

def fmt(value, column: str = "") -> str:
    """One cell as text: ints plain, floats with 4 significant digits (p-values 3), NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NAN
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return NAN if np.isnan(value) else str(value)
        return f"{value:.3g}" if column in _P_COLUMNS else f"{value:.4g}"
    return str(value)


WORDS = {"correction": {"maxt": "max-T (family-wise)", "by": "Benjamini-Yekutieli", "bh": "Benjamini-Hochberg"}}  # codes shown as words in HTML (CSV keeps codes)


def _cells(df: pd.DataFrame, words: bool = False) -> list[list[str]]:
    rows = [[fmt(v, c) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False)]
    if words:
        rows = [[WORDS.get(c, {}).get(x, x) for c, x in zip(df.columns, row)] for row in rows]
    return rows


def to_markdown(df: pd.DataFrame) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(esc(str(c)) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if _numeric(df[c]) else ":---" for c in df.columns) + "|"
    body = ["| " + " | ".join(esc(c) for c in row) + " |" for row in _cells(df)]
    return "\n".join([head, rule, *body]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", NAN: "--"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``longtable`` (needs ``\\usepackage{booktabs,longtable}``)."""
    align = "".join("r" if _numeric(df[c]) else "l" for c in df.columns)
    head = " & ".join(tex_escape(str(c)) for c in df.columns) + r" \\"
    lines = [rf"\begin{{longtable}}{{{align}}}"]
    if caption:
        lines.append(rf"\caption{{{tex_escape(caption)}}}" + (rf"\label{{{label}}}" if label else "") + r" \\")
    lines += [r"\toprule", head, r"\midrule", r"\endhead"]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in _cells(df)]
    lines += [r"\bottomrule", r"\end{longtable}"]
    return "\n".join(lines) + "\n"


def to_html(df: pd.DataFrame, max_rows: int | None = None, source: str = "") -> str:
    """An HTML table (escaped); beyond ``max_rows`` rows a line says where the full table is."""
    if len(df) == 0:
        return '<p class="empty">None.</p>'
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    num = [_numeric(df[c]) for c in df.columns]
    out = ['<table class="data"><thead><tr>']
    out += [f'<th class="{"num" if n else ""}">{html.escape(str(c))}</th>' for c, n in zip(df.columns, num)]
    out.append("</tr></thead><tbody>")
    for row in _cells(shown, words=True):
        out.append("<tr>" + "".join(f'<td class="{"num" if n else ""}">{html.escape(c)}</td>' for c, n in zip(row, num)) + "</tr>")
    out.append("</tbody></table>")
    if len(shown) < len(df):
        where = f' (all rows: <a href="{html.escape(source)}">{html.escape(source)}</a>)' if source else ""
        out.append(f'<p class="more">Showing {len(shown)} of {len(df)} rows{where}.</p>')
    return "".join(out)


def write_table(df: pd.DataFrame, out: Path, name: str, caption: str = "") -> dict[str, Path]:
    """Write ``name.csv``, ``name.md``, ``name.tex`` under ``out``; return their paths by suffix."""
    paths = {ext: out / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    df.to_csv(paths["csv"], index=False)
    md = (f"{caption}\n\n" if caption else "") + to_markdown(df)
    paths["md"].write_text(md, encoding="utf-8")
    paths["tex"].write_text(to_latex(df, caption, f"tab:{name}"), encoding="utf-8")
    return paths
