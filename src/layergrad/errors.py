"""The errors layergrad expects: each ends the command with its message and exit code 2, not a traceback.

This module imports nothing from the package, so every other module (and the command line,
before anything heavy is imported) can use it. Every expected error subclasses
:class:`LayergradError`; the modules that raise them define their own subclasses
(``DataError`` in :mod:`layergrad.inputs.data`, ``ModelError`` in :mod:`layergrad.inputs.models`, ...).
Most of those also subclass ``ValueError`` (``StoreWriteError``: ``OSError``), as they did
before the base class existed, so code catching those keeps working.
"""
from __future__ import annotations

import sys


class LayergradError(Exception):
    """Base of the errors that layergrad raises on purpose: bad input, a model it cannot load, a full disk...

    The command line prints ``layergrad: error: <message>`` and exits with :attr:`exit_code`.
    """

    exit_code: int = 2


class ConfigError(LayergradError, ValueError):
    """Bad run options (command line, TOML file or Python): the message lists every problem at once."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return where + self.problems[0]
        return where + f"{len(self.problems)} problems in the run options:\n" + "\n".join(f"  - {p}" for p in self.problems)


def expected_errors() -> tuple[type, ...]:
    """What :func:`friendly` turns into a message (kept for callers of the old API)."""
    return (LayergradError, FileNotFoundError, IsADirectoryError, PermissionError)


def _os_message(e: OSError) -> str:
    path = e.filename if e.filename is not None else None
    what = {FileNotFoundError: "no such file or directory", IsADirectoryError: "is a directory, not a file",
            PermissionError: "permission denied"}.get(type(e), e.strerror or str(e))
    return f"{path}: {what}" if path is not None else str(e)


def friendly(func, args) -> int:
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; results stored so far are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except LayergradError as e:
        print(f"layergrad: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"layergrad: error: {_os_message(e)}", file=sys.stderr)
        return 2
