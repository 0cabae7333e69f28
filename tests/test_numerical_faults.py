"""Reliability: numerical faults are recorded, never averaged, and do not touch the rest of the batch."""
from __future__ import annotations


import pandas as pd
import pytest
import torch

from conftest import make_model
from layergrad.run import engine
from layergrad.run import faults
from layergrad.store import load_results
from helpers import MANY, METRICS, config, loaded


class Poison:
    """Hooks that put a non-finite value into one example's activations (forward) or
    activation gradients (backward) at decoder layer ``layer``, found by a marker token."""

    def __init__(self, model, marker: int, layer: int, where: str, value=float("nan")):
        self.marker, self.value, self.where = marker, value, where
        self.ids = None
        self.handles = [
            model.register_forward_pre_hook(self._see_ids, with_kwargs=True),
            model.model.layers[layer].register_forward_hook(self._poison),
        ]

    def _see_ids(self, module, args, kwargs):
        self.ids = kwargs["input_ids"]

    def _rows(self):
        return (self.ids == self.marker).any(dim=1).nonzero().flatten().tolist()

    def _poison(self, module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        rows = self._rows()
        if not rows:
            return None
        if self.where == "forward":
            h = h.clone()
            h[rows, 1] = self.value
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        if not h.requires_grad:
            return None

        def backward(g):
            g = g.clone()
            g[rows, 1] = self.value
            return g

        h.register_hook(backward)
        return None

    def remove(self):
        for h in self.handles:
            h.remove()


FAULTY = {"instruction": "Spell zebra.", "output": "z e b r a"}


@pytest.mark.parametrize("where, value", [("forward", float("nan")), ("forward", float("inf")), ("backward", float("inf")),
                                          ("backward", float("nan"))])
def test_non_finite_example_is_failed_with_reason_and_its_batch_mates_are_untouched(tmp_path, tokenizer, where, value):
    model = make_model("llama", len(tokenizer))
    records = MANY[:4] + [FAULTY]
    clean_cfg = config(tmp_path, records, out="clean", batch_size=8)
    engine.run(clean_cfg, loaded=loaded(model, tokenizer))
    clean = load_results(clean_cfg.out)

    marker = tokenizer.convert_tokens_to_ids("z")
    assert all("z" not in r["instruction"] + r["output"] for r in MANY[:4])
    poison = Poison(model, marker, layer=1, where=where, value=value)
    try:
        cfg = config(tmp_path, records, out="faulty", batch_size=8)  # one batch: the fault shares it
        engine.run(cfg, loaded=loaded(model, tokenizer))
    finally:
        poison.remove()
    res = load_results(cfg.out)
    bad = res.examples[res.examples["index"] == 4].iloc[0]
    assert bad["status"] == "failed"
    if where == "forward":  # the loss itself is not finite
        assert bad["reason"].startswith("non-finite loss: ") and pd.isna(bad["loss"])
    else:  # finite loss, non-finite gradient in the layers below the fault
        assert bad["reason"].startswith("non-finite gradient: in ") and "model.layers.1." in bad["reason"]
        assert bad["loss"] == clean.examples[clean.examples["index"] == 4]["loss"].iloc[0]
        assert "model.layers.2." not in bad["reason"]
    assert faults.reason_kind(bad["status"], bad["reason"]) in faults.FAILURE_KINDS
    assert bad["id"] not in set(res.modules["id"]) and bad["id"] not in set(res.ok["id"])  # never averaged
    # the other four: bit for bit the clean run's numbers
    others = clean.examples["index"] != 4
    pd.testing.assert_frame_equal(res.examples[others][["id", "loss"]], clean.examples[others][["id", "loss"]], check_exact=True)
    keep = clean.modules[clean.modules["id"] != bad["id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(res.modules.reset_index(drop=True)[["id", "module"] + METRICS], keep[["id", "module"] + METRICS],
                                  check_exact=True)


def test_finite_guard_ignores_non_finite_padding_and_counts_shared_inputs_once():
    from layergrad.inputs.targets import Target
    from layergrad.measure.guard import FiniteGuard
    from layergrad.measure.sink import Measured

    seen = []

    class Sink:
        def begin(self, mask, *a):
            self.mask = mask

        def accept(self, target, X, D, key):
            seen.append((target.name, X.clone(), D.clone()))

        def finish(self):
            return Measured(modules={"q": "from the sink"})

    inner = Sink()
    guard = FiniteGuard(inner)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    guard.begin(mask, {}, {})
    X = torch.ones(2, 3, 4)
    X[0, 2, 0] = float("nan")  # padding of example 0: cleaned, not blamed
    X[1, 0, 1] = float("inf")  # a real token of example 1
    D = torch.ones(2, 3, 5)
    q, k = (Target(n, None, 0, n, 5, 4, "linear") for n in ("q", "k"))
    guard.accept(q, X, D, ("x",))
    guard.accept(k, X, D, ("x",))
    measured = guard.finish()
    assert measured.faults == {1: ["q", "k"]} and measured.modules == {"q": "from the sink"}
    assert all(torch.isfinite(x).all() and torch.isfinite(d).all() for _, x, d in seen)
    assert torch.equal(seen[0][1][1, 1:], X[1, 1:]) and torch.equal(seen[0][1][0, :2], X[0, :2])  # the rest untouched
    assert torch.isnan(X[0, 2, 0])  # the caller's tensor is not modified
    assert inner.mask is mask  # begin reached the wrapped sink
    assert not hasattr(guard, "mask")  # a plain wrapper: no attribute pass-through
