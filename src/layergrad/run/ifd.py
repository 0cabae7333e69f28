"""IFD (instruction-following difficulty): how much the prompt helps the model predict the response.

Two published definitions, chosen by name (``run --ifd cherry|superfiltering``; ``--ifd`` alone is
:data:`DEFAULT_IFD`, ``cherry``). Both compare, for one example, the mean cross-entropy (nats) of
the response given the prompt, ``L_P``, with that of the response without the prompt, ``L_0``, and
every run stores both ratios::

    ifd     = L_P / L_0                    (loss ratio: Cherry_LLM's score)
    ifd_ppl = exp(L_P) / exp(L_0)          (perplexity ratio: Superfiltering's score), as exp(L_P - L_0)

``ifd > 1`` exactly when ``ifd_ppl > 1`` (``L_0 > 0``), so a filter at 1 keeps the same examples
on either column. High IFD: the prompt helps little. The definitions differ in which tokens the
response-alone pass scores, i.e. in what the first response token is predicted from.

What the released code does
---------------------------
``cherry`` -- Cherry_LLM (Li et al. 2024, "From Quantity to Quality", the paper that defines IFD),
``cherry_seletion/data_analysis.py`` (``main`` with ``--mod cherry``, scoring with
``get_perplexity_and_embedding_part_text``) and ``cherry_seletion/data_by_IFD.py`` (``main``, its
inner ``get_loss_part_text``), with ``LlamaTokenizer`` (which adds the BOS ``<s>``):

* conditioned pass: the whole text in its prompt template, ``--prompt wiz`` (the default):
  ``instruction + '\\n\\n### Response:' + output`` (with an input:
  ``instruction + '\\nInput:' + input + '\\n\\n### Response:' + output``); ``--prompt alpaca``: the
  Alpaca template ending in ``### Response:``, then the output. Tokenised whole (with BOS); the
  first ``len(tokenizer.encode(text[:text.rfind(output)]))`` tokens are masked; EVERY response
  token is scored, the first one predicted from the template's last token.
* response-alone pass: ``'### Response:' + output``, tokenised whole (with BOS) and masked the same
  way: EVERY response token is scored, the first one predicted from ``### Response:``. The first
  response token is therefore in both means, with or without a BOS.
* score: ``data_by_IFD.py`` takes the stored per-token losses of the response tokens and ranks by
  ``mean_rate = mean_2 / mean_1`` (mean loss conditioned / mean loss alone: the paper's
  ``s(A|Q) / s(A)``, layergrad's ``ifd``); ``data_analysis.py`` also stores each pass's perplexity,
  whose ratio is ``ifd_ppl``. Filter: ``if mean_rate > 1: continue`` -- IFD above 1 is dropped,
  IFD equal to 1 is kept -- then the highest ``sample_rate`` are taken.
* truncation: the conditioned text at ``max_length`` tokens, the response-alone text at
  ``max_length - len(prompt ids) - 2`` (an approximation of the same cut); ``data_by_IFD.py``
  skips examples with no response token in either pass or too little room after the prompt
  (its ``wiz`` branch also leaves the input out of the text it re-tokenises to find the tokens).

``superfiltering`` -- Superfiltering (Li et al. 2024, "Superfiltering: Weak-to-Strong Data
Filtering"), ``code_ifd/data_analysis.py`` (``main``, with ``get_perplexity_and_embedding_part_text``
for the conditioned pass and ``get_perplexity_and_embedding_whole_text`` for the response alone),
``code_ifd/put_analysis_to_data.py`` and ``code_ifd/select_data.py``, with a small GPT-2-style model
(``AutoTokenizer``; GPT-2's adds no BOS):

* conditioned pass: template ``none``: ``instruction + '\\n' + output`` (with an input:
  ``instruction + '\\n' + input + '\\n' + output``), masked as Cherry's: EVERY response token is
  scored, the first one predicted from the prompt's last token.
* response-alone pass: ``output`` alone, ``tokenizer.encode(output)`` with ``labels=input_ids``: the
  Hugging Face loss predicts tokens 1..n-1, so WITHOUT a BOS the first response token is scored in
  the numerator only (it has nothing to be predicted from); with a BOS-adding tokenizer ``encode``
  prepends it and every response token is scored in both passes.
* score: ``ifd_ppl = ppl_A_condition / ppl_A_direct`` (perplexity ratio, layergrad's ``ifd_ppl``);
  ``select_data.py`` keeps ``ifd_ppl < 1`` (drops ``>= 1``), highest first.
* truncation: the whole text at ``max_length``, the response alone at ``max_length - len(prompt ids) + 1``.

What layergrad computes
-----------------------
Let ``ids`` be the example's ``Encoded.input_ids`` (after ``--max-length``), ``P = n_prompt`` and
``r = ids[max(P, 1):]``, the ``n_response`` loss terms of the run.

* conditioned pass (both): the run's own forward pass. ``L_P`` is the mean cross-entropy of every
  token of ``r`` given what precedes it: exactly the run's ``loss`` (stored again as
  ``loss_with_prompt``). No second conditioned pass is made.
* response-alone pass: one extra forward pass per batch without gradients over

  - ``cherry``: ``[BOS] + ids("### Response:") + r`` (``[BOS]`` only when the tokenizer adds one;
    ``ids(...)`` tokenised alone, without special tokens); every token of ``r`` is scored.
  - ``superfiltering``: ``[BOS] + r`` with every token of ``r`` scored when the tokenizer adds a BOS
    (Llama, Mistral, Gemma); ``r`` with ``r[1:]`` scored when it does not (GPT-2, Qwen2, SmolLM2).

Deviations from the released code, on purpose:

* The conditioned pass is the run's own text (``--prompt-mode`` base/chat and its response-token
  rule), not Cherry's ``wiz``/``alpaca`` template nor Superfiltering's ``none`` template: IFD is
  measured on the very text whose gradients are measured, and ``L_P`` is the run's loss.
* The response-alone pass reuses the run's response token ids ``r``; it never tokenises the response
  text again. Tokenising it alone (Superfiltering's ``output``, or Cherry's
  ``'### Response:' + output`` as one text) can give other tokens than the tail of the full text: a
  byte-level BPE merges a leading space or newline differently at the start of a text, SentencePiece
  adds a word-start marker, and punctuation at the start of the response can merge with Cherry's
  ``:``. With ``r`` both means average over the same response tokens. For ``cherry`` the prefix
  ``### Response:`` is tokenised on its own and put before ``r``, so its tokens can differ from
  those of ``'### Response:' + output`` at the boundary.
* Truncation: the response-alone pass has exactly the response tokens the conditioned pass kept
  (both published scripts only approximate this with a shorter ``max_length``).
* Selection (``layergrad select --by ifd|ifd_ppl``) drops IFD ``> 1`` (Cherry's filter) for both
  definitions; Superfiltering's ``select_data.py`` also drops IFD ``== 1``.
* Undefined IFD is NaN with a reason (``ifd_reason``), never 0 or -1 (Superfiltering stores 0 on a
  zero division; Cherry skips the example): a non-finite loss, ``L_0 == 0``, or no token in the
  response-alone pass (``superfiltering`` without a BOS and a one-token response).
* Plain-text records (only ``text``): undefined, they have no prompt whose help could be measured
  (``Encoded.ifd_reason``; no response-alone pass is made for them).
* Multi-turn records under ``--turns all``: undefined when more than one assistant turn is scored.
  IFD compares ONE response with and without its prompt, and ``L_P`` is the run's loss, which there
  averages over every assistant turn; a last-turn IFD would need another conditioned loss than the
  one whose gradients are measured. ``--turns last`` gives IFD on the last turn (its prompt: every
  turn before it). A record with one assistant turn has the same numbers under both. ``ifd_ppl`` is
  ``inf`` only when ``L_P - L_0 > 709`` (float64 overflow).

Why ``cherry`` is the default: it is the definition of the paper that introduced IFD and of its
selection code (whose filter ``select`` uses), and it scores the same response tokens in both
passes for every tokenizer, so the ratio compares like with like and does not change with whether
the tokenizer adds a BOS (layergrad's default model, SmolLM2, adds none: there Superfiltering's
numerator has one token more than its denominator, and a one-token response has no IFD).
``superfiltering`` reproduces the GPT-2-style scores of that paper.

The response-alone pass runs without gradients, so the capture hooks (which act only when
gradients are enabled) take no part in it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layergrad.errors import LayergradError
from layergrad.inputs.prompting import Encoded
from layergrad.vocab import IFD_METHODS, did_you_mean

if TYPE_CHECKING:  # torch is imported where it is used: RunConfig checks names without it
    from torch import Tensor

__all__ = ["CHERRY_RESPONSE_PREFIX", "DEFAULT_IFD", "IFD_DEFINITIONS", "IFD_KEYS", "IFDError", "NoPromptRule",
           "ifd_definition", "ifd_fields", "no_prompt_loss", "score_batch", "undefined"]

#: The IFD definitions, by name (``run --ifd NAME``); see the module docstring.
IFD_DEFINITIONS = IFD_METHODS
#: ``run --ifd`` without a name (and ``ifd = true`` in a TOML file or ``RunConfig(ifd=True)``).
DEFAULT_IFD = "cherry"
#: What Cherry_LLM's response-alone pass puts before the response.
CHERRY_RESPONSE_PREFIX = "### Response:"

#: Keys each example row gains under ``run --ifd`` (``loss_with_prompt`` is stored when the schema
#: has a column for it; it equals ``loss`` under both definitions).
IFD_KEYS = ("loss_no_prompt", "ifd", "ifd_ppl", "ifd_reason", "loss_with_prompt")


class IFDError(LayergradError, ValueError):
    """An IFD definition that does not exist (the command ends with exit code 2 and this message)."""


def ifd_definition(value) -> str | None:
    """The definition's name for a ``--ifd``/``RunConfig.ifd`` value: ``None``/``False`` -> ``None``
    (no IFD), ``True`` -> :data:`DEFAULT_IFD`, a name (any case) -> that name; else :class:`IFDError`."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_IFD
    if isinstance(value, str):
        name = value.strip().lower()
        if name in IFD_DEFINITIONS:
            return name
        hint = did_you_mean(name, IFD_DEFINITIONS, cutoff=0.5, template=" (did you mean {!r}?)")
        raise IFDError(f"--ifd: unknown IFD definition {value!r}{hint}; choose one of {', '.join(IFD_DEFINITIONS)} "
                       f"(--ifd alone: {DEFAULT_IFD})")
    raise IFDError(f"--ifd: expected true/false or one of {', '.join(IFD_DEFINITIONS)}, not {value!r}")


@dataclass(frozen=True)
class NoPromptRule:
    """The response-alone pass of one definition for one tokenizer (see the module docstring).

    Its input is ``prefix + r``; its loss terms are the tokens of ``r[skip:]``.
    """

    definition: str  # one of IFD_DEFINITIONS
    prefix: tuple[int, ...]  # token ids before the response tokens ([BOS] and/or Cherry's "### Response:")
    skip: int  # response tokens at the start that the response-alone pass does not score (0 or 1)
    bos: bool  # whether prefix starts with the tokenizer's BOS

    @classmethod
    def for_tokenizer(cls, tokenizer, definition=DEFAULT_IFD) -> "NoPromptRule":
        from layergrad.inputs.prompting import _adds_bos

        name = ifd_definition(definition)
        if name is None:
            raise IFDError("NoPromptRule needs an IFD definition, not None/False")
        bos = (tokenizer.bos_token_id,) if _adds_bos(tokenizer) else ()
        if name == "cherry":
            head = tuple(tokenizer(CHERRY_RESPONSE_PREFIX, add_special_tokens=False)["input_ids"])
            return cls(name, bos + head, 0, bool(bos))
        return cls(name, bos, 0 if bos else 1, bool(bos))

    def input_ids(self, enc: Encoded) -> list[int]:
        return list(self.prefix) + list(enc.input_ids[max(enc.n_prompt, 1):])

    def n_scored(self, enc: Encoded) -> int:
        """Response tokens scored by the response-alone pass (the conditioned pass scores all ``n_response``)."""
        return max(0, enc.n_response - self.skip)

    def describe(self) -> str:
        head = f"{self.definition}: L_P = the run's loss (every response token given the run's prompt); L_0: input = "
        bos = f"[BOS {self.prefix[0]}] + " if self.bos else ""
        if self.definition == "cherry":
            ids = list(self.prefix[1:] if self.bos else self.prefix)
            return head + f"{bos}{CHERRY_RESPONSE_PREFIX!r} {ids} + the run's response token ids, every response token scored"
        if self.skip == 0:
            return head + f"{bos}the run's response token ids, every response token scored"
        return head + "the run's response token ids (no BOS), the first response token not scored"


# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------


def ifd_fields(loss_prompt: float, loss_no_prompt: float, n_scored: int) -> dict:
    """The row fields of one example from ``L_P`` and ``L_0``; ``n_scored``: the response-alone pass's terms."""
    lp, l0 = float(loss_prompt), float(loss_no_prompt)
    reason = None
    if n_scored <= 0:
        reason = ("no response token to score without the prompt (a single response token and no BOS token: "
                  "nothing to predict it from)")
    elif not math.isfinite(lp):
        reason = f"with-prompt loss is not finite ({lp})"
    elif not math.isfinite(l0):
        reason = f"no-prompt loss is not finite ({l0})"
    elif l0 == 0.0:
        reason = "no-prompt loss is 0 (the ratio is undefined)"
    if reason is not None:
        return {"loss_no_prompt": l0 if n_scored > 0 else math.nan, "ifd": math.nan, "ifd_ppl": math.nan,
                "ifd_reason": reason, "loss_with_prompt": lp}
    try:
        ppl = math.exp(lp - l0)  # = exp(lp) / exp(l0) without overflowing either
    except OverflowError:
        ppl = math.inf
    return {"loss_no_prompt": l0, "ifd": lp / l0, "ifd_ppl": ppl, "ifd_reason": None, "loss_with_prompt": lp}


def undefined(reason: str) -> dict:
    """Row fields of an example that was not computed (skipped or invalid)."""
    return {"loss_no_prompt": math.nan, "ifd": math.nan, "ifd_ppl": math.nan, "ifd_reason": reason, "loss_with_prompt": math.nan}


# ---------------------------------------------------------------------------------------
# The response-alone pass of a batch
# ---------------------------------------------------------------------------------------


def no_prompt_loss(rule: NoPromptRule, model, encs: list[Encoded], pad_id: int, device, index=None) -> "Tensor":
    """``L_0`` per example ``(n,)``: one forward pass without gradients over the response-alone sequences.

    ``index``: the run's :class:`~layergrad.run.gather.GatherIndex` when its hook is on the model (the
    vocabulary projection then runs only at the scored positions); ``None`` otherwise.
    """
    import torch

    from layergrad.run.gather import logits_at
    from layergrad.run.loss import loss_positions, per_example_loss
    from layergrad.run.plan import pad

    seqs = [rule.input_ids(e) for e in encs]
    first = len(rule.prefix) + rule.skip  # position of the first scored token (r[skip])
    n = len(seqs)
    out = torch.full((n,), math.nan, dtype=torch.float64)
    if not any(len(s) > max(first, 1) for s in seqs):
        return out
    ids, mask = pad([s if s else [pad_id] for s in seqs], pad_id)  # (n, t)
    rows, pred, tgt = loss_positions([len(s) for s in seqs], [first] * n)  # terms at positions first..len-1
    with index.at(rows, pred) if index is not None else contextlib.nullcontext(), torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logits = logits_at(logits, ids.shape, rows, pred)  # (N, V)
        dev = logits.device
        loss = per_example_loss(logits, ids[rows, tgt].to(dev), rows.to(dev), n)  # (n,), NaN without terms
    return loss.cpu().double()


def score_batch(rule: NoPromptRule, model, encs: list[Encoded], loss: "Tensor", *, pad_id: int, device,
                index=None) -> list[dict]:
    """IFD row fields of every example of a batch (after its main pass).

    ``loss``: the main pass's per-example loss ``(n,)``, which is ``L_P`` under both definitions
    (every response token given the prompt).
    """
    lp = loss.detach().cpu().double()
    defined = [b for b, e in enumerate(encs) if e.ifd_reason is None]
    l0 = no_prompt_loss(rule, model, [encs[b] for b in defined], pad_id, device, index) if defined else None
    out = []
    for b, e in enumerate(encs):
        if e.ifd_reason is not None:
            out.append({**undefined(e.ifd_reason), "loss_with_prompt": float(lp[b])})
        else:
            out.append(ifd_fields(float(lp[b]), float(l0[defined.index(b)]), rule.n_scored(e)))
    return out
