"""Instruction data: read Alpaca and chat records, validate them, give them stable ids.

Formats, chosen by the file's suffix, or by what a folder or a name is:

- ``.json``: one JSON array of record objects;
- ``.jsonl`` / ``.ndjson``: one record object per line (blank lines are ignored);
- ``.parquet``: one record per row;
- ``.csv`` / ``.tsv``: one record per row, read by pyarrow with every column as text (so ``42``
  stays the string ``"42"``, as in the JSON file it was written from; an empty cell is ``""``);
- a folder written by ``datasets``' ``save_to_disk`` (``state.json`` or ``dataset_dict.json``),
  read by ``datasets.load_from_disk``;
- any other folder, and a hub dataset id ``org/name`` (or ``org/name@REV``) that is no local
  path, read by ``datasets.load_dataset`` (the Hugging Face cache, ``HF_HUB_OFFLINE`` and
  ``HF_TOKEN`` as there). :class:`DatasetOptions` holds the subset (config name), split and
  revision. With several splits and none asked for, ``train`` is taken when there is one.

Two kinds of record:

- Alpaca ``{"instruction", "input", "output"}`` (``input`` optional). The prompt is
  ``instruction``, plus ``"\\n" + input`` when ``input`` is not ``""`` (the paper's rule);
  the response is ``output``.
- chat ``{"messages": [{"role", "content"}, ...]}``. The response is the content of
  the last turn, which must be the assistant's; the turns before it are the prompt
  (``run --turns all`` scores every assistant turn: :mod:`layergrad.inputs.prompting`).
- plain text ``{"text"}`` (pretraining-style data), when the record has none of ``messages``,
  ``instruction`` and ``output``: every token is a response token; there is no prompt. A record
  with ``instruction``/``output`` is Alpaca even when it also has a ``text`` field (the hub's
  ``tatsu-lab/alpaca`` keeps its formatted prompt there).

A field whose value is ``null`` counts as absent. Parquet stores a field that some
records lack as ``null``, so this keeps a JSON file and its Parquet copy equivalent.

Every example gets a stable id: the record's own ``id`` (a string or an integer),
otherwise a hash of its content (see :func:`content_id`). Never the instruction
text: one instruction often appears with several responses.

Validation collects every problem in every file before anything is raised, so a
user fixes a file in one pass. ``skip_invalid`` skips invalid *records*; a file that
cannot be read at all (missing, not JSON, not a list, empty) is always an error.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from layergrad.atomic import atomic_write
from layergrad.errors import ConfigError, LayergradError

__all__ = [
    "DataError",
    "DatasetOptions",
    "Example",
    "Fields",
    "Problem",
    "content_id",
    "load_examples",
    "read_records",
    "validate",
    "write_records",
]

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".tsv")
SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES
WRITE_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES  # write_records' formats
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes


@dataclass(frozen=True)
class DatasetOptions:
    """What selects the records of a ``datasets`` dataset (a folder or a hub id); plain files ignore it."""

    split: str | None = None  # None: the only split, else "train"
    subset: str | None = None  # the config name (``load_dataset(path, name)``)
    revision: str | None = None  # hub datasets: branch, tag or commit


def is_dataset_source(path) -> bool:
    """Whether ``path`` is read by ``datasets`` (a folder, or a hub id that is no local path)."""
    p = Path(path)
    return p.is_dir() or (not p.exists() and _is_hub_name(str(path)))


def _is_hub_name(text: str) -> bool:
    import re

    if text.lower().endswith(SUFFIXES):  # data/typo.json is a missing file, not a hub id
        return False
    return not text.startswith((".", "/", "~")) and bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@.+)?", text))


@dataclass(frozen=True)
class Example:
    """One training example, ready to be scored.

    ``prompt`` is the text before the response for Alpaca records (``None`` for chat
    records, whose prompt is ``messages``); ``response`` is the supervised target.
    ``record`` and ``raw`` keep the input as it was, so selected examples can be
    written back in the input's own format (:func:`write_records`).
    """

    id: str  # stable id: the record's own id (as str), else content_id(record)
    index: int  # 0-based record index in its file
    source: str  # file path as given
    group: str  # group label: the `group` argument, else the file's stem
    prompt: str | None  # Alpaca: instruction (+ "\n" + input); None for chat and plain-text records
    response: str  # Alpaca: output; chat: content of the last (assistant) turn; plain text: the text
    # chat: the turns before the response, each {"role", "content"}; None for Alpaca
    messages: tuple[dict, ...] | None = field(default=None, compare=False)
    record: dict = field(default_factory=dict, compare=False)  # the record as parsed
    raw: str | None = field(default=None, compare=False)  # JSONL: the exact line, no newline

    @property
    def is_chat(self) -> bool:
        """True for a chat (``messages``) record."""
        return self.messages is not None

    @property
    def is_text(self) -> bool:
        """True for a plain-text record (no prompt: every token is scored)."""
        return self.messages is None and self.prompt is None


@dataclass(frozen=True)
class Fields:
    """Names of the record fields, for data that calls them something else."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    id: str = "id"
    messages: str = "messages"
    text: str = "text"

    def __post_init__(self):
        for name in ("instruction", "input", "output", "id", "messages", "text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Fields.{name} must be a non-empty field name, got {value!r}")


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


class _Unparsed:
    """Placeholder for a JSONL line that could not be parsed (its problem is recorded)."""


_UNPARSED = _Unparsed()


# ----------------------------------------------------------------------------- reading


def _kind(value) -> str:
    """A JSON-ish name for the type of ``value``, for messages."""
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


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


def _read_file(path: Path, source: str, options: DatasetOptions = DatasetOptions()) -> _FileContent:
    """Parse one file (or dataset); problems are recorded, never raised."""
    if not path.exists():
        if _is_hub_name(source):
            return _read_dataset(source, options, hub=True)
        return _FileContent.failed(source, "file not found")
    if path.is_dir():
        if any((path / name).is_file() for name in SAVED_DATASET_FILES):
            return _read_saved(path, source, options)
        if not any(path.iterdir()):
            return _FileContent.failed(source, "is a directory; pass the data files in it")
        return _read_dataset(source, options, hub=False)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return _FileContent.failed(source, f"unsupported file type {path.suffix!r}; "
                                   f"expected one of {', '.join(SUFFIXES)}, a datasets folder or a hub dataset id")
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, source)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, source)
    try:
        data = path.read_bytes()
    except OSError as e:
        return _FileContent.failed(source, f"cannot be read: {e.strerror or e}")
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(data, source)
    return _read_json(data, source)


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


def _pick_split(dd, source: str, split: str | None):
    """One split of a ``DatasetDict``, or ``(None, message)``."""
    from layergrad.vocab import did_you_mean

    names = list(dd)
    if split is None:
        if len(names) == 1:
            return dd[names[0]], None
        if "train" in names:
            return dd["train"], None
        return None, f"has splits {', '.join(names)}; choose one with --split"
    if split not in dd:
        hint = did_you_mean(split, names, template=" (did you mean {!r}?)")
        return None, f"has no split {split!r}{hint}; its splits: {', '.join(names)} (--split)"
    return dd[split], None


def _dataset_content(ds, source: str) -> _FileContent:
    items = ds.to_list()
    if not items:
        return _FileContent.failed(source, "no records (the dataset has no rows)")
    return _FileContent.of(items)


def _read_saved(path: Path, source: str, options: DatasetOptions) -> _FileContent:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder fails in json, arrow, fsspec...: all mean "cannot read"
        return _FileContent.failed(source, f"not a readable datasets folder (save_to_disk): {type(e).__name__}: {e}")
    if isinstance(ds, datasets.DatasetDict):
        ds, message = _pick_split(ds, source, options.split)
        if ds is None:
            return _FileContent.failed(source, message)
    elif options.split is not None and options.split != str(ds.split or options.split):
        return _FileContent.failed(source, f"is a single dataset (split {ds.split}), not split {options.split!r}; "
                                   "drop --split")
    return _dataset_content(ds, source)


def _read_dataset(source: str, options: DatasetOptions, *, hub: bool) -> _FileContent:
    """A hub dataset id, or a folder that ``datasets.load_dataset`` reads (data files, a README with configs)."""
    import datasets

    name, at, rev = source.partition("@") if hub else (source, "", "")
    revision = rev if at else options.revision
    what = "hub dataset" if hub else "dataset folder"
    try:
        ds = datasets.load_dataset(name, options.subset, split=options.split, revision=revision)
    except ValueError as e:  # an unknown subset or split: datasets' message lists the available ones
        text = " ".join(str(e).split())
        flag = "--split" if "split" in text.lower() else "--subset"
        return _FileContent.failed(source, f"{text} (choose with {flag})")
    except (ConnectionError, FileNotFoundError) as e:
        offline = " HF_HUB_OFFLINE is set: go online to download it, or load it once online so it is cached." \
            if hub and os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} else ""
        return _FileContent.failed(source, f"could not load the {what}: {type(e).__name__}: {e}.{offline}")
    except Exception as e:  # noqa: BLE001 - hub, auth and parsing failures: the message is datasets'
        return _FileContent.failed(source, f"could not load the {what}: {type(e).__name__}: {e}")
    if isinstance(ds, datasets.DatasetDict):
        ds, message = _pick_split(ds, source, None)
        if ds is None:
            return _FileContent.failed(source, message)
    return _dataset_content(ds, source)


def dataset_digest(path, options: DatasetOptions = DatasetOptions()) -> str:
    """sha256 of a ``datasets`` source's records (canonical JSON, in order): what a run read from it."""
    content = _read_file(Path(path), str(path), options)
    if any(p.is_file_level for p in content.problems):
        raise DataError(content.problems)
    h = hashlib.sha256()
    for item in content.items:
        h.update(json.dumps(item, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    return h.hexdigest()


def read_records(path) -> tuple[list[dict], list[str | None]]:
    """The records of one file as parsed, and for JSONL their exact lines.

    Raw lines are ``None`` for JSON and Parquet. Raises :class:`DataError` when the
    file cannot be read or a JSONL line is not a JSON object; records are not
    otherwise validated (see :func:`validate`).
    """
    content = _read_file(Path(path), str(path))
    if content.problems:
        raise DataError(content.problems)
    return content.items, content.raws


# ----------------------------------------------------------------------------- validating


def _drop_nulls(value):
    """``value`` with null-valued object fields removed, at every depth."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def content_id(record: dict) -> str:
    """The first 16 hex digits of the SHA-256 of the record's canonical JSON.

    Canonical JSON is ``json.dumps(record, sort_keys=True, ensure_ascii=False)`` with
    null-valued fields dropped (so a record and its Parquet copy hash alike).
    Identical records get suffixes ``-1``, ``-2``, ... in :func:`load_examples`.
    """
    text = json.dumps(_drop_nulls(record), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _present(record: dict, name: str) -> bool:
    return record.get(name) is not None


def _missing(record: dict, name: str) -> str:
    keys = ", ".join(repr(k) for k in list(record)[:8])
    return f"missing (the record has {('keys ' + keys) if keys else 'no keys'})"


def _parse_alpaca(record: dict, fields: Fields, problem) -> tuple[str, str] | None:
    """(prompt, response) of an Alpaca record, or None after reporting its problems."""
    ok = True
    for name in (fields.instruction, fields.output):
        if not _present(record, name):
            problem(name, _missing(record, name))
            ok = False
        elif not isinstance(record[name], str):
            problem(name, f"must be a string, found {_kind(record[name])}")
            ok = False
    if ok and not record[fields.output].strip():
        problem(fields.output, "must be a non-empty string (the response is empty)")
        ok = False
    if _present(record, fields.input) and not isinstance(record[fields.input], str):
        problem(fields.input, f"must be a string, found {_kind(record[fields.input])}")
        ok = False
    if not ok:
        return None
    prompt = record[fields.instruction]
    inp = record.get(fields.input) or ""
    if inp != "":  # the paper's rule: exactly "instruction\ninput" when input is non-empty
        prompt = prompt + "\n" + inp
    return prompt, record[fields.output]


def _parse_chat(record: dict, fields: Fields, problem) -> tuple[tuple[dict, ...], str] | None:
    """(prompt turns, response) of a chat record, or None after reporting its problems."""
    name = fields.messages
    turns = record[name]
    if not isinstance(turns, list):
        problem(name, f"must be a list of {{'role', 'content'}} turns, found {_kind(turns)}")
        return None
    ok = True
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            problem(f"{name}[{k}]", f"turn must be an object, found {_kind(turn)}")
            ok = False
            continue
        for key in ("role", "content"):
            if not isinstance(turn.get(key), str):
                what = "missing" if turn.get(key) is None else f"found {_kind(turn[key])}"
                problem(f"{name}[{k}].{key}", f"must be a string ({what})")
                ok = False
    if not ok:
        return None
    roles = [t["role"] for t in turns]
    if "assistant" not in roles:
        found = ", ".join(dict.fromkeys(roles)) or "none, the list is empty"
        problem(name, f"no assistant turn to use as the response (roles: {found})")
        return None
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last != len(turns) - 1:
        after = ", ".join(roles[last + 1:])
        problem(name, f"turns after the last assistant turn ({after}) would be ignored; "
                "end the conversation with the response")
        return None
    response = turns[last]["content"]
    if not response.strip():
        problem(f"{name}[{last}].content", "must be a non-empty string (the response is empty)")
        return None
    prompt = tuple({"role": t["role"], "content": t["content"]} for t in turns[:last])
    return prompt, response


def _parse_text(record: dict, fields: Fields, problem) -> str | None:
    """The text of a plain-text record, or None after reporting its problems."""
    value = record[fields.text]
    if not isinstance(value, str):
        problem(fields.text, f"must be a string, found {_kind(value)}")
        return None
    if not value.strip():
        problem(fields.text, "must be a non-empty string (the text is empty)")
        return None
    return value


def _parse_record(record: dict, fields: Fields, problem) -> tuple | None:
    """(prompt, messages, response) of a record, or None after reporting its problems."""
    if _present(record, fields.messages):
        chat = _parse_chat(record, fields, problem)
        return (None, *chat) if chat else None
    if _present(record, fields.text) and not (_present(record, fields.instruction) or _present(record, fields.output)):
        text = _parse_text(record, fields, problem)
        return (None, None, text) if text is not None else None
    alpaca = _parse_alpaca(record, fields, problem)
    return (alpaca[0], None, alpaca[1]) if alpaca else None


def _explicit_id(record: dict, fields: Fields, problem) -> str | None:
    """The record's own id as a string; None when absent or after reporting a problem."""
    if not _present(record, fields.id):
        return None
    value = record[fields.id]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problem(fields.id, f"must be a string or an integer, found {_kind(value)}")
        return None
    if isinstance(value, str) and not value.strip():
        problem(fields.id, "must not be empty")
        return None
    return str(value)


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no data files given")
    return paths


def _collect(paths, group: str | None, fields: Fields,
             options: DatasetOptions = DatasetOptions()) -> tuple[list[Example], list[Problem]]:
    """Every valid example and every problem in every file."""
    problems: list[Problem] = []
    parsed: list[Example] = []  # valid examples; id "" where a content id is still to come
    owners: dict[str, tuple[str, int]] = {}  # explicit id -> (source, index) of first use
    resolved: set[Path] = set()
    for path in _as_list(paths):
        source = str(path)
        if Path(path).resolve() in resolved:
            problems.append(Problem(source, None, None, "given more than once"))
            continue
        resolved.add(Path(path).resolve())
        file_start = len(problems)
        content = _read_file(Path(path), source, options)
        problems.extend(content.problems)
        label = group if group is not None else Path(path).stem
        for index, (record, raw, line) in enumerate(zip(content.items, content.raws, content.lines)):
            if record is _UNPARSED:
                continue

            def problem(name, message, _s=source, _i=index, _line=line):
                problems.append(Problem(_s, _i, name, message, line=_line))

            if not isinstance(record, dict):
                problem(None, f"must be an object, found {_kind(record)}")
                continue
            n_before = len(problems)
            own_id = _explicit_id(record, fields, problem)
            if own_id is not None:
                if own_id in owners:
                    first_source, first_index = owners[own_id]
                    also = f"record {first_index}" + (
                        f" of {first_source}" if first_source != source else "")
                    problem(fields.id, f"duplicate id {own_id!r} (also {also})")
                else:
                    owners[own_id] = (source, index)
            parts = _parse_record(record, fields, problem)
            if parts is not None and len(problems) == n_before:
                prompt, messages, response = parts
                parsed.append(Example(own_id or "", index, source, label, prompt, response,
                                      messages=messages, record=record, raw=raw))
        # This file's problems in record order, problems of the whole file first.
        problems[file_start:] = sorted(problems[file_start:],
                                       key=lambda p: -1 if p.index is None else p.index)

    # Content ids last, so they also steer clear of every explicit id.
    used = set(owners)
    seen: dict[str, int] = {}
    examples = []
    for example in parsed:
        if not example.id:
            base = content_id(example.record)
            n = seen.get(base, 0)
            new_id = base if n == 0 else f"{base}-{n}"
            while new_id in used:
                n += 1
                new_id = f"{base}-{n}"
            seen[base] = n + 1
            used.add(new_id)
            example = replace(example, id=new_id)
        examples.append(example)
    return examples, problems


def validate(paths, *, fields: Fields = Fields(), dataset: DatasetOptions = DatasetOptions()) -> list[Problem]:
    """Every problem in every file (an empty list when the data is fine); never raises."""
    return _collect(paths, None, fields, dataset)[1]


def load_examples(
    paths,
    *,
    group: str | None = None,
    fields: Fields = Fields(),
    skip_invalid: bool = False,
    dataset: DatasetOptions = DatasetOptions(),
) -> tuple[list[Example], list[Problem]]:
    """Load examples from one or more files, in file order then record order.

    ``group`` labels every example (default: each file's stem). Ids are unique
    across all the files: a repeated explicit id is a problem; identical records
    without ids get ``-1``, ``-2``, ... suffixes in load order.

    Raises :class:`DataError` listing every problem, unless ``skip_invalid``: then
    the valid examples come back with the problems of the invalid records. Files
    that cannot be read, and data with no valid record at all, raise either way.
    """
    examples, problems = _collect(paths, group, fields, dataset)
    if problems and (not skip_invalid or any(p.is_file_level for p in problems)):
        raise DataError(problems)
    if not examples:
        raise DataError(problems, hint="No valid records remain; fix the records above.")
    return examples, problems


# ----------------------------------------------------------------------------- writing


def _csv_text(records: list[dict], delimiter: str) -> str:
    """Records as CSV text: the union of their fields as the header, one row each."""
    import csv
    import io

    header = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, delimiter=delimiter, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if v is None else json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                    for k, v in r.items()})
    return buf.getvalue()


def write_records(examples: list[Example], path) -> Path:
    """Write the examples' original records to ``path``, in the format of its suffix.

    ``.json``: a JSON array of the records (``ensure_ascii=False, indent=1``);
    ``.jsonl``/``.ndjson``: the original lines verbatim (records read from another
    format are serialised, one per line); ``.parquet``: a table of the records;
    ``.csv``/``.tsv``: a header of every field (in the order first seen), one row per record, by
    Python's ``csv`` module (quoting only where needed; a CSV record read here, every value text,
    is written back with the same values); ``None`` is an empty cell, a list or object its JSON text.
    The file appears whole or not at all (written to a temporary file, then renamed).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ConfigError(f"cannot write {str(path)!r}: unsupported file type {path.suffix!r}; "
                         f"expected one of {', '.join(WRITE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", fsync=False) as fh:
        if suffix in PARQUET_SUFFIXES:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([e.record for e in examples]), fh)
        elif suffix in CSV_SUFFIXES:
            fh.write(_csv_text([e.record for e in examples], "\t" if suffix == ".tsv" else ",").encode("utf-8"))
        else:
            if suffix in JSONL_SUFFIXES:
                lines = [e.raw if e.raw is not None else json.dumps(e.record, ensure_ascii=False)
                         for e in examples]
                text = "".join(line + "\n" for line in lines)
            else:
                text = json.dumps([e.record for e in examples], ensure_ascii=False, indent=1) + "\n"
            fh.write(text.encode("utf-8"))
    return path
