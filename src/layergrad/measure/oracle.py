"""The slow, obviously-correct twin: per-example dense weight gradients by autograd.

One example at a time, the loss of Hugging Face's ``labels`` (prompt tokens set to -100,
shifted by one) computed at the model's precision (HF's own loss casts logits to fp32), a
weight gradient for every measured module, ``torch.linalg.svdvals`` of each. This is what
the paper's code does; tests hold every fast path to it and the benchmark times it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from layergrad.inputs.targets import Target


def example_gradients(model, input_ids: list[int], n_prompt: int, targets: list[Target]) -> tuple[float, dict[str, Tensor]]:
    """Loss and the dense weight gradient ``(out, in)`` of each target for one example."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    labels = ids.clone()
    labels[0, :n_prompt] = -100
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for t in targets:
            t.module.weight.requires_grad_(True)
            t.module.weight.grad = None
        with torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100)
            loss.backward()
        grads = {}
        for t in targets:
            g = t.module.weight.grad.detach().clone()  # a tied weight's .grad sums all its uses
            g = g.T if t.adapter == "conv1d" else g  # as (out, in)
            if t.out_rows is not None:  # a role of a fused weight: its rows
                g = torch.cat([g[a:b] for a, b in t.out_rows], dim=0)
            grads[t.name] = g
        for t in targets:
            t.module.weight.grad = None
        return float(loss.detach()), grads
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def dense_stats(grads: dict[str, Tensor], dtype=torch.float64) -> dict[str, dict[str, float]]:
    """The paper's per-matrix numbers from dense gradients (full SVD): S_*, frobenius, M_*, plus our metrics."""
    from layergrad.spectra.metrics import spectrum_stats

    out = {}
    for name, g in grads.items():
        g = g.to(dtype)
        s = torch.linalg.svdvals(g)
        st = spectrum_stats(s.unsqueeze(0), min(g.shape))
        out[name] = {
            "S_sum": float(s.sum()),
            "S_max": float(s.max()),
            "S_min": float(s.min()),
            "frobenius_norm": float(torch.linalg.norm(g)),
            "M_mean": float(g.mean()),
            "M_max": float(g.max()),
            "M_min": float(g.min()),
            **{k: float(getattr(st, k)[0]) for k in ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank")},
            "svdvals": s,
        }
    return out
