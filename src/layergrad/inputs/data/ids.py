"""Stable example ids: the record's own ``id``, else a hash of its content (:func:`content_id`)."""
from __future__ import annotations

import hashlib
import json

from layergrad.inputs.data.problems import _kind
from layergrad.inputs.data.records import Fields, _present


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
