"""What can go wrong while a run computes, and how it is recorded instead of hidden.

Every example of a run is stored with one ``status`` (see :mod:`layergrad.store.schema`):

========  ==================================================================================
ok        measured; the only status that enters any statistic
skipped   nothing to score under this configuration (``--skip-invalid`` only; else refused)
failed    a fault during the computation: the example is kept with its reason, never averaged
invalid   a bad record (``--skip-invalid`` only; else the run is refused before computing)
========  ==================================================================================

``reason`` is null for ``ok``. For ``failed`` it is ``"<kind>: <detail>"`` with ``kind`` one of
:data:`FAILURE_KINDS`; :func:`reason_kind` maps any stored (status, reason) to a short stable
label, for counting lost examples by why.

Two helpers keep one example's fault from costing the others their results:

* :class:`~layergrad.measure.guard.FiniteGuard` sits in front of the statistics sink. An example whose captured ``X`` or
  ``D`` holds a non-finite value at a real token (fp16 overflow, a NaN from the model) has those
  values zeroed before the batched factorisations — which would otherwise fail for the whole
  batch (``torch.linalg.svdvals`` rejects a batch containing a NaN) — and is remembered, so the
  engine stores it as failed. The other examples' rows are not touched, so their numbers are
  bit for bit those of a clean batch.
* :class:`Backoff` runs a batch and, when it runs out of memory (or a factorisation fails),
  splits it in halves and retries, down to one example; an example that still fails alone is
  stored as failed with its token count. Later batches at least as large as one that ran out of
  memory are split before they are tried.
"""
from __future__ import annotations

import gc
from typing import Callable, Sequence

import torch

NONFINITE_LOSS = "non-finite loss"
NONFINITE_GRADIENT = "non-finite gradient"
OUT_OF_MEMORY = "out of memory"
LINALG = "linear algebra failure"
#: kinds of ``failed`` reasons, each stored as ``"<kind>: <detail>"``
FAILURE_KINDS = (NONFINITE_LOSS, NONFINITE_GRADIENT, OUT_OF_MEMORY, LINALG)

# ``skipped`` reasons come from :func:`layergrad.inputs.prompting.encode`
_SKIPPED_KINDS = (("response truncated away", "response truncated by --max-length"), ("the response has no tokens", "no response tokens"),
                  ("no usable --truncate-to partner", "no usable --truncate-to partner"))  # run/truncate.py NO_PARTNER


# ---------------------------------------------------------------------------------------
# Reasons
# ---------------------------------------------------------------------------------------


def nonfinite_loss(value: float) -> str:
    return f"{NONFINITE_LOSS}: {value}"


def nonfinite_gradient(modules: Sequence[str]) -> str:
    return f"{NONFINITE_GRADIENT}: in {len(modules)} module(s), first {modules[0]}"


def out_of_memory(n_tokens: int) -> str:
    return f"{OUT_OF_MEMORY}: does not fit alone ({n_tokens} tokens)"


def does_not_fit(n_tokens: int, estimate: int, budget: int) -> str:
    """An example whose estimated peak alone exceeds the memory budget (never run; see :mod:`.memory`)."""
    gib = 1 << 30
    return f"{out_of_memory(n_tokens)[:-1]}; estimated {estimate / gib:.2f} GiB > budget {budget / gib:.2f} GiB)"


def linalg_failure(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{LINALG}: {first}"


def reason_kind(status: str, reason: str | None) -> str | None:
    """A short stable label for why an example is not ``ok`` (``None`` for ``ok``).

    ``failed``: one of :data:`FAILURE_KINDS`; ``skipped``: ``"response truncated by
    --max-length"`` or ``"no response tokens"``; ``invalid``: ``"invalid record"``. An
    unrecognised reason is returned whole.
    """
    if status == "ok":
        return None
    if status == "invalid":
        return "invalid record"
    text = reason or ""
    if status == "failed":
        for kind in FAILURE_KINDS:
            if text.startswith(kind):
                return kind
    if status == "skipped":
        for prefix, kind in _SKIPPED_KINDS:
            if text.startswith(prefix):
                return kind
    return text or "(no reason given)"


#: failure kinds a rerun retries by default: they depend on the memory at hand (or the --max-memory budget),
#: not on the example; a non-finite value or a failed factorisation comes back the same for the same model
#: and data, so it is retried only with ``--retry-failed``
RETRYABLE_KINDS = (OUT_OF_MEMORY,)
_BUDGET = "GiB > budget "  # in does_not_fit's reason: the estimate exceeded --max-memory, nothing ran


def to_retry(failed: dict[str, str], ids, retry: str) -> dict[str, str]:
    """The stored failures (id -> reason) among ``ids`` that a rerun computes again: ``retry`` ``auto``
    (those of :data:`RETRYABLE_KINDS`), ``all`` or ``none``."""
    if retry == "none":
        return {}
    return {i: failed[i] for i in ids if i in failed
            and (retry == "all" or reason_kind("failed", failed[i]) in RETRYABLE_KINDS)}


def failure_label(reason: str | None) -> str:
    """Why an example failed, in a few words: the budget apart from a real out-of-memory error."""
    if reason and _BUDGET in reason:
        budget = reason.split(_BUDGET, 1)[1].rstrip(")")
        return f"does not fit the memory budget ({budget}; --max-memory)"
    return reason_kind("failed", reason) or ""


def count_by_label(reasons) -> str:
    """``"3 does not fit the memory budget (0.00 GiB; --max-memory), 1 non-finite loss"``: most frequent first."""
    counts: dict[str, int] = {}
    for r in reasons:
        label = failure_label(r)
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------------------
# Input that cannot be scored
# ---------------------------------------------------------------------------------------


def unscorable_problems(examples, encoded, output_field: str = "output", text_field: str = "text") -> list:
    """A :class:`~layergrad.inputs.data.Problem` for each example with nothing to score (its response
    wholly cut by ``--max-length``, or no response token at all)."""
    from layergrad.inputs.data import Problem

    problems = []
    for ex, enc in zip(examples, encoded):
        if enc.skip_reason is None:
            continue
        field = output_field if ex.messages is None else f"messages[{len(ex.messages)}].content"
        if ex.is_text:
            field = text_field
        problems.append(Problem(ex.source, ex.index, field, f"nothing to score: {enc.skip_reason}"))
    return problems


def unscorable_hint(encoded) -> str:
    longest = max((e.n_prompt for e in encoded if e.skip_reason is not None), default=0)
    return (
        f"Raise --max-length above the longest such prompt ({longest} tokens), or pass --skip-invalid "
        "to store these examples as skipped and run the others."
    )


# ---------------------------------------------------------------------------------------
# Out of memory: split and retry
# ---------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/accelerator ``OutOfMemoryError``, or an allocator's failure on CPU or MPS."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    return False


def fault_of(exc: BaseException) -> str | None:
    """The failure kind an exception stands for, or ``None`` for one that is a bug (re-raised)."""
    if is_out_of_memory(exc):
        return OUT_OF_MEMORY
    if isinstance(exc, torch.linalg.LinAlgError):
        return LINALG
    return None


def free_memory() -> None:
    """Drop what a failed batch left behind (its graph, its activations, the allocator's cache)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Backoff:
    """Run batches, splitting the ones that run out of memory; remembers the smallest that did.

    ``limit`` is the smallest cost (padded tokens) of a batch of several examples that ran out
    of memory; later batches of several examples that cost as much are split before they run.
    """

    def __init__(self, log: Callable[[str], None] | None = None):
        self.limit: int | None = None
        self.retries = 0
        self.log = log or (lambda msg: None)

    def run(self, items: Sequence, compute: Callable, fail: Callable, cost: Callable) -> list:
        """``[compute(part) or fail(item, reason), ...]`` covering ``items`` in order.

        ``compute(part)`` computes a list of items; ``fail(item, reason)`` records one item that
        failed alone; ``cost(part)`` is a part's padded token count (of one item: its tokens).
        Exceptions that are not faults (:func:`fault_of`) propagate unchanged.
        """
        out = []
        stack = [list(items)]
        while stack:
            part = stack.pop()
            c = cost(part)
            if len(part) > 1 and self.limit is not None and c >= self.limit:
                stack += self._halves(part)
                continue
            kind, reason = None, None
            try:
                out.append(compute(part))
                continue
            except Exception as exc:  # noqa: BLE001 - classified, and re-raised unless a fault
                kind = fault_of(exc)
                if kind is None:
                    raise
                reason = linalg_failure(exc) if kind == LINALG else out_of_memory(c)
            # outside the except block: the exception's frames (and the batch's tensors) are gone
            free_memory()
            self.retries += 1
            if kind == OUT_OF_MEMORY and len(part) > 1:
                self.limit = c if self.limit is None else min(self.limit, c)
            if len(part) == 1:
                self.log(f"layergrad: an example failed alone ({reason}); stored as failed")
                out.append(fail(part[0], reason))
            else:
                self.log(f"layergrad: {kind} on a batch of {len(part)} examples ({c} padded tokens); splitting it")
                stack += self._halves(part)
        return out

    @staticmethod
    def _halves(part: list) -> list[list]:
        h = len(part) // 2
        return [part[h:], part[:h]]  # popped first half first: results stay in order
