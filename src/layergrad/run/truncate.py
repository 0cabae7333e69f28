"""Length control by truncation: each response cut after its first K response tokens (docs/length-control.md).

A causal LM's logits at position ``t`` depend on tokens ``<= t`` only. So the mean loss over the first
``K`` response tokens (loss terms) of an example, and its gradient with respect to every weight, are
exactly the loss and gradient of the same example with its token ids cut right after its ``K``-th
response token: measuring the cut example is an exact measurement of "this response, as far as its
K-th token", not an approximation. The ids are cut after tokenisation (re-tokenising a cut text could
merge or split tokens at the cut); the prompt is never cut; a response of at most ``K`` tokens stays whole.

``K`` is one number for every example (``run --truncate-response K``) or, per example, the number of
response tokens (``n_response_tokens``) of its PARTNER in another, already computed run
(``run --truncate-to RUN_DIR``): the example there with the same ``pair_key`` (when both sides have
one), else the same instruction text as scored: the keys :mod:`layergrad.analysis.compare` pairs
groups by. An example without a usable partner (none, an ambiguous one, one that is not ``ok``, one
with no response tokens) is stored as ``skipped`` with its reason (prefix :data:`NO_PARTNER`), never
dropped silently, and counted in the run's summary.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from layergrad.errors import LayergradError
from layergrad.inputs.prompting import Cut, Encoded
from layergrad.store.rows import scored_text

#: How a ``skipped`` reason of an example without a usable ``--truncate-to`` partner starts (faults.reason_kind).
NO_PARTNER = "no usable --truncate-to partner"


class TruncationError(LayergradError, ValueError):
    """A ``--truncate-to`` run that cannot be used at all (missing, not a run, no response lengths)."""


def cut(enc: Encoded, k: int) -> Encoded:
    """``enc`` with its token ids cut right after its ``k``-th loss term (``k >= 1``); unchanged
    (but for its :class:`Cut` record) when it has at most ``k``."""
    targets = enc.loss_targets()  # positions j of the loss terms, ascending
    record = Cut(at=k, full=len(targets), partner=enc.cut.partner if enc.cut else None)
    if len(targets) <= k:
        return replace(enc, cut=record)
    end = targets[k - 1] + 1  # tokens 0 .. j_k: the k-th response token is the last one kept
    spans = None if enc.spans is None else tuple((a, min(b, end)) for a, b in enc.spans if a < end)
    return replace(enc, input_ids=enc.input_ids[:end], n_response=k, spans=spans, cut=record)


@dataclass
class Partners:
    """The response lengths of a ``--truncate-to`` run, by pairing key."""

    path: Path
    manifest: dict
    key: str  # pair_key | instruction
    rows: dict = field(default_factory=dict)  # key value -> [(id, status, reason, n_response_tokens)]
    groups: list = field(default_factory=list)  # the run's group labels (its examples' group column), in order

    def find(self, value) -> tuple[int | None, str | None, str | None]:
        """``(K, partner id, None)`` for a usable partner, else ``(None, id or None, reason)``."""
        where = f"{self.path}"
        rows = self.rows.get(value) if value is not None else None
        if not rows:
            return None, None, f"{NO_PARTNER}: no example of {where} has the same {self.key.replace('_', ' ')}"
        ok = [r for r in rows if r[1] == "ok"]
        if not ok:
            pid, status, reason, _ = rows[0]
            return None, pid, f"{NO_PARTNER}: its partner {pid!r} in {where} is {status} ({reason})"
        lengths = {r[3] for r in ok}
        if len(lengths) > 1:
            return None, None, (f"{NO_PARTNER}: {len(ok)} examples of {where} share its {self.key.replace('_', ' ')} "
                                f"with different lengths ({', '.join(sorted(map(str, lengths)))} tokens): ambiguous")
        pid, k = ok[0][0], ok[0][3]
        if k is None:
            return None, pid, f"{NO_PARTNER}: its partner {pid!r} in {where} has no stored response length"
        if k < 1:
            return None, pid, f"{NO_PARTNER}: its partner {pid!r} in {where} has {k} response tokens (nothing to cut to)"
        return k, pid, None


def load_partners(run_dir: str, examples) -> Partners:
    """The examples of ``run_dir`` by the key that pairs them with ``examples``. Raises :class:`TruncationError`."""
    import math

    from layergrad.store import load_results

    path = Path(run_dir)
    if not path.is_dir():
        raise TruncationError(f"--truncate-to {run_dir}: no such run directory; compute that run first "
                              "(layergrad run ... --out " + str(run_dir) + ")")
    try:
        res = load_results(path)
    except FileNotFoundError:
        raise TruncationError(f"--truncate-to {run_dir}: not a layergrad run directory (no manifest.json)") from None
    ex = res.examples
    if len(ex) == 0:
        raise TruncationError(f"--truncate-to {run_dir}: the run holds no examples yet; compute it first")
    ok = ex[ex["status"] == "ok"]
    if len(ok) and ok["n_response_tokens"].isna().all():
        raise TruncationError(f"--truncate-to {run_dir}: the run stores no response lengths (n_response_tokens); "
                              "an imported run needs `layergrad import --tokenizer NAME_OR_FOLDER`")
    ours = [ex_.record.get("pair_key") for ex_ in examples]
    theirs = ex["pair_key"] if "pair_key" in ex else None
    key = "pair_key" if theirs is not None and theirs.notna().any() and any(v is not None for v in ours) else "instruction"
    rows: dict = {}
    for r in ex.itertuples(index=False):
        value = getattr(r, key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        n = r.n_response_tokens
        n = None if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
        rows.setdefault(str(value), []).append((r.id, r.status, r.reason, n))
    groups = [str(g) for g in dict.fromkeys(ex["group"].dropna())] if "group" in ex else []
    return Partners(path, res.manifest, key, rows, groups or [path.resolve().name])


def key_of(ex, key: str) -> str | None:
    """An example's pairing key as the other run stores it (``pair_key`` field, or the instruction as scored)."""
    value = ex.record.get("pair_key") if key == "pair_key" else scored_text(ex)[0]
    return None if value is None else str(value)


def apply(cfg, examples, encoded: list[Encoded], partners: Partners | None = None) -> tuple[list[Encoded], dict, list[str]]:
    """The encoded examples cut as ``cfg`` asks; the manifest's fields of the cut; summary lines.

    ``partners``: :func:`load_partners` of ``cfg.truncate_to`` (loaded here when not given).
    No cut asked: ``encoded`` unchanged, ``{}`` and ``[]``. An example already skipped keeps its
    reason; one without a usable partner gets ``skip_reason`` (so it is stored as skipped, not run).
    """
    if cfg.truncate_response is None and cfg.truncate_to is None:
        return encoded, {}, []
    if cfg.truncate_response is not None:
        out = [e if e.skip_reason else cut(e, cfg.truncate_response) for e in encoded]
        return out, {}, [_summary(f"--truncate-response {cfg.truncate_response}", out)]
    partners = partners or load_partners(cfg.truncate_to, examples)
    out = []
    for ex, enc in zip(examples, encoded):
        if enc.skip_reason:
            out.append(enc)
            continue
        k, pid, reason = partners.find(key_of(ex, partners.key))
        if reason is not None:
            out.append(replace(enc, skip_reason=reason, cut=Cut(at=None, full=enc.n_response, partner=pid)))
        else:
            out.append(cut(replace(enc, cut=Cut(at=None, full=enc.n_response, partner=pid)), k))
    m = partners.manifest
    info = {
        "truncate_to_dir": str(partners.path.resolve()),  # where it was when this run started (not identity)
        "truncate_to_key": partners.key,  # pair_key | instruction: how partners were found
        "truncate_to_groups": partners.groups,  # the partner run's group labels (the analysis: "cut to group X's lengths")
        "truncate_to_model": m.get("model"),
        "truncate_to_model_fingerprint": m.get("model_fingerprint"),
    }
    return out, info, [_summary(f"--truncate-to {cfg.truncate_to}", out)]


def identity(cfg) -> str | None:
    """The ``truncate_to`` a manifest records: the partner run's path relative to this run's directory
    (so moving a whole study, or resuming from another folder, is the same run)."""
    if cfg.truncate_to is None:
        return None
    return os.path.relpath(os.path.realpath(cfg.truncate_to), os.path.realpath(cfg.out))


def _summary(option: str, encoded: list[Encoded]) -> str:
    cuts = [e for e in encoded if e.cut is not None]
    shortened = sum(e.cut.at is not None and e.cut.full > e.cut.at for e in cuts)
    whole = sum(e.cut.at is not None and e.cut.full <= e.cut.at for e in cuts)
    lost = sum(e.cut.at is None for e in cuts)
    line = f"{option}: {shortened} example(s) cut, {whole} already no longer (kept whole)"
    if lost:
        line += f", {lost} skipped ({NO_PARTNER}: see the reason column)"
    return line
