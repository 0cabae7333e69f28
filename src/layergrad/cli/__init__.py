"""The ``layergrad`` command: :func:`main`, the shared :class:`ArgumentParser` and
:func:`build_parser`, which registers every subcommand from its own module: :mod:`.run`,
:mod:`.modules`, :mod:`.paper` (``export``, ``import``), :mod:`.validate`, :mod:`.report`,
:mod:`layergrad.experiment`, :mod:`.merge`, :mod:`.select` (``select``, ``scores``), :mod:`.verify` and :mod:`.score`.

Each command module has ``add_parser(sub)``; heavy imports (torch, transformers) happen inside
the commands' handlers, so ``layergrad --help`` is instant. May import anything in the package.
"""
from __future__ import annotations

import argparse
import re
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a did-you-mean for unknown flags and choices (Python 3.11 has no ``suggest_on_error``),
    and errors of one line that point to ``--help`` instead of printing the usage."""

    def error(self, message: str):
        from layergrad.vocab import did_you_mean

        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            flags = [o for o in self._option_string_actions if o.startswith("--")]
            hints = [f"{w}{did_you_mean(w.split('=', 1)[0], flags, template=' (did you mean {}?)')}"
                     for w in m.group(1).split() if w.startswith("-")]
            if hints:
                message = f"unknown flag{'s' if len(hints) > 1 else ''} {', '.join(hints)}"
        m = re.match(r"argument (.*): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(3))
            hint = did_you_mean(m.group(2), choices, template=" (did you mean {!r}?)")
            if hint:
                message = f"argument {m.group(1)}: invalid choice: {m.group(2)!r}{hint}; choose from {m.group(3)}"
        # one line, not the usage: the did-you-mean is what a user reads; the flags are a --help away
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="layergrad", description="Per-example, layer-wise gradient spectra of LLM fine-tuning data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices  # name -> subparser: main() reports an unknown flag with the subcommand's flags
    for mod in ("layergrad.cli.run", "layergrad.cli.modules", "layergrad.cli.paper", "layergrad.cli.validate",
                "layergrad.cli.report", "layergrad.experiment", "layergrad.cli.merge", "layergrad.cli.select", "layergrad.cli.verify",
                "layergrad.cli.score"):
        __import__(mod, fromlist=["add_parser"]).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's parser names its own flags (and suggests the closest)
        parser.commands.get(getattr(a, "command", None), parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    from layergrad.errors import friendly

    return friendly(a.func, a)


if __name__ == "__main__":
    sys.exit(main())
