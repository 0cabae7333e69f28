"""From a training step's output gradients to each example's own mean-loss gradient, exactly.

A trainer's backward objective is a batch reduction of the token cross-entropies: Hugging Face's
causal-LM loss is ``sum_t ce_t / N`` (``N = num_items_in_batch``, the label tokens of the whole
accumulated batch) or a per-micro-batch mean, then multiplied by the trainer (``1 / accumulation
steps`` for the mean, the world size under ``average_tokens_across_devices``, the fp16 GradScaler's
loss scale). Whatever the chain, the gradient at the logits of a label position is
``alpha * (softmax(z_t) - onehot(y_t))`` with ONE scalar ``alpha`` per micro-batch, and since the
examples of a batch do not interact, example i's output gradient at every module is
``alpha * n_i`` times the gradient of its own mean loss ``L_i = (1 / n_i) sum_{t in R_i} ce_t``
(``n_i`` its label tokens). So ``D_i(own) = D_i(step) / (alpha * n_i)``.

``alpha`` is read off the logits' gradient (a least-squares fit over the label positions, in
float64), so every multiplier the trainer applies is included without guessing it; the fit's
residual must be rounding-sized, else the loss is not a scaled token cross-entropy (label
smoothing, a custom loss) and :class:`RescaleError` is raised.

TRL's ``SFTTrainer`` never forms the logits: its fused LM head returns per-token log-probabilities
``lp_t`` (zero off the label positions) and its loss is ``-sum_t lp_t / N``. Then the backward's
gradient at ``lp_t`` is ``-alpha`` at every label position, the same ``alpha``
(:func:`fit_alpha_logprobs`), and each example's loss is ``-mean`` of its own ``lp_t``
(:func:`own_losses_from_logprobs`). Tensors only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from layergrad.errors import LayergradError

IGNORE = -100  # Hugging Face's ignore_index


class RescaleError(LayergradError, RuntimeError):
    """The training step's loss cannot be rescaled exactly to per-example mean losses."""


def label_positions(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, positions, targets)`` of a causal LM's loss terms: position j predicts label j + 1."""
    shifted = labels[:, 1:]  # (n, t - 1)
    rows, pos = torch.nonzero(shifted != IGNORE, as_tuple=True)
    return rows, pos, shifted[rows, pos]


def label_counts(labels: Tensor) -> Tensor:
    """``(n,)`` loss terms per example (``n_i``), int64."""
    return (labels[:, 1:] != IGNORE).sum(-1).to(torch.long)


def own_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """``(n,)`` float64 mean cross-entropy of each example's label tokens (NaN without any)."""
    rows, pos, tgt = label_positions(labels)
    z = logits.detach()[rows, pos].to(torch.float64)  # (M, V)
    ce = torch.nn.functional.cross_entropy(z, tgt.to(z.device), reduction="none")
    n = labels.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=z.device).index_add(0, rows.to(z.device), ce)
    count = label_counts(labels).to(device=z.device, dtype=torch.float64)
    return (total / count).cpu()


@dataclass(frozen=True)
class Fit:
    alpha: float  # the backward's multiplier of each token's cross-entropy gradient
    residual: float  # ||g - alpha r|| / ||g|| over the label positions


def fit_alpha(grad_logits: Tensor, logits: Tensor, labels: Tensor) -> Fit | None:
    """``alpha`` with ``grad_logits[label positions] = alpha * (softmax - onehot)``; ``None`` without label tokens."""
    rows, pos, tgt = label_positions(labels)
    if rows.numel() == 0:
        return None
    g = grad_logits[rows, pos].to(torch.float64)  # (M, V)
    r = torch.softmax(logits.detach()[rows, pos].to(torch.float64), dim=-1)
    r[torch.arange(len(tgt)), tgt.to(r.device)] -= 1.0
    rr = float((r * r).sum())
    alpha = float((g * r).sum()) / rr
    gg = float((g * g).sum())
    resid = float(((g - alpha * r) ** 2).sum()) ** 0.5 / max(gg ** 0.5, 1e-300)
    # gradients outside the label positions must be zero (no loss term there)
    mask = torch.ones(grad_logits.shape[:2], dtype=torch.bool, device=grad_logits.device)
    mask[rows, pos] = False
    stray = float(grad_logits[mask].to(torch.float64).abs().max()) if bool(mask.any()) else 0.0
    if stray > 0:
        resid = max(resid, stray / max(float(g.abs().max()), 1e-300))
    return Fit(alpha, resid)


def own_losses_from_logprobs(log_probs: Tensor, labels: Tensor) -> Tensor:
    """``(n,)`` float64 mean cross-entropy per example from a fused head's ``(n, t - 1)`` log-probabilities
    (aligned with ``labels[:, 1:]``; NaN without label tokens)."""
    mask = labels[:, 1:] != IGNORE  # (n, t - 1)
    lp = log_probs.detach().to(torch.float64) * mask.to(log_probs.device)
    count = mask.sum(-1).to(device=lp.device, dtype=torch.float64)
    return (-lp.sum(-1) / count).cpu()


def fit_alpha_logprobs(grad_log_probs: Tensor, labels: Tensor) -> Fit | None:
    """``alpha`` with ``grad_log_probs[label positions] = -alpha`` (a fused head's loss ``-sum lp_t / N``).

    Positions off the labels never reach the model (the fused head scatters its values into zeros),
    so only the label positions are read. ``None`` without label tokens."""
    mask = (labels[:, 1:] != IGNORE).to(grad_log_probs.device)  # (n, t - 1)
    if not bool(mask.any()):
        return None
    g = grad_log_probs[mask].to(torch.float64)  # (M,)
    alpha = -float(g.mean())
    resid = float((g + alpha).norm()) / max(float(g.norm()), 1e-300)
    return Fit(alpha, resid)


def tolerance(dtype: torch.dtype) -> float:
    """The largest fit residual accepted for logits of ``dtype`` (rounding-sized)."""
    return max(1e-4, 16 * torch.finfo(dtype).eps)


def check_fit(fit: Fit, dtype: torch.dtype) -> None:
    if not (fit.alpha > 0 and fit.residual <= tolerance(dtype)):
        raise RescaleError(
            f"the trainer's loss gradient at the logits is not a positive multiple of the token cross-entropy's "
            f"(fit alpha={fit.alpha:.6g}, relative residual {fit.residual:.2e} > {tolerance(dtype):.1e}): label smoothing, "
            "a custom compute_loss, loss weights or TRL's loss_type='dft' cannot be rescaled to per-example mean losses exactly; "
            "train with the model's own labels loss, or measure checkpoints with `layergrad run`"
        )


def example_scales(fit: Fit, labels: Tensor) -> Tensor:
    """``(n,)`` float64 factors ``1 / (alpha * n_i)`` (0 for an example without label tokens)."""
    n = label_counts(labels).to(torch.float64)
    s = torch.where(n > 0, 1.0 / (fit.alpha * n.clamp(min=1)), torch.zeros_like(n))
    return s
