"""A score directory: the run store's format (:mod:`layergrad.store.run`), so ``select``, ``scores``
and ``load_results`` read it as they read a run.

``DIR/manifest.json`` has ``kind: "scores"``, the data (files, fields, group) and, per score, its
provenance (``scores``: model id, revision and fingerprint, convention, prompt version, ...). Its
identity (``score_identity``: what determines the numbers) is checked on every resume. Each chunk
of examples is one committed part: ``parts/examples-<tag>.parquet`` with one row per example (the
run's id/group/source/index/order/status columns, then one column per score, see the scorers'
``COLUMNS``) and an empty modules part (a score directory measures no gradients).
"""
from __future__ import annotations

import json
import time

import pyarrow as pa

from layergrad import __version__
from layergrad.store import schema
from layergrad.store.run import ConfigMismatch, RunStore, refuse_changed_records

__all__ = ["BASE_COLUMNS", "KIND", "ScoreStore", "build_manifest", "scored_text"]

KIND = "scores"
#: What a score directory's rows mean; bump when a column changes meaning.
SCORES_VERSION = 1

_BASE = ("id", "group", "source", "index", "order", "status", "reason", "instruction", "output", "response_chars")
BASE_COLUMNS = [schema.EXAMPLES.field(n) for n in _BASE]


def scored_text(ex) -> tuple[str | None, str | None]:
    """``(instruction, output)`` as a score directory stores them (as a run does)."""
    if ex.is_text:
        return None, ex.response
    if ex.is_chat:
        return json.dumps(list(ex.messages), ensure_ascii=False), ex.response
    return ex.prompt, ex.response


def build_manifest(*, data, fields: dict, group, limit, provenance: dict, identity: dict, record_fields: list[str]) -> dict:
    import torch
    import transformers

    return {
        "kind": KIND,
        "scores_version": SCORES_VERSION,
        "schema_version": schema.SCHEMA_VERSION,
        "layergrad_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": [str(p) for p in data],
        "fields": fields,
        "group": group,
        "limit": limit,
        "scores": provenance,  # score name -> where it came from
        "score_identity": identity,  # what must match to resume
        "record_fields": record_fields,  # the data's own numeric fields, stored as record:<field>
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


class ScoreStore:
    """A :class:`RunStore` holding scores; ``with ScoreStore.open(out, manifest) as s: ...``."""

    def __init__(self, store: RunStore, columns: list[pa.Field]):
        self.store = store
        self.schema = pa.schema(BASE_COLUMNS + columns)

    @classmethod
    def open(cls, path, manifest: dict, columns: list[pa.Field], examples) -> "ScoreStore":
        store = RunStore(path)
        old = store.manifest()
        if old is not None:
            if old.get("kind") != KIND:
                raise ConfigMismatch(f"{path} holds a gradient run of `layergrad run`, not scores; "
                                     "give `layergrad score` another --out directory")
            diffs = _differences(old.get("score_identity") or {}, manifest["score_identity"])
            if diffs:
                raise ConfigMismatch(f"{path} holds scores made with other settings:\n" + "\n".join(diffs) +
                                     "\nScores there are kept. Rerun with the stored settings to resume, or use "
                                     "another --out directory for these.")
        store.open(manifest)
        try:
            refuse_changed_records(store.stored_texts(), examples, scored_text)
        except BaseException:
            store.close()
            raise
        return cls(store, columns)

    def done_ids(self) -> set[str]:
        return self.store.done_ids()

    def write(self, base: list[dict], scores: list[dict]) -> str:
        rows = [{**b, **s} for b, s in zip(base, scores)]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        modules = schema.MODULES.empty_table()
        return self.store.write_tables(table, modules)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def base_row(ex, order: int) -> dict:
    instruction, output = scored_text(ex)
    return {"id": ex.id, "group": ex.group, "source": ex.source, "index": ex.index, "order": order, "status": "ok",
            "reason": None, "instruction": instruction, "output": output, "response_chars": len(ex.response)}


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            what = "stored" if a is not None else "asked for now"
            out.append(f"  {name}: {what} only (a directory holds one set of scores; "
                       f"stored: {', '.join(sorted(old)) or 'none'}, now: {', '.join(sorted(new)) or 'none'})")
        elif a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"  {name}: " + "; ".join(f"{k} stored {a.get(k)!r} vs now {b.get(k)!r}" for k in keys))
    return out
