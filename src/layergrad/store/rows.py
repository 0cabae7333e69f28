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


# ---------------------------------------------------------------------------------------
# The rows of a run
# ---------------------------------------------------------------------------------------


def example_of(ex, order: int, enc, status: str, reason: str | None, loss: float | None) -> dict:
    """The row of a run's example (``ex``: :class:`~layergrad.inputs.data.Example`, ``enc``: its
    :class:`~layergrad.inputs.prompting.Encoded` or ``None``)."""
    return example_row(
        id=ex.id, group=ex.group, source=ex.source, index=ex.index, order=order, status=status, reason=reason,
        instruction=ex.prompt if ex.messages is None else json.dumps(list(ex.messages), ensure_ascii=False),
        output=ex.response, loss=loss,
        n_tokens=enc.n_tokens if enc else None, n_prompt_tokens=enc.n_prompt if enc else None,
        n_response_tokens=enc.n_response if enc else None, truncated=enc.truncated if enc else None,
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
