"""Write selected examples back in their input's own format."""
from __future__ import annotations

import json
from pathlib import Path

from layergrad.atomic import atomic_write
from layergrad.errors import ConfigError
from layergrad.inputs.data.formats import CSV_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES, WRITE_SUFFIXES
from layergrad.inputs.data.records import Example


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
