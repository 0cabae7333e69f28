"""IFD with any causal LM as the scoring model, forward-only and batched by length.

The definitions are those of :mod:`layergrad.run.ifd` (``cherry``, ``superfiltering``): for one
example, ``L_P`` is the mean cross-entropy (nats) of its response tokens given the prompt and
``L_0`` that of the same response tokens without it (the definition's response-alone rule,
:class:`~layergrad.run.ifd.NoPromptRule`); ``ifd = L_P / L_0``, ``ifd_ppl = exp(L_P - L_0)``.

Here the conditioned text is the example in ``--prompt-mode`` (default ``base``:
``instruction + "\\n" + output``, Superfiltering's ``none`` template and the follow-up paper's
``metrics/cal_ifd.py``), tokenised once (:func:`layergrad.inputs.prompting.encode`, truncated at
``max_length``, 1024 as released), and both passes are no-grad forwards of padded batches of
similar length. The default convention is ``superfiltering`` (the follow-up paper's GPT-2 scores:
without a BOS the first response token is scored in ``L_P`` only).

Values are kept as computed: NaN (with ``ifd_reason``) and values outside [0, 1] (flagged by
``ifd_out_of_range``) are stored, never dropped; ``select`` drops them (Cherry_LLM's filter, the
paper's ``select_by_metric.py`` filter for IFD) and says how many.
"""
from __future__ import annotations

import contextlib
import math

import pyarrow as pa

from layergrad.errors import LayergradError
from layergrad.run.ifd import IFD_DEFINITIONS, NoPromptRule, ifd_fields, no_prompt_loss, undefined

__all__ = ["DEFAULT_CONVENTION", "IFDScorer", "MODEL_ALIASES", "conditioned_loss"]

DEFAULT_CONVENTION = "superfiltering"
#: Short names that are no ``org/name`` hub id: ``--ifd-model gpt2``.
MODEL_ALIASES = {"gpt2": "openai-community/gpt2"}


class IFDScoreError(LayergradError, ValueError):
    """Bad IFD scoring options."""


COLUMNS = [
    pa.field("ifd", pa.float64()),  # loss_with_prompt / loss_no_prompt (NaN where undefined: ifd_reason)
    pa.field("ifd_ppl", pa.float64()),  # exp(loss_with_prompt - loss_no_prompt): the perplexity ratio (the paper's ifd_gpt2)
    pa.field("loss_with_prompt", pa.float64()),  # L_P: mean CE (nats) of the response tokens given the prompt
    pa.field("loss_no_prompt", pa.float64()),  # L_0: mean CE of the response tokens without it (the convention's rule)
    pa.field("ifd_reason", pa.string()),  # why IFD is NaN (null when defined)
    pa.field("ifd_out_of_range", pa.bool_()),  # ifd_ppl finite and outside [0, 1] (kept; `select` drops it)
    pa.field("n_tokens", pa.int32()),  # tokens of the conditioned text fed to the scoring model (after truncation)
    pa.field("n_prompt_tokens", pa.int32()),  # tokens before the first response token
    pa.field("n_response_tokens", pa.int32()),  # response tokens scored in L_P
    pa.field("truncated", pa.bool_()),  # the conditioned text was cut at max_length
]


def conditioned_loss(model, encs, pad_id: int, device, index=None):
    """``L_P`` per example ``(n,)``: one no-grad forward of the right-padded conditioned sequences,
    the mean cross-entropy of each one's response tokens (:mod:`layergrad.run.loss`)."""
    import torch

    from layergrad.run.gather import logits_at
    from layergrad.run.loss import loss_positions, per_example_loss
    from layergrad.run.plan import pad

    ids, mask = pad([e.input_ids for e in encs], pad_id)  # (n, t)
    rows, pred, tgt = loss_positions([e.n_tokens for e in encs], [e.n_prompt for e in encs])
    with index.at(rows, pred) if index is not None else contextlib.nullcontext(), torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logits = logits_at(logits, ids.shape, rows, pred)  # (N, V)
        dev = logits.device
        loss = per_example_loss(logits, ids[rows, tgt].to(dev), rows.to(dev), len(encs))  # (n,)
    return loss.cpu().double()


class IFDScorer:
    """IFD of examples by one loaded causal LM (:class:`~layergrad.inputs.models.LoadedModel`)."""

    name = "ifd"
    columns = COLUMNS

    def __init__(self, loaded, *, convention: str = DEFAULT_CONVENTION, max_length: int | None = 1024,
                 prompt_mode: str = "base", batch_size: int = 16, max_batch_tokens: int = 16384, max_pad: float | None = 0.1, device="cpu"):
        from layergrad.inputs.prompting import resolve_mode
        from layergrad.run.plan import pad_id_of

        if convention not in IFD_DEFINITIONS:
            raise IFDScoreError(f"--ifd-convention {convention!r}: choose one of {', '.join(IFD_DEFINITIONS)}")
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.convention = convention
        self.rule = NoPromptRule.for_tokenizer(self.tokenizer, convention)
        self.max_length = max_length
        self.mode = resolve_mode(prompt_mode, self.tokenizer)
        self.batch_size, self.max_batch_tokens, self.max_pad = batch_size, max_batch_tokens, max_pad
        self.pad_id = pad_id_of(self.tokenizer)
        self.device = device

    def provenance(self) -> dict:
        lm = self.loaded
        return {"score": "ifd", "model": lm.source, "model_repo": lm.repo_id, "model_revision": lm.revision,
                "model_fingerprint": lm.fingerprint, "dtype": lm.dtype, "convention": self.convention,
                "rule": self.rule.describe(), "prompt_mode": self.mode, "max_length": self.max_length}

    def identity(self) -> dict:
        p = self.provenance()
        return {k: p[k] for k in ("model_fingerprint", "model_revision", "dtype", "convention", "prompt_mode", "max_length")}

    def score(self, examples, progress=None) -> list[dict]:
        """One dict of :data:`COLUMNS` values per example, in the order given."""
        from layergrad.inputs.prompting import encode
        from layergrad.run.gather import GatherIndex
        from layergrad.run.plan import plan_batches

        encs = [encode(ex, self.tokenizer, self.mode, self.max_length) for ex in examples]
        out: list[dict | None] = [None] * len(encs)
        todo = []
        for k, e in enumerate(encs):
            why = e.skip_reason or e.ifd_reason
            if why is not None:
                out[k] = self._row(e, {**undefined(why), "loss_with_prompt": math.nan})
            else:
                todo.append(k)
        index = GatherIndex()
        with index.hooked(self.model) as hooked:
            idx = index if hooked else None
            for b in plan_batches([encs[k].n_tokens for k in todo], self.batch_size, self.max_batch_tokens, self.max_pad):
                ks = [todo[i] for i in b.items]
                batch = [encs[k] for k in ks]
                lp = conditioned_loss(self.model, batch, self.pad_id, self.device, idx)
                l0 = no_prompt_loss(self.rule, self.model, batch, self.pad_id, self.device, idx)
                for j, k in enumerate(ks):
                    out[k] = self._row(encs[k], ifd_fields(float(lp[j]), float(l0[j]), self.rule.n_scored(encs[k])))
                if progress is not None:
                    progress(len(ks))
        return out  # type: ignore[return-value]

    @staticmethod
    def _row(e, fields: dict) -> dict:
        ppl = fields["ifd_ppl"]
        return {**fields, "ifd_out_of_range": bool(math.isfinite(ppl) and not 0.0 <= ppl <= 1.0),
                "n_tokens": e.n_tokens, "n_prompt_tokens": e.n_prompt, "n_response_tokens": e.n_response,
                "truncated": e.truncated}
