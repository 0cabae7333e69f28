"""The examples of one or more data sources, validated together: every problem in every file, ids unique
across them all."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from layergrad.inputs.data.dataset_sources import DatasetOptions
from layergrad.inputs.data.files import _UNPARSED
from layergrad.inputs.data.folders import folder_sources, is_data_folder
from layergrad.inputs.data.ids import _explicit_id, content_id
from layergrad.inputs.data.problems import DataError, Problem, _kind
from layergrad.inputs.data.reading import _read_file
from layergrad.inputs.data.records import Example, Fields, _parse_record


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no data files given")
    return paths


def sources_of(paths) -> list[tuple]:
    """``(path, default group label)`` of every source to read: a data folder (:mod:`.folders`) stands for its
    files, labelled by the folder's name; anything else for itself, labelled by its stem."""
    out = []
    for path in _as_list(paths):
        files = folder_sources(path)[0] if is_data_folder(path) else []
        out += [(f, Path(path).name) for f in files] or [(path, Path(path).stem)]
    return out


def _collect(paths, group: str | None, fields: Fields,
             options: DatasetOptions = DatasetOptions()) -> tuple[list[Example], list[Problem]]:
    """Every valid example and every problem in every file."""
    problems: list[Problem] = []
    parsed: list[Example] = []  # valid examples; id "" where a content id is still to come
    owners: dict[str, tuple[str, int]] = {}  # explicit id -> (source, index) of first use
    resolved: set[Path] = set()
    for path, label in sources_of(paths):
        source = str(path)
        if Path(path).resolve() in resolved:
            problems.append(Problem(source, None, None, "given more than once"))
            continue
        resolved.add(Path(path).resolve())
        file_start = len(problems)
        content = _read_file(Path(path), source, options)
        problems.extend(content.problems)
        label = group if group is not None else label
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
