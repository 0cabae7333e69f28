"""Live curves: compact summaries of a recorded step's rows, added to the Trainer's logs.

At each recorded step :class:`~layergrad.integrations.trainer.LayerGradCallback` adds, for every
metric of ``log_metrics`` (default :data:`DEFAULT_LOG_METRICS`), role and third of the depth,

    ``layergrad/<metric>/<role>/<third>`` = mean over the step's examples and the third's layers

(an example contributes one value per measured layer of the third, so the mean over cells equals
the mean over examples of each example's mean over the third's layers), plus ``layergrad/loss``
(the mean of the examples' own mean response-token losses) and ``layergrad/examples``. Thirds are
:func:`layergrad.store.rows.depth_thirds` (``np.array_split``), as everywhere in the analysis.

Under torchrun the sums and counts are summed over the ranks (one ``all_reduce``), so rank 0, the
one that reports, logs the mean over every rank's examples.

The Trainer hands its log dict to the callbacks in their order and ``report_to``'s reporters come
first; :func:`put_first` moves the callback to the front so that every reporter sees the summaries.
Plumbing only: the numbers are those of the stored rows.
"""
from __future__ import annotations

import gc
import math

import torch

PREFIX = "layergrad"
DEFAULT_LOG_METRICS = ("nuclear", "effective_rank")
LOGGABLE = ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank")


def summary_keys(metrics, roles, thirds) -> list[str]:
    """The fixed key order (the same on every rank): metric, role, third; then loss and examples."""
    return [f"{PREFIX}/{m}/{r}/{t}" for m in metrics for r in roles for t in thirds] + [f"{PREFIX}/loss"]


def sums_and_counts(keys: list[str], ex_rows: list[dict], mod_rows: list[dict], thirds: dict[int, str]) -> torch.Tensor:
    """``(2, K + 1)`` float64: per key the sum and the number of finite values; last column ``examples``."""
    index = {k: j for j, k in enumerate(keys)}
    out = torch.zeros(2, len(keys) + 1, dtype=torch.float64)
    ok = {r["id"] for r in ex_rows if r["status"] == "ok"}
    for r in mod_rows:
        if r["id"] not in ok:
            continue
        for key in (k for k in keys[:-1] if k.endswith(f"/{r['role']}/{thirds.get(r['layer'], '-')}")):
            v = r.get(key.split("/")[1])
            if v is not None and math.isfinite(v):
                out[0, index[key]] += v
                out[1, index[key]] += 1
    for r in ex_rows:
        if r["status"] == "ok" and r["loss"] is not None and math.isfinite(r["loss"]):
            out[0, -2] += r["loss"]
            out[1, -2] += 1
    out[0, -1] = out[1, -1] = len(ok)
    return out


def summaries(keys: list[str], totals: torch.Tensor) -> dict[str, float]:
    """Means from :func:`sums_and_counts` (summed over ranks); keys without a value are left out."""
    logs = {k: float(totals[0, j] / totals[1, j]) for j, k in enumerate(keys) if totals[1, j] > 0}
    logs[f"{PREFIX}/examples"] = float(totals[0, -1])
    return logs


def all_ranks(totals: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of a torchrun job (gloo or NCCL); unchanged in a plain process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return totals
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = totals.to(device)
    dist.all_reduce(t)
    return t.cpu()


def put_first(callback) -> bool:
    """Move ``callback`` to the front of the Trainer's callback list; ``False`` if that list is not found.

    The Trainer keeps no public way to order callbacks and passes no handle to them, so the list is
    found as the one list that holds ``callback`` among other ``TrainerCallback`` items. Called from
    the callback's own ``on_train_begin``, while the handler iterates that list and stands at the
    callback: moving it from there to the front shifts only the items before it, so the iteration
    goes on with the same next item and the event in progress still reaches every callback once.
    """
    from transformers import TrainerCallback

    for ref in gc.get_referrers(callback):
        if isinstance(ref, list) and len(ref) > 1 and all(isinstance(c, TrainerCallback) for c in ref):
            if ref[0] is not callback:
                ref.remove(callback)
                ref.insert(0, callback)
            return True
    return False
