"""MkDocs hook: render the command-line reference from the argparse parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with
one section per subcommand of :func:`layergrad.cli.build_parser`: its description, usage, a table
of every option (flags, default, help, grouped as the parser groups them) and the examples of its
epilog. The page therefore cannot drift from ``layergrad COMMAND --help``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("[", "\\[").replace("<", "&lt;").replace(">", "&gt;")


def _flags(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.option_strings:  # positional
        return f"`{formatter._metavar_formatter(action, action.dest)(1)[0]}`"
    if action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    args = formatter._format_args(action, action.dest.upper())
    return ", ".join(f"`{o} {args}`" for o in action.option_strings)


def _default(action: argparse.Action) -> str:
    d = action.default
    if action.nargs == 0 or d is None or d is argparse.SUPPRESS or d == [] or not action.option_strings:
        return ""
    return f"`{d}`"


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.help:
        return ""
    return _cell(formatter._expand_help(action))


def render_command(name: str, parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    out = [f"## `layergrad {name}`", ""]
    if parser.description:
        out += [_cell(parser.description), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        out += [f"**{group.title}**", "", "| argument | default | meaning |", "| --- | --- | --- |"]
        out += [f"| {_flags(a, formatter)} | {_default(a)} | {_help(a, formatter)} |" for a in actions]
        out.append("")
    if parser.epilog:
        out += ["```text", parser.epilog.strip("\n"), "```", ""]
    return "\n".join(out)


def render_all() -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps by the terminal's width: the same page from any terminal
    src = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's code, as mkdocstrings reads it
    if src not in sys.path:
        sys.path.insert(0, src)
    from layergrad.cli import build_parser

    parser = build_parser()
    parts = ["```text", parser.format_help().strip(), "```", ""]
    parts += [render_command(name, sub) for name, sub in parser.commands.items()]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its marker {MARKER}")
    return markdown.replace(MARKER, render_all())
