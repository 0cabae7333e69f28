"""Reliability: out of memory: split and retry down to one example; one that does not fit alone fails."""
from __future__ import annotations


import pandas as pd
import pytest
import torch

from conftest import make_model
from layergrad.run import engine
from layergrad.run import faults
from layergrad.store import load_results
from helpers import MANY, METRICS, config, loaded


class FakeMemory:
    """Raises ``torch.OutOfMemoryError`` when a batch holds more than ``limit`` padded tokens,
    in the forward pass or in the backward pass (from a tensor hook, mid-backward)."""

    def __init__(self, model, limit: int, where: str):
        self.limit, self.where, self.raised = limit, where, 0
        self.handles = [model.model.layers[1].register_forward_hook(self._hook)]

    def _oom(self, tokens):
        self.raised += 1
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tokens} tokens (simulated)")

    def _hook(self, module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        tokens = h.shape[0] * h.shape[1]
        if tokens <= self.limit:
            return None
        if self.where == "forward":
            self._oom(tokens)
        if not h.requires_grad:  # a no-grad forward (IFD): nothing to interrupt in a backward
            return None

        def backward(g):
            self._oom(tokens)

        h.register_hook(backward)
        return None

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_splits_batches_and_fails_only_what_does_not_fit_alone(tmp_path, tokenizer, where, capsys):
    model = make_model("llama", len(tokenizer))
    records = MANY[:6] + [{"instruction": "What is 12 plus 30? " * 8, "output": "The answer is 42."}]
    one_cfg = config(tmp_path, records, out="one", batch_size=1, modules="attn")
    engine.run(one_cfg, loaded=loaded(model, tokenizer))
    one = load_results(one_cfg.out)
    lengths = sorted(one.examples["n_tokens"])
    limit = lengths[-2] * 2  # two examples fit, no more; the longest never fits
    assert lengths[-1] > limit

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    oom = FakeMemory(model, limit, where)
    try:
        cfg = config(tmp_path, records, out="split", batch_size=8, max_batch_tokens=10_000, modules="attn", ifd=where == "backward")
        s = engine.run(cfg, loaded=loaded(model, tokenizer))
    finally:
        oom.remove()
    assert oom.raised >= 3
    res = load_results(cfg.out)
    failed = res.examples[res.examples["status"] == "failed"]
    assert len(failed) == 1 and s.status_counts == {"ok": 6, "failed": 1}
    assert failed["reason"].iloc[0] == f"out of memory: does not fit alone ({lengths[-1]} tokens)"
    assert failed["n_tokens"].iloc[0] == lengths[-1] and failed["index"].iloc[0] == 6
    if cfg.ifd:  # a failed example has no IFD, and says why; the others keep theirs
        assert "out of memory" in failed["ifd_reason"].iloc[0] and res.ok["ifd"].notna().all()
    assert "splitting it" in capsys.readouterr().err
    # every other example: the numbers of a run one example at a time (padding changes nothing)
    ok_one = one.examples[one.examples["index"] != 6]
    pd.testing.assert_frame_equal(res.ok[["id", "loss"]].reset_index(drop=True), ok_one[["id", "loss"]].reset_index(drop=True),
                                  check_exact=False, rtol=1e-12)
    mods_one = one.modules[one.modules["id"].isin(res.ok["id"])].reset_index(drop=True)
    # float32 statistics: the Gram path, whose singular values are exact to ~1e-8 * s_1 and not thresholded,
    # so the values that are zero in exact arithmetic are ~1e-8 * s_1 noise that the batch shape reshuffles
    # (up to 8e-9 of the nuclear norm here); the loss above stays equal to 1e-12
    ratios = [m for m in METRICS if m != "min_sigma"]
    pd.testing.assert_frame_equal(res.modules[["id", "module"] + ratios].reset_index(drop=True), mods_one[["id", "module"] + ratios],
                                  check_exact=False, rtol=1e-7, atol=1e-12)
    # min_sigma may itself be ~1e-8 * s_1 (a value zero in exact arithmetic): held to the spectrum's scale
    got, want = res.modules["min_sigma"].to_numpy(), mods_one["min_sigma"].to_numpy()
    assert (abs(got - want) <= 1e-7 * mods_one["spectral"].to_numpy()).all()
    # the model is left as found, whatever was interrupted
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_backoff_learns_the_limit_keeps_order_and_passes_bugs_through():
    calls = []

    def compute(part):
        calls.append(tuple(part))
        if len(part) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if 7 in part:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (simulated)")
        return list(part)

    b = faults.Backoff()
    cost = lambda part: 10 * len(part)  # noqa: E731
    fail = lambda item, reason: (item, reason)  # noqa: E731
    assert b.run([0, 1, 2, 3, 4, 5, 6, 7], compute, fail, cost) == [[0, 1], [2, 3], [4, 5], [6], (7, "linear algebra failure: linalg.svd: The algorithm failed to converge (simulated)")]
    assert b.limit == 40
    calls.clear()
    assert b.run([8, 9, 10, 11], compute, fail, cost) == [[8, 9], [10, 11]]
    assert calls == [(8, 9), (10, 11)]  # split before trying: no second out-of-memory error

    def buggy(part):
        raise ValueError("a bug, not a fault")

    with pytest.raises(ValueError, match="a bug"):
        b.run([1, 2], buggy, fail, cost)
    assert faults.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not faults.is_out_of_memory(RuntimeError("shape mismatch"))
