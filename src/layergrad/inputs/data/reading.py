"""Read one data source, whatever it is (a file by its suffix, a ``datasets`` folder, a hub dataset id)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from layergrad.inputs.data.dataset_sources import DatasetOptions, _is_hub_name, _read_dataset, _read_saved
from layergrad.inputs.data.files import _FileContent, _read_csv, _read_json, _read_jsonl, _read_parquet
from layergrad.inputs.data.folders import folder_sources, is_dataset_repo
from layergrad.inputs.data.formats import (CSV_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES, SAVED_DATASET_FILES,
                                           SUFFIXES)
from layergrad.inputs.data.problems import DataError


def _read_file(path: Path, source: str, options: DatasetOptions = DatasetOptions()) -> _FileContent:
    """Parse one file (or dataset); problems are recorded, never raised."""
    if not path.exists():
        if _is_hub_name(source):
            return _read_dataset(source, options, hub=True)
        return _FileContent.failed(source, "file not found")
    if path.is_dir():
        if any((path / name).is_file() for name in SAVED_DATASET_FILES):
            return _read_saved(path, source, options)
        if is_dataset_repo(path):
            return _read_dataset(source, options, hub=False)
        skipped = folder_sources(path)[1]
        held = ", ".join(f"{p.relative_to(path)} ({why})" for p, why in skipped) if skipped else "nothing"
        return _FileContent.failed(source, f"a folder with no data file ({', '.join(SUFFIXES)}) in it or its "
                                   f"subfolders; it holds: {held}")
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
