"""The report: tables (CSV, Markdown, LaTeX), figures (PNG, SVG, PDF) and static HTML pages, every page
(report, cross-model, by-step, training, experiment overview) from one template (``templates/``, :mod:`.html`).

Names are resolved lazily (PEP 562) so that ``layergrad.cli.report`` can register the
``report`` command without importing matplotlib or pandas.

May import: :mod:`layergrad.analysis`, :mod:`layergrad.store`, matplotlib, jinja2; the words of the
findings are built from the CSVs the report writes (:mod:`.findings`).
"""
from __future__ import annotations

__all__ = ["Report", "build_report", "make_report"]


def __getattr__(name: str):
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
