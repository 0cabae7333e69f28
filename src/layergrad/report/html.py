"""The report page: one static HTML file, no scripts, no network.

Figures are referenced relatively (``figures/*.png`` beside ``index.html``), so the output
folder can be zipped, moved or opened from disk. Tables are rendered from the same DataFrames
that were written as CSV (``tables.to_html``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f; margin: 0; background: #fafafa; }
 main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
 h1 { font-size: 26px; margin: 0 0 4px; }
 h2 { font-size: 20px; margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
 h3 { font-size: 16px; margin-top: 28px; }
 .sub { color: #666; margin: 0 0 16px; }
 nav a { margin-right: 14px; }
 figure { margin: 16px 0 24px; }
 figure img { width: 100%; height: auto; border: 1px solid #eee; }
 figcaption { color: #444; font-size: 13px; }
 table.data { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
 table.data th, table.data td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: left; }
 table.data th { background: #f3f3f3; position: sticky; top: 0; }
 table.data .num { text-align: right; font-variant-numeric: tabular-nums; }
 .notes { background: #fff8e5; border-left: 4px solid #e6a700; padding: 8px 16px; }
 .notes li { margin: 4px 0; }
 .methods li { margin: 6px 0; }
 details { margin: 8px 0 16px; }
 summary { cursor: pointer; color: #0b57d0; }
 .files a, .dl a { margin-right: 10px; font-size: 13px; }
 .scroll { max-height: 520px; overflow: auto; }
 code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
 #findings { background: #f4f8ff; border: 1px solid #c9dafc; border-radius: 6px; padding: 4px 18px 10px; margin-top: 16px; }
 #findings h2 { margin-top: 12px; }
 #findings h3 { margin: 14px 0 4px; }
 ul.findings li { margin: 6px 0; }
 a.fnum { color: inherit; text-decoration: underline dotted #0b57d0; font-variant-numeric: tabular-nums; }
 .verdict-holds-at-equal-length { border-left: 4px solid #1b9e77; padding-left: 8px; list-style: none; }
 .verdict-not-significant-at-equal-length, .verdict-not-separable-from-length { border-left: 4px solid #d95f02; padding-left: 8px; list-style: none; }
 .warn { background: #fdecea; border-left: 4px solid #c62828; padding: 6px 14px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="sub">{{ subtitle }}</p>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}</nav>

<section id="findings">
<h2>Findings</h2>
{% for w in warnings %}<p class="warn"><strong>Small sample.</strong> {{ w }}</p>{% endfor %}
{{ findings }}
{% if findings_files %}<p class="files">Every number links to its row of {% for f in findings_files %}<a href="{{ f }}">{{ f }}</a>{% endfor %}; definitions under Methods.</p>{% endif %}
</section>

<h2 id="runs">Runs</h2>
{{ runs_table }}
{% if notes %}
<div class="notes"><strong>Read before the numbers</strong><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul></div>
{% endif %}

<h2 id="methods">Methods</h2>
<ul class="methods">{% for m in methods %}<li>{{ m }}</li>{% endfor %}</ul>

{% for s in sections if s.anchor not in ("findings", "runs", "methods") %}
<h2 id="{{ s.anchor }}">{{ s.title }}</h2>
{% if s.intro %}<p>{{ s.intro }}</p>{% endif %}
{% for f in s.figures %}
<figure>
<img src="{{ f.png }}" alt="{{ f.caption }}" style="max-width: {{ f.width }}px">
<figcaption>{{ f.caption }} <span class="dl"><a href="{{ f.png }}">PNG</a><a href="{{ f.svg }}">SVG</a></span></figcaption>
</figure>
{% endfor %}
{% for t in s.tables %}
<h3>{{ t.title }}</h3>
{% if t.caption %}<p>{{ t.caption }}</p>{% endif %}
{% if t.collapsed %}<details><summary>Show table ({{ t.n_rows }} rows)</summary><div class="scroll">{{ t.html }}</div></details>
{% else %}<div class="scroll">{{ t.html }}</div>{% endif %}
<p class="files">{% for ext, href in t.files %}<a href="{{ href }}">{{ href }}</a>{% endfor %}</p>
{% endfor %}
{% endfor %}
</main>
</body>
</html>
"""


@dataclass
class FigureRef:
    png: str
    svg: str
    caption: str
    width: int = 1200  # display width cap in CSS px: the figure's size in inches at 96 px/inch


@dataclass
class TableRef:
    title: str
    html: jinja2.utils.markupsafe.Markup
    files: list[tuple[str, str]]
    n_rows: int
    caption: str = ""
    collapsed: bool = False


@dataclass
class Section:
    anchor: str
    title: str
    intro: str = ""
    figures: list[FigureRef] = field(default_factory=list)
    tables: list[TableRef] = field(default_factory=list)


def render(*, title: str, subtitle: str, runs_table: str, notes: list[str], methods: list[str], sections: list[Section],
           findings: str = "", findings_files: list[str] = (), warnings: list[str] = ()) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    nav = [Section("findings", "Findings"), Section("runs", "Runs"), Section("methods", "Methods"), *sections]
    return env.from_string(TEMPLATE).render(
        title=title, subtitle=subtitle, runs_table=jinja2.utils.markupsafe.Markup(runs_table), notes=notes,
        methods=methods, sections=nav, findings=jinja2.utils.markupsafe.Markup(findings), findings_files=list(findings_files),
        warnings=list(warnings),
    )
