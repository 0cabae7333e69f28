"""One row builder per table (:mod:`.schema`), used by the run and by the paper-format importer alike.

Each builder fills every column of its table, in the schema's order, and refuses a column the
schema does not have, so a row can never silently lack a field or carry a stray one.
"""
from __future__ import annotations

import json
import math

from layergrad.store import schema
from layergrad.vocab import METRICS

_EXAMPLE_COLUMNS = tuple(schema.EXAMPLES.names)
_MODULE_COLUMNS = tuple(schema.MODULES.names)
_COSINE_COLUMNS = tuple(schema.COSINE.names)
_IFD_COLUMNS = tuple(f.name for f in schema.IFD_FIELDS)
_SHARE_COLUMNS = tuple(schema.SHARES.names)
_TRAINING_COLUMNS = tuple(f.name for f in schema.TRAINING_FIELDS)


def _row(columns: tuple[str, ...], values: dict, table: str, extra: tuple[str, ...] = ()) -> dict:
    unknown = set(values) - set(columns) - set(extra)
    if unknown:
        raise KeyError(f"{table} rows have no column(s) {', '.join(sorted(unknown))}")
    row = {c: values.get(c) for c in columns}
    row.update({c: values[c] for c in extra if c in values})
    return row


def example_row(**values) -> dict:
    """A row of the examples table; ``response_chars`` from ``output`` unless given; IFD and training columns allowed."""
    if "response_chars" not in values and values.get("output") is not None:
        values["response_chars"] = len(values["output"])
    return _row(_EXAMPLE_COLUMNS, values, "examples", extra=_IFD_COLUMNS + _TRAINING_COLUMNS)


def module_row(**values) -> dict:
    """A row of the modules table (example x measured gradient)."""
    return _row(_MODULE_COLUMNS, values, "modules")


def cosine_row(**values) -> dict:
    return _row(_COSINE_COLUMNS, values, "cosine")


def share_row(**values) -> dict:
    return _row(_SHARE_COLUMNS, values, "shares")


# ---------------------------------------------------------------------------------------
# The rows of a run
# ---------------------------------------------------------------------------------------


def scored_text(ex) -> tuple[str, str]:
    """``(instruction, output)`` of an example as the examples table stores them (the text that is scored)."""
    return (ex.prompt if ex.messages is None else json.dumps(list(ex.messages), ensure_ascii=False)), ex.response


def example_of(ex, order: int, enc, status: str, reason: str | None, loss: float | None) -> dict:
    """The row of a run's example (``ex``: :class:`~layergrad.inputs.data.Example`, ``enc``: its
    :class:`~layergrad.inputs.prompting.Encoded` or ``None``)."""
    cut = enc.cut if enc else None
    return example_row(
        id=ex.id, group=ex.group, source=ex.source, index=ex.index, order=order, status=status, reason=reason,
        instruction=scored_text(ex)[0], output=scored_text(ex)[1], loss=loss,
        n_tokens=enc.n_tokens if enc else None, n_prompt_tokens=enc.n_prompt if enc else None,
        n_response_tokens=enc.n_response if enc else None, truncated=enc.truncated if enc else None,
        n_response_tokens_full=(cut.full if cut else enc.n_response) if enc else None,
        truncate_at=cut.at if cut else None, truncate_partner=cut.partner if cut else None,
    )


def invalid_rows(problems: list, first_order: int) -> list[dict]:
    """One row per invalid record (``--skip-invalid``), every problem of it in ``reason``."""
    by_record: dict[tuple, list] = {}
    for p in problems:
        if p.index is not None:
            by_record.setdefault((p.source, p.index), []).append(p)
    return [
        example_row(id=f"invalid:{src}:{idx}", source=src, index=idx, order=first_order + j, status="invalid",
                    reason="; ".join(str(p) for p in ps))
        for j, ((src, idx), ps) in enumerate(by_record.items())
    ]


def module_rows_of(ex_id: str, b: int, results: dict, targets: list) -> tuple[list[dict], list[str]]:
    """Rows of example ``b`` of a measured batch, and the names of the modules whose norms are not finite."""
    from layergrad.spectra.metrics import undefined_reason

    rows, bad = [], []
    for t in targets:
        r = results[t.name]
        st = {k: float(r.stats[k][b]) for k in METRICS}
        if not math.isfinite(st["nuclear"]) or not math.isfinite(st["frobenius"]):
            bad.append(t.name)
        rank = int(r.rank[b])
        elementwise = dict(zip(("m_mean", "m_max", "m_min"), (float(v[b]) for v in r.elementwise))) if r.elementwise is not None else {}
        rows.append(module_row(
            id=ex_id, module=t.name, param=t.param, layer=t.layer, role=t.role, out_features=t.out_features,
            in_features=t.in_features, rank=rank, **st, spectrum=r.spectrum[b, :rank].tolist(), **elementwise,
            method=r.method, tied_with=t.tied, reason=undefined_reason(st["nuclear"]),
        ))
    return rows, bad


SEGMENT_NAMES = ("early", "middle", "late")


def depth_thirds(n_layers: int) -> dict[int, str]:
    """Layer -> ``early | middle | late``: thirds of the depth by ``np.array_split`` (the first
    ``n_layers % 3`` thirds one layer longer), as :func:`layergrad.analysis.mad.segments`."""
    import numpy as np

    return {int(layer): name for name, part in zip(SEGMENT_NAMES, np.array_split(np.arange(n_layers), 3)) for layer in part}


def share_rows_of(ex_id: str, b: int, shares: dict, thirds: dict[int, str], enc, tokens: list[str]) -> list[dict]:
    """The token-share rows (:data:`~layergrad.store.schema.SHARES`) of example ``b`` of a measured batch.

    ``shares``: :attr:`~layergrad.measure.sink.Measured.shares` ((layer, group) -> per example
    ``(T,)`` contributions ``<d_t x_t^T, G>`` summed over the group's modules of the layer);
    ``thirds``: :func:`depth_thirds`; ``enc``: the example's ``Encoded``; ``tokens``: its tokens' text.
    """
    sums: dict[tuple[str, str], object] = {}
    for (layer, group), per_example in shares.items():
        c = per_example[b]
        if c is None:
            continue
        key = (thirds.get(layer, "late" if layer >= len(thirds) else "early"), group)
        sums[key] = c.double() if key not in sums else sums[key] + c.double()
    R = enc.n_response
    rank = {j: k for k, j in enumerate(enc.loss_targets())}  # response position -> its place among them
    rows = []
    for seg in SEGMENT_NAMES:
        for group in ("attn", "mlp"):
            c = sums.get((seg, group))
            if c is None:
                continue
            total = float(c.sum())
            share = (c / total).tolist() if total != 0 else [math.nan] * len(c)
            for t, v in enumerate(share):
                resp = t in rank
                rows.append(share_row(id=ex_id, segment=seg, module_group=group, position=t, share=v, response=resp,
                                      rel_position=(rank[t] / (R - 1) if R > 1 else 0.0) if resp else None,
                                      token=tokens[t] if t < len(tokens) else None))
    return rows


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text for display: ``decode(prev, id)`` minus ``decode(prev)`` (so a word's leading
    space shows, as it does not when a sentencepiece token is decoded alone), else ``decode(id)``."""
    out = []
    for t, tid in enumerate(ids):
        one = tokenizer.decode([tid], clean_up_tokenization_spaces=False)
        if t > 0:
            prev = tokenizer.decode([ids[t - 1]], clean_up_tokenization_spaces=False)
            both = tokenizer.decode([ids[t - 1], tid], clean_up_tokenization_spaces=False)
            if both.startswith(prev) and len(both) > len(prev):
                one = both[len(prev):]
        out.append(one)
    return out
