"""The report: tables (CSV, Markdown, LaTeX), figures (PNG, SVG) and a static HTML page."""
from .build import Report, build_report, make_report

__all__ = ["Report", "build_report", "make_report"]
