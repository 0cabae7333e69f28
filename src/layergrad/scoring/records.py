"""The data's own scores: numeric fields of the records (``reward``, ``ifd_gpt2``, ``instag``, ``diff``
in the follow-up paper's files), read as scores named ``record:<field>``.

A field is numeric where its value is a number (not a boolean) or a string that Python's
``float()`` reads as a finite or non-finite number (``"9.0"``, ``"nan"``: the paper's files store
numbers as strings). A score directory stores, as columns ``record:<field>``, every field other than
the text fields (instruction, input, output, messages, text, id) that is numeric in every record
holding it (missing or null: NaN). A field named explicitly (``select --by record:diff``) that is
not numeric in some record is an error naming the file, record and field.
"""
from __future__ import annotations

import math

from layergrad.inputs.data import DataError, Problem

__all__ = ["PREFIX", "numeric", "record_columns", "record_values", "score_fields"]

PREFIX = "record:"


def numeric(value) -> float | None:
    """The float of a numeric field value; ``None`` when it is no number (NaN for a missing one)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _text_fields(fields) -> set[str]:
    return {fields.instruction, fields.input, fields.output, fields.messages, fields.text, fields.id}


def score_fields(examples, fields) -> list[str]:
    """The record fields that are numeric in every record holding them (in first-seen order)."""
    skip = _text_fields(fields)
    seen: dict[str, bool] = {}
    for ex in examples:
        for k, v in ex.record.items():
            if k in skip or not isinstance(k, str):
                continue
            ok = v is None or numeric(v) is not None
            seen[k] = seen.get(k, True) and ok
    return [k for k, ok in seen.items() if ok]


def record_columns(examples, names: list[str]) -> list[dict]:
    """Per example ``{"record:<name>": float}`` for ``names`` (NaN where missing)."""
    return [{PREFIX + n: numeric(ex.record.get(n)) for n in names} for ex in examples]


def record_values(examples, name: str) -> list[float]:
    """The field ``name`` of every example as float; :class:`DataError` naming each record where it is no number."""
    out, problems = [], []
    for ex in examples:
        v = numeric(ex.record.get(name))
        if v is None:
            problems.append(Problem(ex.source, ex.index, name, f"is not a number ({ex.record.get(name)!r:.60}); "
                                    f"record:{name} needs a number or a numeric string in every record that has it"))
        out.append(math.nan if v is None else v)
    if problems:
        raise DataError(problems, hint=f"Choose a numeric field for record:{name}, or fix these records.")
    if all(name not in ex.record for ex in examples):
        raise DataError([Problem(examples[0].source if examples else "data", None, name, "no record has this field")],
                        hint="Name a field the records have (record:FIELD).")
    return out
