"""The per-example loss, defined in one place.

For example ``e`` with tokens ``x_0..x_{T-1}`` and response positions ``R_e`` (its response mask),
the loss is the mean cross-entropy (natural log) of its response tokens given everything before them:

    L_e = (1 / |R_e|) * sum_{j in R_e} -log p(x_j | x_<j),   R_e a subset of {1, ..., T-1}

the usual supervised fine-tuning loss, identical to Hugging Face's ``labels`` loss with every
non-response token set to -100. With one response after ``P`` prompt tokens (Alpaca, the last chat
turn) ``R_e = {j : max(P, 1) <= j < T}``; under ``--turns all`` it is the tokens of every assistant
turn; for plain text every position ``j >= 1`` (:class:`~layergrad.inputs.prompting.Encoded`'s
``loss_spans``). Only the loss is masked: every real token is in the forward pass, so the factors
``X`` and ``D`` of the gradients run over all of them. A batch's objective is ``sum_e L_e`` (a sum,
not a mean), so each example's output gradients are exactly those a batch of one would give.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: The name of this definition, recorded in every run's manifest (part of its identity).
LOSS_RULE = "mean-ce-response-tokens/v1"


def loss_positions(lengths: list[int], n_prompt: list[int], spans: list | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """For the loss terms of a padded batch: ``(rows, predicting positions j-1, target positions j)``.

    Example ``r``'s terms are ``max(n_prompt[r], 1) <= j < lengths[r]`` (one response at the end),
    or, when ``spans`` is given, the positions ``j`` in its spans ``[a, b)`` with ``1 <= j < lengths[r]``.
    """
    rows, pos = [], []
    for r, (T, P) in enumerate(zip(lengths, n_prompt)):
        if spans is None or spans[r] is None:
            js = range(max(P, 1), T)
        else:
            js = [j for a, b in spans[r] for j in range(max(a, 1), min(b, T))]
        rows.extend([r] * len(js))
        pos.extend(js)
    rows_t = torch.tensor(rows, dtype=torch.long)
    tgt = torch.tensor(pos, dtype=torch.long)
    return rows_t, tgt - 1, tgt


def per_example_loss(logits: Tensor, targets: Tensor, rows: Tensor, n: int) -> Tensor:
    """Mean cross-entropy per example, ``(n,)``, from gathered logits ``(N, V)``; fp32 at least."""
    nll = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="none")  # (N,)
    total = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    count = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, rows, torch.ones_like(nll))
    return total / count
