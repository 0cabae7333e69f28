"""Scores of a run's examples, and the selection of examples by any one of them.

A METRIC names one number per example (``layergrad select --by METRIC``)::

    METRIC  := SCALAR | QUALITY | "record:" FIELD | SPECTRAL [":" ROLES [":" LAYERS]]
    SCALAR  := ifd | ifd_ppl | loss | loss_no_prompt | n_response_tokens | n_prompt_tokens | n_tokens | response_chars
    QUALITY := loss_with_prompt | reward | instag | difficulty   (a score directory of `layergrad score`)
    FIELD   := any numeric field of the data's records (``record:reward``, ``record:ifd_gpt2``, ``record:diff``)
    SPECTRAL:= nuclear | spectral | frobenius | min_sigma | top1_share | effective_rank | stable_rank
    ROLES   := all | attn | mlp | a comma list of roles and groups (q,k,v,o,qkv,gate,up,down,gate_up,unknown)
    LAYERS  := mean | all | early | middle | late | a comma list of layer indices N and inclusive ranges A-B

``record:FIELD`` is the record's own number (a number or a numeric string such as ``"9.0"``): a score
directory stores it as a column of that name; for a run it is read from the run's data files.

``ROLES`` defaults to ``all`` and ``LAYERS`` to ``mean`` (``all`` is the same thing): ``nuclear`` is
``nuclear:all:mean``. ``early``/``middle``/``late`` are the thirds of the depth of
:func:`layergrad.analysis.mad.segments` (30 layers: 0-9, 10-19, 20-29). Layers are the decoder
layers ``0..L-1``; modules outside them (``lm_head``) take no part.

The value of a spectral METRIC for one example is the plain mean of the metric over the run's
modules that match ROLES and LAYERS (every module counts once: ``effective_rank:attn:late`` over 30
layers is the mean of 10 layers x 4 roles = 40 numbers). An example that lacks a finite value for
any of those modules gets NaN, so every score averages the same modules.

Selection (:func:`select`): the eligible examples are those with status ``ok`` and a finite score;
for ``ifd`` and ``ifd_ppl`` Cherry_LLM's filter also drops ``score > 1`` (the prompt makes the
response harder; ``score == 1`` is kept, as ``if mean_rate > 1: continue`` in Cherry_LLM's
``cherry_seletion/data_by_IFD.py`` keeps it; switch off with ``ifd_filter=False``). The same filter
applies whichever IFD definition the run used (see :mod:`layergrad.run.ifd`). ``top`` takes the highest scores, ``bottom`` the
lowest; a count ``k`` takes ``min(k, eligible)``, a fraction ``f`` takes ``floor(f * eligible)``.
Ties are broken by input order (the run's ``order``: data file order, then record order): the
earlier record wins, so a selection is the same on every machine and every rerun.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.inputs.targets import ROLE_GROUPS, ROLES, SelectionError, parse_selection
from layergrad.store.schema import METRICS
from layergrad.vocab import did_you_mean

__all__ = [
    "LAYER_WORDS", "Metric", "MetricError", "RunDataError", "SCALARS", "Selection", "Amount", "default_metrics",
    "merge_scores", "metric_values", "parse_amount", "parse_metric", "run_depth", "run_examples", "score_table", "select",
]

#: Per-example columns of the results that are scores themselves.
#: Per-example columns of a score directory (``layergrad score``, :mod:`layergrad.scoring`).
QUALITY_SCORES = ("loss_with_prompt", "reward", "instag", "difficulty")
SCALARS = ("ifd", "ifd_ppl", "loss", "loss_no_prompt", "n_response_tokens", "n_prompt_tokens", "n_tokens",
           "response_chars") + QUALITY_SCORES
IFD_SCORES = ("ifd", "ifd_ppl")
INTEGER_SCORES = ("n_response_tokens", "n_prompt_tokens", "n_tokens", "response_chars", "instag", "difficulty")
#: ``record:FIELD``: a numeric field of the records (the data's own scores).
RECORD_PREFIX = "record:"
LAYER_WORDS = ("mean", "all", "early", "middle", "late")
#: Columns of a score table that identify an example (then one column per score, then ifd_reason).
ID_COLUMNS = ["id", "group", "source", "index", "order", "status"]


class MetricError(SelectionError):
    """A METRIC that cannot be parsed or evaluated on a run."""


class RunDataError(SelectionError):
    """The data files of a run cannot be matched to its stored examples."""


# ---------------------------------------------------------------------------------------
# The metric grammar
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One parsed METRIC. ``name`` is canonical (``nuclear`` -> ``nuclear:all:mean``)."""

    name: str
    column: str | None = None  # a SCALAR column of the examples table (``record:FIELD`` for a record field)
    record: str | None = None  # FIELD of ``record:FIELD``
    spectral: str | None = None  # a SPECTRAL column of the modules table
    roles: frozenset = frozenset()
    layers: str = "mean"  # canonical LAYERS text

    @property
    def is_ifd(self) -> bool:
        return self.column in IFD_SCORES

    def layer_indices(self, n_layers: int) -> np.ndarray:
        """The layers of ``LAYERS`` for a depth ``n_layers``; raises :class:`MetricError` if out of range."""
        if self.layers == "mean":
            return np.arange(n_layers)
        if self.layers in ("early", "middle", "late"):
            from layergrad.analysis.mad import segments

            return segments(n_layers)[self.layers]
        out = []
        for part in self.layers.split(","):
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b or a)
            if hi >= n_layers:
                raise MetricError(f"metric {self.name!r}: layer {hi} does not exist; the run's model has layers 0-{n_layers - 1}")
            out.extend(range(lo, hi + 1))
        return np.array(sorted(set(out)), dtype=int)


def _did_you_mean(word: str, choices) -> str:
    return did_you_mean(word, choices, cutoff=0.5, default=";")


def _canonical_roles(text: str) -> tuple[frozenset, str]:
    if text == "reference":
        raise MetricError("roles 'reference' is a --modules rule of `layergrad run`, not a role set; use all, attn, mlp or a list such as q,k")
    try:
        roles = frozenset(parse_selection(text) - {"lm_head"})
    except SelectionError as e:
        raise MetricError(f"in METRIC roles: {e}") from None
    if not roles:
        raise MetricError(f"roles {text!r}: lm_head is outside the layer stack and has no per-layer value; use all, attn, mlp or q,k,...")
    for word in ("all", "attn", "mlp", "attn,mlp"):
        if roles == parse_selection(word):
            return roles, word
    return roles, ",".join(r for r in ROLES if r in roles)


_RANGE = re.compile(r"^\d+(-\d+)?$")


def _canonical_layers(text: str) -> str:
    word = text.strip().lower()
    if word in LAYER_WORDS:
        return "mean" if word == "all" else word
    parts = [p.strip() for p in word.split(",")]
    for p in parts:
        if not _RANGE.match(p):
            raise MetricError(
                f"unknown layers {text!r}{_did_you_mean(word, LAYER_WORDS)} use one of {', '.join(LAYER_WORDS)}, "
                "a layer index such as 3, an inclusive range such as 0-9, or a comma list of these"
            )
        a, _, b = p.partition("-")
        if b and int(b) < int(a):
            raise MetricError(f"layers {p!r}: a range A-B needs A <= B")
    return ",".join(parts)


def parse_metric(text: str) -> Metric:
    """Parse a METRIC (module docstring); raises :class:`MetricError` with a did-you-mean hint."""
    if str(text).strip().startswith(RECORD_PREFIX):
        name = str(text).strip()[len(RECORD_PREFIX):]
        if not name:
            raise MetricError(f"metric {text!r}: name the record field after 'record:' (e.g. record:reward)")
        return Metric(RECORD_PREFIX + name, column=RECORD_PREFIX + name, record=name)
    parts = [p.strip() for p in str(text).strip().split(":")]
    head = parts[0].lower()
    if head in SCALARS:
        if len(parts) > 1:
            raise MetricError(f"metric {text!r}: {head} is one number per example and takes no roles or layers; use {head!r}")
        return Metric(head, column=head)
    if head not in METRICS:
        raise MetricError(
            f"unknown metric {parts[0]!r}{_did_you_mean(head, SCALARS + METRICS)} "
            f"available: {', '.join(SCALARS)}, or SPECTRAL[:ROLES[:LAYERS]] with SPECTRAL one of {', '.join(METRICS)} "
            "(e.g. effective_rank:attn:mean, nuclear:mlp:late); a numeric field of the data's records is "
            f"record:FIELD (e.g. record:{parts[0]})"
        )
    if len(parts) > 3:
        raise MetricError(f"metric {text!r}: expected at most SPECTRAL:ROLES:LAYERS (3 parts), got {len(parts)}")
    roles, roles_text = _canonical_roles(parts[1] if len(parts) > 1 and parts[1] else "all")
    layers = _canonical_layers(parts[2] if len(parts) > 2 and parts[2] else "mean")
    return Metric(f"{head}:{roles_text}:{layers}", spectral=head, roles=roles, layers=layers)


# ---------------------------------------------------------------------------------------
# Values and the score table
# ---------------------------------------------------------------------------------------


def run_depth(results) -> int:
    """Decoder layers of the run's model (manifest ``n_layers``, else the largest stored layer + 1)."""
    n = results.manifest.get("n_layers")
    if n:
        return int(n)
    mods = results.modules
    return int(mods["layer"].max()) + 1 if len(mods) else 0


def metric_values(results, metric: Metric | str) -> pd.Series:
    """The metric of every stored example (``results.examples`` order), as float indexed by id."""
    m = parse_metric(metric) if isinstance(metric, str) else metric
    ex = results.examples
    if m.record is not None:
        if m.column in ex.columns:  # stored by `layergrad score`
            return pd.Series(pd.to_numeric(ex[m.column], errors="coerce").astype(float).to_numpy(), index=ex["id"].to_numpy(), name=m.name)
        from layergrad.scoring.records import record_values

        by_id = run_examples(results)
        ids = ex["id"].to_numpy()
        found = [by_id[i] for i in ids if i in by_id]
        vals = dict(zip((e.id for e in found), record_values(found, m.record)))
        return pd.Series([vals.get(i, np.nan) for i in ids], index=ids, dtype=float, name=m.name)
    if m.column is not None:
        if m.column in QUALITY_SCORES and m.column not in ex.columns:
            flag = {"reward": "--reward-model", "instag": "--judge-url", "difficulty": "--judge-url"}.get(m.column, "--ifd-model")
            raise MetricError(f"{results.path} has no {m.column!r} scores; compute them with `layergrad score DATA {flag} ... "
                              "--out DIR` and select from DIR")
        if m.column not in ex.columns or (m.is_ifd and ex[m.column].isna().all() and not results.manifest.get("ifd")):
            hint = "rerun `layergrad run` with --ifd into a new --out directory" if m.column in ("ifd", "ifd_ppl", "loss_no_prompt") else "the run stores no such column"
            raise MetricError(f"{results.path} has no {m.column!r} scores; {hint}")
        return pd.Series(pd.to_numeric(ex[m.column], errors="coerce").astype(float).to_numpy(), index=ex["id"].to_numpy(), name=m.name)
    mods = results.modules
    if m.spectral not in mods.columns or not np.isfinite(pd.to_numeric(mods[m.spectral], errors="coerce")).any():
        raise MetricError(f"{results.path} stores no values of {m.spectral!r} (runs imported from the paper's format have only "
                          "nuclear, spectral, frobenius and min_sigma)")
    layers = m.layer_indices(run_depth(results))
    sel = mods[(mods["layer"] >= 0) & mods["role"].isin(m.roles) & mods["layer"].isin(layers)]
    if sel.empty:
        present = sorted(set(mods.loc[mods["layer"] >= 0, "role"].dropna()), key=lambda r: ROLES.index(r) if r in ROLES else 99)
        raise MetricError(f"metric {m.name!r}: no module of {results.path} matches these roles and layers; "
                          f"roles measured: {', '.join(present) or 'none'}, layers 0-{run_depth(results) - 1}")
    expected = sel["module"].nunique()
    v = pd.to_numeric(sel[m.spectral], errors="coerce")
    v = v.where(np.isfinite(v))
    agg = sel.assign(_v=v).groupby("id", sort=False)["_v"].agg(["mean", "count"])
    val = agg["mean"].where(agg["count"] == expected)  # a missing module makes the score NaN
    return pd.Series(val.reindex(ex["id"]).to_numpy(float), index=ex["id"].to_numpy(), name=m.name)


def default_metrics(results) -> list[Metric]:
    """Every score a run holds: its scalar columns, then each stored spectral metric over the
    whole depth for attn, mlp and all (``all`` only when both attn and mlp are measured)."""
    ex = results.examples
    out = [parse_metric(c) for c in ("loss", "n_response_tokens", "response_chars") if c in ex.columns]
    if "ifd" in ex.columns and (results.manifest.get("ifd") or ex["ifd"].notna().any()):
        out = [parse_metric(c) for c in ("ifd", "ifd_ppl", "loss_no_prompt")] + out
    for c in ("loss_with_prompt", *QUALITY_SCORES[1:]):  # a score directory's
        if c in ex.columns and ex[c].notna().any() and c not in [m.name for m in out]:
            out.append(parse_metric(c))
    out += [parse_metric(c) for c in ex.columns if str(c).startswith(RECORD_PREFIX)]
    mods = results.modules
    roles = set(mods.loc[mods["layer"] >= 0, "role"].dropna()) if len(mods) else set()
    groups = [g for g in ("attn", "mlp") if roles & set(ROLE_GROUPS[g])]
    if len(groups) == 2 or not groups and roles:
        groups.append("all")
    for metric in METRICS:
        if metric in mods.columns and np.isfinite(pd.to_numeric(mods[metric], errors="coerce")).any():
            out += [parse_metric(f"{metric}:{g}:mean") for g in groups]
    return out


def score_table(results, metrics=None) -> pd.DataFrame:
    """One row per stored example (run order): ``ID_COLUMNS``, one column per metric, ``ifd_reason``.

    ``metrics``: METRIC texts or :class:`Metric` (default :func:`default_metrics`); duplicates once.
    """
    ms = default_metrics(results) if metrics is None else [parse_metric(m) if isinstance(m, str) else m for m in metrics]
    ex = results.examples
    table = ex[[c for c in ID_COLUMNS if c in ex.columns]].reset_index(drop=True).copy()
    for m in ms:
        if m.name not in table.columns:
            v = metric_values(results, m).to_numpy()
            table[m.name] = pd.array(np.where(np.isfinite(v), v, np.nan)).astype("Int64") if m.column in INTEGER_SCORES else v
    if "ifd_reason" in ex.columns:
        reason = ex["ifd_reason"].reset_index(drop=True)
        if "ifd" in ex.columns:  # rows stored by a part without --ifd (a resumed run): say so
            missing = ex["ifd"].isna().to_numpy() & reason.isna().to_numpy()
            reason = reason.where(~missing, "not computed: stored by a run without --ifd")
        table["ifd_reason"] = reason
    return table


# ---------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Amount:
    """How many to take: ``count`` examples or a ``fraction`` of the eligible ones."""

    direction: str  # top | bottom
    count: int | None = None
    fraction: float | None = None

    def of(self, n: int) -> int:
        if self.count is not None:
            return min(self.count, n)
        return int(math.floor(self.fraction * n + 1e-9))  # 0.29 * 100 is 28.999999999999996

    def describe(self) -> str:
        return f"{self.direction} {self.count}" if self.count is not None else f"{self.direction} {100 * self.fraction:.4g}%"


def parse_amount(direction: str, text: str) -> Amount:
    """``K`` (a count), ``P%`` (a percentage) or, for ``ratio``, ``R`` in (0, 1] (a fraction of the top)."""
    s = str(text).strip()
    try:
        if direction == "ratio":
            f = float(s)
            if not 0 < f <= 1:
                raise ValueError
            return Amount("top", fraction=f)
        if s.endswith("%"):
            f = float(s[:-1]) / 100
            if not 0 < f <= 1:
                raise ValueError
            return Amount(direction, fraction=f)
        k = int(s)
        if k < 0:
            raise ValueError
        return Amount(direction, count=k)
    except ValueError:
        want = "a fraction R with 0 < R <= 1 (e.g. 0.2)" if direction == "ratio" else "a count K >= 0 or a percentage such as 20%"
        raise MetricError(f"--{direction} {text!r}: expected {want}") from None


@dataclass
class Selection:
    metric: Metric
    amount: Amount
    ids: list[str]  # selected, best first (highest for top, lowest for bottom)
    ranked: list[str]  # every eligible example, in the same order
    n_total: int
    dropped: dict[str, int] = field(default_factory=dict)  # why examples were not eligible -> count
    ifd_filter: bool = False

    @property
    def n_eligible(self) -> int:
        return len(self.ranked)

    def summary(self, scores: pd.Series) -> list[str]:
        """Lines that say what was selected and why (printed by the command)."""
        name = self.metric.name
        lines = [f"selected {len(self.ids)} of {self.n_total} examples: {self.amount.describe()} by {name} "
                 f"(of {self.n_eligible} eligible)"]
        if self.metric.is_ifd:
            if self.ifd_filter:
                nan, high = self.dropped.get(f"with {name} NaN", 0), self.dropped.get(f"with {name} > 1 (IFD filter)", 0)
                lines.append(f"  IFD filter on (Cherry_LLM's filter, and the follow-up paper's: values outside [0, 1] and NaN; "
                             f"--no-ifd-filter turns it off): kept {name} <= 1; "
                             f"dropped {nan} with NaN and {high} with {name} > 1")
            else:
                lines.append("  IFD filter off: values > 1 are eligible")
        for why, n in self.dropped.items():
            if n:
                lines.append(f"  not eligible: {n} {why}")
        if self.ids:
            v = scores.reindex(self.ids).astype(float).to_numpy()
            lines.append(f"  selected {name}: {np.min(v):.6g} .. {np.max(v):.6g}; ties broken by input order (earlier record first)")
        return lines


def select(table: pd.DataFrame, metric: Metric | str, amount: Amount, *, ifd_filter: bool = True) -> Selection:
    """Rank the eligible examples of a score table by ``metric`` and take ``amount`` of them."""
    m = parse_metric(metric) if isinstance(metric, str) else metric
    if m.name not in table.columns:
        raise MetricError(f"the score table has no column {m.name!r}; build it with score_table(results, [{m.name!r}])")
    t = table.reset_index(drop=True)
    v = pd.to_numeric(t[m.name], errors="coerce").astype(float).to_numpy()
    ok = (t["status"] == "ok").to_numpy() if "status" in t else np.ones(len(t), bool)
    finite = np.isfinite(v)
    use_filter = ifd_filter and m.is_ifd
    dropped = {"with status other than ok": int((~ok).sum()), f"with {m.name} NaN": int((ok & ~finite).sum())}
    eligible = ok & finite
    if use_filter:
        high = eligible & (v > 1)  # Cherry_LLM: IFD above 1 is dropped, exactly 1 is kept
        dropped[f"with {m.name} > 1 (IFD filter)"] = int(high.sum())
        eligible &= ~high
    order = pd.to_numeric(t["order"], errors="coerce").fillna(np.inf).to_numpy(float) if "order" in t else np.arange(len(t), dtype=float)
    idx = np.nonzero(eligible)[0]
    key = -v[idx] if amount.direction == "top" else v[idx]
    ranked = idx[np.lexsort((t["id"].to_numpy(str)[idx], order[idx], key))]  # last key sorts first
    ids = t["id"].to_numpy()[ranked].tolist()
    return Selection(m, amount, ids[: amount.of(len(ids))], ids, len(t), dropped, use_filter)


# ---------------------------------------------------------------------------------------
# Back to the input data
# ---------------------------------------------------------------------------------------


def run_examples(results, data=None) -> dict:
    """The run's examples as :class:`layergrad.inputs.data.Example` (with their original records), by id.

    The data files are those of the manifest (``data=`` overrides them, e.g. when the run was made
    from another directory), read with the manifest's ``fields``. Every stored example must be found
    with the same response text; otherwise the files changed since the run and nothing is written.
    """
    from layergrad.inputs.data import Fields, load_examples

    m = results.manifest
    paths = [str(p) for p in (data or m.get("data") or [])]
    if not paths:
        raise RunDataError(f"{results.path}: the manifest names no data files; pass them with --data")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RunDataError(f"data file(s) of run {results.path} not found: {', '.join(missing)} "
                           "(relative paths are read from the current directory); pass the files with --data")
    fields = Fields(**(m.get("fields") or {}))
    examples, _ = load_examples(paths, group=m.get("group"), fields=fields, skip_invalid=True)
    by_id = {e.id: e for e in examples}
    stored = results.examples[results.examples["status"] != "invalid"]
    bad = []
    for row in stored[["id", "output"]].itertuples(index=False):
        e = by_id.get(row.id)
        if e is None or (isinstance(row.output, str) and e.response != row.output):
            bad.append(row.id)
    if bad:
        raise RunDataError(
            f"{len(bad)} stored example(s) of {results.path} are not in {', '.join(paths)} as they were "
            f"(first id {bad[0]!r}): the data changed since the run; pass the run's own files with --data"
        )
    return by_id


def merge_scores(examples: list, table: pd.DataFrame, columns: list[str], prefix: str = "") -> list:
    """Copies of ``examples`` whose records gain one field per score (``prefix + column``), keyed by id.

    NaN becomes ``null``; counts stay integers. A field the record already has is an error
    (choose a ``prefix``), never silently overwritten.
    """
    from dataclasses import replace

    by_id = table.set_index("id")
    out = []
    for e in examples:
        rec = dict(e.record)
        row = by_id.loc[e.id] if e.id in by_id.index else None
        for c in columns:
            name = prefix + c
            if name in rec:
                raise RunDataError(f"{e.source}: record {e.index} already has a field {name!r}; "
                                   "pass --prefix (e.g. --prefix score_) to name the score fields apart")
            v = None if row is None or pd.isna(row[c]) else float(row[c])
            if v is not None:
                v = None if not math.isfinite(v) else (int(v) if c in INTEGER_SCORES else v)
            rec[name] = v
        out.append(replace(e, record=rec, raw=None))
    return out


# ---------------------------------------------------------------------------------------
# Scores that are fields of the records themselves (a data file's own scores)
# ---------------------------------------------------------------------------------------

LEGACY_RECORD_PREFIX = "field:"  # an earlier spelling of record:FIELD, still read


def field_metric(text: str) -> Metric:
    """``record:NAME`` (or the earlier ``field:NAME``, or ``NAME`` alone) -> the metric of the records'
    own field NAME, named ``record:NAME`` (as :func:`parse_metric` names it)."""
    text = str(text).strip()
    name = next((text[len(p):] for p in (RECORD_PREFIX, LEGACY_RECORD_PREFIX) if text.startswith(p)), text)
    if not name.strip():
        raise MetricError(f"--by {text!r}: no field name; write record:NAME (e.g. record:reward)")
    return Metric(RECORD_PREFIX + name, column=RECORD_PREFIX + name, record=name)


def field_values(examples: list, metric: Metric) -> tuple[np.ndarray, dict[str, int]]:
    """Each example's field value as a float ``(n,)`` (NaN where missing or not a number), and how many
    records lacked the field or held something that is not a number (a number written as text, as CSV
    cells are, counts as a number; booleans do not: :func:`layergrad.scoring.records.numeric`)."""
    from layergrad.scoring.records import numeric

    name = metric.record
    out = np.full(len(examples), np.nan)
    missing = not_numeric = 0
    for k, e in enumerate(examples):
        v = e.record.get(name)
        if v is None or v == "":
            missing += 1
            continue
        x = numeric(v)
        if x is None:
            not_numeric += 1
        else:
            out[k] = x
    return out, {f"without a value of {name!r}": missing, f"whose {name!r} is not a number": not_numeric}


def examples_table(examples: list) -> pd.DataFrame:
    """A score table's identifying columns (``ID_COLUMNS``) for examples read from data files."""
    return pd.DataFrame({"id": [e.id for e in examples], "group": [e.group for e in examples],
                         "source": [e.source for e in examples], "index": [e.index for e in examples],
                         "order": range(len(examples)), "status": "ok"})


def cut_ties(sel: Selection, scores: pd.Series) -> str | None:
    """A sentence when eligible examples tie with the last selected one and some of them are left out
    (input order decides); ``None`` when the cut falls between two different values."""
    k = len(sel.ids)
    if k == 0 or k == sel.n_eligible:
        return None
    v = scores.reindex(sel.ranked).astype(float).to_numpy()
    edge = v[k - 1]
    inside, outside = int((v[:k] == edge).sum()), int((v[k:] == edge).sum())
    if not outside:
        return None
    return (f"  ties at the cut: {inside + outside} eligible examples have {sel.metric.name} = {edge:.6g}; "
            f"{inside} selected, {outside} left out by input order (earlier records first)")
