"""One thing wrong with the input data (:class:`Problem`), and the error that lists them all (:class:`DataError`)."""
from __future__ import annotations

from dataclasses import dataclass

from layergrad.errors import LayergradError


@dataclass
class Problem:
    """One thing wrong with the input data.

    ``index`` is the 0-based record index in the file, ``None`` for a problem with
    the whole file (which no record-skipping can get around). ``line`` is the
    1-based line number where it is known (JSONL).
    """

    source: str
    index: int | None
    field: str | None
    message: str
    line: int | None = None

    @property
    def is_file_level(self) -> bool:
        """True when the file as a whole cannot be used."""
        return self.index is None

    def __str__(self) -> str:
        where = self.source
        if self.index is not None:
            where += f": record {self.index}"
            if self.line is not None:
                where += f" (line {self.line})"
        elif self.line is not None:
            where += f": line {self.line}"
        if self.field is not None:
            where += f"{',' if self.index is not None else ':'} field {self.field!r}"
        return f"{where}: {self.message}"


class DataError(LayergradError, ValueError):
    """The input data has problems; ``problems`` holds every one of them."""

    def __init__(self, problems: list[Problem], hint: str | None = None):
        self.problems = list(problems)
        if hint is None:
            if any(p.is_file_level for p in self.problems):
                hint = ("Fix the files named above (--skip-invalid skips invalid records, "
                        "not files that cannot be read).")
            else:
                hint = "Fix these records, or pass --skip-invalid to run the valid ones."
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the input data:"]
        lines += [f"  {p}" for p in self.problems]
        lines.append(hint)
        super().__init__("\n".join(lines))


def _kind(value) -> str:
    """A JSON-ish name for the type of ``value``, for messages."""
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
