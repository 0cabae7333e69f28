"""IFD (instruction-following difficulty): how much the prompt helps the model predict the response.

Cherry_LLM (Li et al. 2024, "From Quantity to Quality") and Superfiltering define, for one example,

    ifd     = L_P / L_0                    (loss ratio)
    ifd_ppl = exp(L_P) / exp(L_0)          (perplexity ratio), computed as exp(L_P - L_0)

``L_P``: mean cross-entropy (nats) of the response tokens given the prompt; ``L_0``: mean
cross-entropy of the SAME response tokens with no prompt. High IFD: the prompt helps little.

Which tokens are scored (the set ``S``, identical in both passes). Let ``ids`` be the example's
``Encoded.input_ids`` (after ``--max-length``), ``P = n_prompt`` and ``s = max(P, 1)``. The response
tokens are ``r = ids[s:]``, the ``n_response`` loss terms of the run (so a truncated response is cut
at the same token in both passes). The no-prompt pass feeds these very ids; it never tokenises
the response text alone, which can give other tokens than the tail of the full text (a byte-level
BPE merges a leading space or newline differently at the start of a text).

* The tokenizer adds a BOS token (``tokenizer("a")`` starts with ``bos_token_id``; Llama, Mistral,
  Gemma): the no-prompt input is ``[BOS] + r``, every response token is scored, ``S = r`` and
  ``L_P`` is exactly the run's ``loss`` (Cherry_LLM's rule: it tokenises the output with the BOS).
* No BOS (GPT-2, Qwen2, SmolLM2): the no-prompt input is ``r``; its first token has nothing to be
  predicted from, so ``S = r[1:]`` in BOTH passes and ``L_P`` is the with-prompt cross-entropy over
  ``S`` (``loss_with_prompt``), which differs from ``loss`` (that also counts ``r[0]``).

Undefined IFD is NaN with a reason (``ifd_reason``), never 0 or -1: no token to score (empty response
after truncation, or a one-token response without BOS), a non-finite loss, or ``L_0 == 0``.
``ifd_ppl`` is ``inf`` only when ``L_P - L_0 > 709`` (float64 overflow).

The no-prompt pass is one extra forward pass per batch without gradients (no backward, so the
capture hooks, which act only when gradients are enabled, take no part in it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .batching import pad
from .loss import loss_positions, per_example_loss
from .prompting import Encoded

__all__ = ["IFD_KEYS", "NoPromptRule", "ifd_fields", "no_prompt_loss", "prompt_loss", "score_batch", "undefined"]

#: Keys each example row gains under ``run --ifd`` (``loss_with_prompt`` is stored when the schema
#: has a column for it; it equals ``loss`` when the tokenizer adds a BOS).
IFD_KEYS = ("loss_no_prompt", "ifd", "ifd_ppl", "ifd_reason", "loss_with_prompt")


@dataclass(frozen=True)
class NoPromptRule:
    """How the no-prompt sequence is built from an example's tokens (see the module docstring)."""

    bos_id: int | None  # prepended to the response tokens; None: the tokenizer adds no BOS

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "NoPromptRule":
        from .prompting import _adds_bos

        return cls(tokenizer.bos_token_id if _adds_bos(tokenizer) else None)

    @property
    def skip(self) -> int:
        """Response tokens left out of ``S`` at the start: 0 with a BOS, 1 without."""
        return 0 if self.bos_id is not None else 1

    def input_ids(self, enc: Encoded) -> list[int]:
        r = list(enc.input_ids[max(enc.n_prompt, 1):])
        return [self.bos_id] + r if self.bos_id is not None else r

    def n_scored(self, enc: Encoded) -> int:
        """``|S|``: response tokens scored in both passes."""
        return max(0, enc.n_response - self.skip)

    def describe(self) -> str:
        if self.bos_id is not None:
            return f"no-prompt input = [BOS {self.bos_id}] + response token ids of the run; all response tokens scored"
        return "no-prompt input = response token ids of the run (no BOS); the first response token is scored in neither pass"


# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------


def ifd_fields(loss_prompt: float, loss_no_prompt: float, n_scored: int) -> dict:
    """The row fields of one example from ``L_P`` and ``L_0`` over ``n_scored`` tokens."""
    lp, l0 = float(loss_prompt), float(loss_no_prompt)
    reason = None
    if n_scored <= 0:
        reason = "no response token to score in both passes (a single response token and no BOS token)"
    elif not math.isfinite(lp):
        reason = f"with-prompt loss is not finite ({lp})"
    elif not math.isfinite(l0):
        reason = f"no-prompt loss is not finite ({l0})"
    elif l0 == 0.0:
        reason = "no-prompt loss is 0 (the ratio is undefined)"
    if reason is not None:
        return {"loss_no_prompt": l0 if n_scored > 0 else math.nan, "ifd": math.nan, "ifd_ppl": math.nan,
                "ifd_reason": reason, "loss_with_prompt": lp if n_scored > 0 else math.nan}
    try:
        ppl = math.exp(lp - l0)  # = exp(lp) / exp(l0) without overflowing either
    except OverflowError:
        ppl = math.inf
    return {"loss_no_prompt": l0, "ifd": lp / l0, "ifd_ppl": ppl, "ifd_reason": None, "loss_with_prompt": lp}


def undefined(reason: str) -> dict:
    """Row fields of an example that was not computed (skipped or invalid)."""
    return {"loss_no_prompt": math.nan, "ifd": math.nan, "ifd_ppl": math.nan, "ifd_reason": reason, "loss_with_prompt": math.nan}


# ---------------------------------------------------------------------------------------
# The two losses of a batch
# ---------------------------------------------------------------------------------------


def prompt_loss(rule: NoPromptRule, logits: Tensor, targets: Tensor, rows: Tensor, tgt: Tensor,
                encs: list[Encoded], loss: Tensor) -> Tensor:
    """``L_P`` per example ``(n,)`` from the main pass's gathered logits ``(N, V)``.

    ``rows``/``tgt``/``targets``: the main pass's loss terms (:func:`loss.loss_positions`). With a
    BOS, ``S`` is every loss term and ``L_P`` is ``loss`` itself; without, the first term of each
    example is left out (NaN where nothing remains).
    """
    if rule.skip == 0:
        return loss.detach()
    first = torch.tensor([max(e.n_prompt, 1) for e in encs], dtype=torch.long)  # (n,) position of r[0]
    keep = (tgt > first[rows]).to(logits.device)  # (N,)
    r = rows.to(logits.device)
    with torch.no_grad():
        return per_example_loss(logits.detach()[keep], targets[keep], r[keep], len(encs))


def no_prompt_loss(rule: NoPromptRule, model, encs: list[Encoded], pad_id: int, device, index: dict | None = None) -> Tensor:
    """``L_0`` per example ``(n,)``: one forward pass without gradients over the no-prompt sequences.

    ``index``: the dict read by :func:`engine.gather_logits_at` when that hook is on the model (the
    vocabulary projection then runs only at the scored positions); ``None`` otherwise.
    """
    seqs = [rule.input_ids(e) for e in encs]
    n = len(seqs)
    out = torch.full((n,), math.nan, dtype=torch.float64)
    if not any(len(s) >= 2 for s in seqs):
        return out
    ids, mask = pad([s if s else [pad_id] for s in seqs], pad_id)  # (n, t)
    # position 0 (BOS, or r[0] without one) is context only: the loss terms are positions 1..len-1
    rows, pred, tgt = loss_positions([len(s) for s in seqs], [1] * n)
    try:
        if index is not None:
            index.clear()
            index.update(rows=rows, pos=pred)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            if logits.shape[:2] == ids.shape:  # no gather hook, or the model bypassed it
                logits = logits[rows.to(logits.device), pred.to(logits.device)]  # (N, V)
            else:
                logits = logits.reshape(-1, logits.shape[-1])  # (1, N, V) -> (N, V)
            dev = logits.device
            loss = per_example_loss(logits, ids[rows, tgt].to(dev), rows.to(dev), n)  # (n,), NaN without terms
    finally:
        if index is not None:
            index.clear()
    return loss.cpu().double()


def score_batch(rule: NoPromptRule, model, encs: list[Encoded], logits: Tensor, targets: Tensor, rows: Tensor,
                tgt: Tensor, loss: Tensor, *, pad_id: int, device, index: dict | None = None) -> list[dict]:
    """IFD row fields of every example of a batch (after its main pass)."""
    lp = prompt_loss(rule, logits, targets, rows, tgt, encs, loss).cpu().double()
    l0 = no_prompt_loss(rule, model, encs, pad_id, device, index)
    return [ifd_fields(float(lp[b]), float(l0[b]), rule.n_scored(e)) for b, e in enumerate(encs)]
