"""The scoring flow: plan chunks, resume by id, score each chunk with every scorer, commit it.

Chunks are planned once from the examples alone (longest text first, ties by input order, so each
chunk's examples have similar lengths and the scorers' length-batches pad little), never from what
is done: a resumed run scores the same chunks. A chunk is committed as one part after every scorer
has scored it; a failure (the judge gone, out of memory) ends the run with every committed chunk
kept, and the judge's answers cached.
"""
from __future__ import annotations

import sys

import pyarrow as pa

from .records import PREFIX, record_columns
from .store import ScoreStore, base_row

__all__ = ["describe", "plan_chunks", "score_examples"]


def describe(scorers, record_fields: list[str]) -> tuple[dict, dict, list[pa.Field]]:
    """``(provenance, identity, columns)`` of a directory: per score name, where it came from and what
    must match to resume; the columns: the records' own numbers (``record:<field>``), then each scorer's."""
    provenance, identity, columns = {}, {}, []
    for s in scorers:
        if s.name == "judge":  # one scorer, several scores (instag, difficulty): keyed by score
            provenance.update(s.provenance())
            identity.update(s.identity())
        else:
            provenance[s.name], identity[s.name] = s.provenance(), s.identity()
        columns += s.columns
    taken = {f.name for f in columns}
    records = [pa.field(PREFIX + n, pa.float64()) for n in record_fields if PREFIX + n not in taken]
    return provenance, identity, records + columns


def plan_chunks(examples, size: int) -> list[list[int]]:
    """Positions of the examples in chunks of ``size``, longest text first (ties by position)."""
    order = sorted(range(len(examples)), key=lambda k: (-_chars(examples[k]), k))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _chars(ex) -> int:
    turns = sum(len(m.get("content") or "") for m in ex.messages) if ex.is_chat else len(ex.prompt or "")
    return turns + len(ex.response)


def score_examples(examples, scorers, store: ScoreStore, *, record_fields: list[str], chunk_size: int = 512,
                   progress: bool = True, log=None) -> dict:
    """Score every example not yet in ``store``; returns counts ``{"done_before", "scored", "chunks"}``."""
    from tqdm.auto import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr))
    done = store.done_ids()
    chunks = [[k for k in c if examples[k].id not in done] for c in plan_chunks(examples, chunk_size)]
    chunks = [c for c in chunks if c]
    todo = sum(len(c) for c in chunks)
    before = len(examples) - todo
    if before:
        log(f"layergrad: resuming: {before} of {len(examples)} examples already scored in {store.store.path}")
    scored = 0
    with tqdm(total=todo, unit="ex", desc="scoring", disable=not progress or not todo, file=sys.stderr) as bar:
        for chunk in chunks:
            exs = [examples[k] for k in chunk]
            rows = record_columns(exs, record_fields)
            for scorer in scorers:
                bar.set_postfix_str(scorer.name)
                for row, values in zip(rows, scorer.score(exs)):
                    row.update(values)
            store.write([base_row(examples[k], k) for k in chunk], rows)
            scored += len(chunk)
            bar.update(len(chunk))
    return {"done_before": before, "scored": scored, "chunks": len(chunks)}
