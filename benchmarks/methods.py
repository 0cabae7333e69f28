"""The computations the benchmark compares, each on a list of encoded examples (one padded batch).

* ``a`` the paper's method: one example at a time, the dense weight gradient of every selected
  module by autograd (:func:`layergrad.measure.oracle.example_gradients`, logits at every position as the
  paper computes them) and a full ``torch.linalg.svd`` of each in float32, as the paper's script
  (``code_gradient/get_gradient_values.py``; ``../shared/golden/README.md``).
* ``b`` a plain training step: forward and backward with a gradient for every weight, the same
  per-example loss as layergrad (logits only at response positions), no statistics.
* ``hf`` a stock Hugging Face step (``labels=``, logits at every position): what most training
  code runs; for context only, no target refers to it.
* ``c`` the floor: layergrad's own forward and activation-only backward (no parameter needs a
  gradient, the backward stops at the first measured module) with a sink that does nothing.
* ``d`` layergrad: :class:`layergrad.run.engine.BatchRunner` with the engine's statistics sink,
  float32 statistics, top-64 spectrum stored.

Every callable returns ``(seconds, payload)``: the seconds cover the computation only (no hook
registration, no garbage collection); ``payload`` maps ``(example position, module) -> nuclear``
for ``a`` and ``d`` (to compare their values).
"""
from __future__ import annotations

import contextlib
import gc
import time

import torch

from layergrad.run.plan import pad
from layergrad.measure.guard import FiniteGuard
from layergrad.measure.sink import Measured
from layergrad.run.gather import GatherIndex, logits_at
from layergrad.run.step import BatchRunner
from layergrad.run.loss import loss_positions, per_example_loss
from layergrad.measure.measurer import Measurer

LABELS = {
    "a": "(a) paper: per example, dense grad + SVD",
    "b": "(b) training step",
    "hf": "(b') stock HF step",
    "c": "(c) floor",
    "d": "(d) layergrad",
    "q": "(q) layergrad, QR path forced",
    "r": "(r) float64 reference",
    "u": "(u) layergrad, eigenproblems per example (eig_batch off)",
}


class NullSink:
    """A statistics sink that does nothing: the floor's capture."""

    def begin(self, *args, **kwargs) -> None:
        pass

    def accept(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> Measured:
        return Measured()


def _statistics_sink(reference: bool = False, method: str = "auto", eig_batch: str = "auto") -> object:
    """The sink the engine builds for float32 statistics (wrapped in its fault guard when present).

    ``reference``: instead, float64 statistics by the QR path (error ``u * s_1`` in float64) from the
    same captured inputs and output gradients: the exact values of what (d) computes, for a model too
    large for the paper's method (a) to be run on every module.
    """
    sink = Measurer(stats_dtype=torch.float64, method="factored") if reference else Measurer(stats_dtype=torch.float32, spectrum_k=64, method=method, eig_batch=eig_batch)
    return FiniteGuard(sink)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn) -> tuple[float, object]:
    """Wall seconds of ``fn()``; on a GPU, from an idle device to the end of its last kernel."""
    gc.collect()
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


#: The statistics (d), (q) and (u) are compared on against the float64 reference (r): the nuclear norm (a sum
#: over every value), the spectral norm s_1 and the effective rank (which weighs the small values).
COMPARED = ("nuclear", "spectral", "effective_rank")


def runner_method(model, targets, pad_id: int, measure: bool, reference: bool = False, method: str = "auto",
                  eig_batch: str = "auto"):
    """``c`` (``measure=False``), ``d``, ``u`` (``eig_batch="off"``), or ``r`` (``reference``): the engine's batch runner."""

    def run(encs, positions):
        sink = _statistics_sink(reference, method, eig_batch) if measure else NullSink()
        runner = BatchRunner(model, targets, sink, next(model.parameters()).device, pad_id)
        with runner.hooks():
            seconds, (loss, measured) = _timed(lambda: runner.run(encs))
        results = measured.modules
        payload = {}
        if measure:  # (position, module): the nuclear norm (as the paper's method returns it); then two more statistics
            for name, r in results.items():
                for stat in COMPARED:
                    vals = r.stats[stat]
                    for b, pos in enumerate(positions):
                        payload[(pos, name) if stat == "nuclear" else (pos, name, stat)] = float(vals[b])
        del results, runner
        return seconds, payload

    return run


def train_step(model, pad_id: int, stock: bool = False):
    """``b`` (the same loss as layergrad) or ``hf`` (``stock``: Hugging Face's ``labels`` loss)."""

    def run(encs, positions):
        lengths = [e.n_tokens for e in encs]
        n_prompt = [e.n_prompt for e in encs]
        device = next(model.parameters()).device
        ids, mask = (x.to(device) for x in pad([e.input_ids for e in encs], pad_id))
        rows, pred, tgt = (x.to(device) for x in loss_positions(lengths, n_prompt))
        index = GatherIndex()
        labels = torch.full_like(ids, -100)
        labels[rows, tgt] = ids[rows, tgt]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(True)
            p.grad = None
        ctx = contextlib.nullcontext() if stock else contextlib.ExitStack()
        if not stock:
            ctx.enter_context(index.hooked(model))
            ctx.enter_context(index.at(rows, pred))

        def step():
            with torch.enable_grad():
                if stock:
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                else:
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                    logits = logits_at(logits, ids.shape, rows, pred)
                    loss = per_example_loss(logits, ids[rows, tgt], rows, len(encs)).sum()
                loss.backward()

        try:
            with ctx:
                seconds, _ = _timed(step)
        finally:
            for p, flag in flags:
                p.grad = None
                p.requires_grad_(flag)
        return seconds, {}

    return run


def paper_method(model, targets):
    """``a``: one example at a time (``encs`` of any size are run one by one)."""
    from layergrad.measure import oracle

    def run(encs, positions):
        total = 0.0
        payload = {}
        for enc, pos in zip(encs, positions):
            def one():
                _, grads = oracle.example_gradients(model, enc.input_ids, max(enc.n_prompt, 1), targets)
                # as the paper's script: a full torch.linalg.svd (U and V too, torch's default full_matrices)
                return {name: float(torch.linalg.svd(g.float())[1].sum()) for name, g in grads.items()}

            seconds, nuclear = _timed(one)
            total += seconds
            for name, v in nuclear.items():
                payload[(pos, name)] = v
        return total, payload

    return run
