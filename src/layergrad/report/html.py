"""Every layergrad page (report, cross-model, by-step, training, experiment overview): one static
HTML file from one template (``templates/page.html``) and one stylesheet (``templates/style.css``,
inlined so the page opens from disk), no scripts, no network.

A page is, top to bottom: the header bar with the navigation, the title, the question in one line,
the first screen (verdict table and headline figure), the findings, the notes, the sections
(figures, then tables; a section with nothing to show is one line saying why), the runs and
Methods last. Every part is optional, so the same template serves every kind of page.

Figures are referenced relatively (``figures/*.png`` beside ``index.html``), so the output
folder can be zipped, moved or opened from disk. Tables are rendered from the same DataFrames
that were written as CSV (``tables.to_html``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import jinja2

Markup = jinja2.utils.markupsafe.Markup
KINDS = {"report": "report", "cross-model": "cross-model report", "by-step": "by-step report",
         "training": "training report", "overview": "experiment overview", "quality": "quality study"}


@dataclass
class FigureRef:
    png: str
    svg: str
    caption: str
    width: int = 1200  # display width cap in CSS px: the figure's size in inches at 96 px/inch
    pdf: str = ""

    def links(self) -> list[tuple[str, str]]:
        return [(ext, href) for ext, href in (("PNG", self.png), ("SVG", self.svg), ("PDF", self.pdf)) if href]


@dataclass
class TableRef:
    title: str
    html: Markup
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
    why: str = ""  # set: the section is left out, and this line says why

    def empty(self) -> bool:
        return not (self.figures or self.tables)


def left_out(anchor: str, title: str, why: str) -> Section:
    """A section with nothing to show: rendered as one line, ``title: left out: why``."""
    return Section(anchor, title, why=why)


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("layergrad.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def stylesheet() -> str:
    return resources.files("layergrad.report").joinpath("templates", "style.css").read_text(encoding="utf-8")


def render_page(*, kind: str, title: str, subtitle: str = "", question: str = "", verdicts: str = "",
                headline: FigureRef | None = None, findings: str = "", findings_files=(), notes=(), warnings=(),
                sections=(), runs_table: str = "", methods=(), home: str = "#") -> str:
    """One page of ``kind`` (a key of ``KINDS``). ``verdicts``, ``findings``, ``runs_table``: HTML (trusted,
    built by this package); every other text is escaped. A section whose ``why`` is set, or that has no figure
    and no table, is one line saying why (a section with neither and no ``why`` is an error: say why)."""
    if kind not in KINDS:
        raise ValueError(f"unknown page kind {kind!r}; one of {', '.join(KINDS)}")
    sections = list(sections)
    for s in sections:
        if not s.why and s.empty():
            raise ValueError(f"section {s.anchor!r} has nothing to show and no reason why")
    nav = ([("#first-screen", "Verdicts" if verdicts else "Headline")] if verdicts or headline else []) + ([("#findings", "Findings")] if findings else [])
    nav += [(f"#{s.anchor}", s.title) for s in sections if not s.why]
    nav += ([("#runs", "Runs")] if runs_table else []) + ([("#methods", "Methods")] if methods else [])
    return _env().get_template("page.html").render(
        kind=kind, kind_label=KINDS[kind], title=title, subtitle=subtitle, question=question, css=Markup(stylesheet()),
        verdicts=Markup(verdicts), headline=headline, findings=Markup(findings), findings_files=list(findings_files),
        notes=list(notes), warnings=list(warnings), sections=sections, runs_table=Markup(runs_table),
        methods=list(methods), nav=nav, home=home)
