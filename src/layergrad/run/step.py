"""One batch: a padded forward pass, the per-example loss, an activation-only backward whose hooks
hand every measured gradient's factors to the statistics sink, the IFD pass, and the batch's rows.
"""
from __future__ import annotations

import contextlib
import math

import torch

from layergrad.inputs.prompting import Encoded
from layergrad.inputs.targets import Target
from layergrad.measure.capture import Capture, activation_only_backward
from layergrad.measure.sink import Measured, Sink
from layergrad.run import faults
from layergrad.run.gather import GatherIndex, logits_at
from layergrad.run.ifd import score_batch, undefined
from layergrad.run.loss import loss_positions, per_example_loss
from layergrad.run.plan import pad
from layergrad.store.rows import cosine_row, example_of, module_rows_of, share_rows_of, token_texts


class ShareLayout:
    """What the token-share rows need beyond the sink's sums: layer -> depth third, and the tokenizer (token text)."""

    def __init__(self, thirds: dict[int, str], tokenizer):
        self.thirds = thirds
        self.tokenizer = tokenizer


class BatchRunner:
    """Computes one batch at a time; holds the hooks for the whole run (:meth:`hooks`)."""

    def __init__(self, model, targets: list[Target], sink: Sink, device, pad_id: int, ifd=None):
        self.model = model
        self.ifd = ifd  # ifd.NoPromptRule under --ifd: one extra no-grad forward per batch
        self.ifd_rows: list[dict] | None = None  # IFD fields of the last batch's examples
        self.targets = targets
        self.measurer = sink
        self.device = device
        self.pad_id = pad_id
        self.by_layer_role = {(t.layer, t.role): t for t in targets if t.layer >= 0}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # the output head, whatever its name: measured, it needs its input at every position
        self.gather = not any(t.module is head or t.role == "lm_head" for t in targets)
        paths = dict(model.named_modules())
        self.embeddings = {t.tied: paths[t.tied] for t in targets if t.tied is not None}
        self.index = GatherIndex()
        self.shares: ShareLayout | None = None  # set under --token-shares (the sink then sums them)

    @contextlib.contextmanager
    def hooks(self):
        with contextlib.ExitStack() as stack:
            stack.enter_context(activation_only_backward(self.model))
            self.capture = stack.enter_context(Capture(self.targets, self.measurer, self.embeddings))
            if self.gather:
                stack.enter_context(self.index.hooked(self.model))
            yield self

    def run(self, encoded: list[Encoded]) -> tuple[torch.Tensor, Measured]:
        """Forward + backward for a batch: per-example loss ``(n,)`` (float64, CPU) and what the sink measured."""
        lengths = [e.n_tokens for e in encoded]
        ids, mask = pad([e.input_ids for e in encoded], self.pad_id)  # (n, t)
        rows, pred, tgt = loss_positions(lengths, [e.n_prompt for e in encoded], [e.loss_spans for e in encoded])  # (N,) loss terms
        targets = ids[rows, tgt].to(self.device)
        try:
            with torch.enable_grad(), self.index.at(rows, pred) if self.gather else contextlib.nullcontext():
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
                logits = logits_at(out.logits, ids.shape, rows, pred)  # (N, V)
                loss = per_example_loss(logits, targets.to(logits.device), rows.to(logits.device), len(encoded))
                self.capture.seal()  # a recomputation in the backward (checkpointing) is not a new call
                self.measurer.begin(mask, self.capture.consumers(), self.by_layer_role)
                objective = loss[torch.isfinite(loss)].sum()  # a sum: each example's gradient is its own
                if objective.requires_grad:
                    objective.backward()
                self.capture.finish()
                measured = self.measurer.finish()
            if self.ifd is not None:
                self.ifd_rows = score_batch(self.ifd, self.model, encoded, loss, pad_id=self.pad_id, device=self.device,
                                            index=self.index if self.gather else None)
            return loss.detach().cpu().double(), measured
        finally:
            self.capture.reset()


def compute_batch(runner: BatchRunner, exs: list, encs: list[Encoded], orders: list[int]):
    """``(example rows, module rows, cosine rows, share rows)`` of one batch; a faulty example is stored as failed."""
    loss, measured = runner.run(encs)
    by_name = {t.name: t for t in runner.targets}
    ex_rows, mod_rows, cos_rows, share_rows = [], [], [], []
    for b, (ex, enc, order) in enumerate(zip(exs, encs, orders)):
        L = float(loss[b])
        if not math.isfinite(L):
            ex_rows.append(example_of(ex, order, enc, "failed", faults.nonfinite_loss(L), None))
            continue
        rows, bad = module_rows_of(ex.id, b, measured.modules, runner.targets)
        blamed = measured.faults.get(b) or bad  # non-finite X or D (zeroed by the guard), or non-finite norms
        if blamed:
            ex_rows.append(example_of(ex, order, enc, "failed", faults.nonfinite_gradient(blamed), L))
            continue
        ex_rows.append(example_of(ex, order, enc, "ok", None, L))
        mod_rows.extend(rows)
        for kind, a, bname, cos in measured.cosines:
            ta = by_name[a]
            cos_rows.append(cosine_row(id=ex.id, kind=kind, role=ta.role, layer=ta.layer, module_a=a, module_b=bname, cosine=float(cos[b])))
        if runner.shares is not None:
            share_rows.extend(share_rows_of(ex.id, b, measured.shares, runner.shares.thirds, enc,
                                            token_texts(runner.shares.tokenizer, enc.input_ids)))
    if runner.ifd is not None:  # one example row per batch item, in batch order
        for row, fields in zip(ex_rows, runner.ifd_rows):
            row.update(fields)
    return ex_rows, mod_rows, cos_rows, share_rows


def failed_row(ex, order: int, enc: Encoded, reason: str, ifd: bool) -> dict:
    """The row of an example that failed alone (out of memory, a factorisation that failed)."""
    row = example_of(ex, order, enc, "failed", reason, None)
    if ifd:
        row.update(undefined(f"not computed (failed): {reason}"))
    return row
