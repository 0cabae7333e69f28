"""Readers of one data file (JSON, JSONL, Parquet, CSV/TSV) into :class:`_FileContent`: records, raw lines
and line numbers, and every problem found (recorded, never raised)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from layergrad.inputs.data.problems import Problem, _kind


class _Unparsed:
    """Placeholder for a JSONL line that could not be parsed (its problem is recorded)."""


_UNPARSED = _Unparsed()


@dataclass
class _FileContent:
    """One file, parsed: items (``_UNPARSED`` for bad JSONL lines), and per item its
    raw line and 1-based line number (JSONL only, else ``None``)."""

    items: list = field(default_factory=list)
    raws: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @classmethod
    def of(cls, items: list) -> "_FileContent":
        return cls(items, [None] * len(items), [None] * len(items))

    @classmethod
    def failed(cls, source: str, message: str) -> "_FileContent":
        return cls(problems=[Problem(source, None, None, message)])


_TOO_DEEP = "JSON nested too deeply to read (arrays or objects inside each other thousands of levels deep)"


def _read_json(data: bytes, source: str) -> _FileContent:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return _FileContent.failed(source, f"invalid UTF-8 at byte offset {e.start} "
                                   f"(line {line}); save the file as UTF-8")
    if not text.strip():
        return _FileContent.failed(source, "no records (the file is empty)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        if e.msg == "Extra data":
            msg += " (one object per line? name the file .jsonl)"
        return _FileContent.failed(source, msg)
    except RecursionError:
        return _FileContent.failed(source, _TOO_DEEP)
    if not isinstance(value, list):
        found = _kind(value)
        if isinstance(value, dict):
            keys = ", ".join(repr(k) for k in list(value)[:5])
            found += f" with keys {keys}" if keys else " with no keys"
        return _FileContent.failed(source, f"top level is {found}; expected a JSON array of records")
    if not value:
        return _FileContent.failed(source, "no records (the array is empty)")
    return _FileContent.of(value)


def _read_jsonl(data: bytes, source: str) -> _FileContent:
    """One record per non-blank line; a bad line is a problem of that record only."""
    out = _FileContent()
    lines = data.split(b"\n")
    offset = 0
    if lines[0].startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        lines[0] = lines[0][3:]
        offset = 3
    for lineno, chunk in enumerate(lines, start=1):
        start, offset = offset, offset + len(chunk) + 1
        if not chunk.strip():
            continue
        index = len(out.items)
        out.lines.append(lineno)

        def bad(message, raw=None):
            out.items.append(_UNPARSED)
            out.raws.append(raw)
            out.problems.append(Problem(source, index, None, message, line=lineno))

        try:
            raw = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            bad(f"invalid UTF-8 at byte offset {start + e.start}; save the file as UTF-8")
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            bad(f"not valid JSON at column {e.colno}: {e.msg}", raw)
            continue
        except RecursionError:
            bad(_TOO_DEEP, raw)
            continue
        if not isinstance(value, dict):
            bad(f"line is {_kind(value)}; expected one JSON object per line", raw)
            continue
        out.items.append(value)
        out.raws.append(raw)
    if not out.items:
        out.problems.append(Problem(source, None, None, "no records (the file has no non-blank lines)"))
    return out


def _read_parquet(path: Path, source: str) -> _FileContent:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        items = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        return _FileContent.failed(source, f"not a readable Parquet file: {e}")
    if not items:
        return _FileContent.failed(source, "no records (the table has no rows)")
    return _FileContent.of(items)


def _read_csv(path: Path, source: str) -> _FileContent:
    """A CSV (TSV) file with a header row, every column read as text."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = pcsv.read_csv(path, parse_options=parse, read_options=pcsv.ReadOptions(block_size=1 << 16)).column_names
        table = pcsv.read_csv(path, parse_options=parse,
                              convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                                  strings_can_be_null=False))
    except (pa.ArrowException, OSError) as e:
        return _FileContent.failed(source, f"not a readable CSV file (a header row, then one record per row): {e}")
    items = table.to_pylist()
    if not items:
        return _FileContent.failed(source, "no records (the table has no rows)")
    return _FileContent.of(items)
