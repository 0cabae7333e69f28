"""Logits only where they are loss terms: the output head sees the rows ``(rows, pos)`` alone.

The vocabulary projection is a large part of a small model's work, and the other positions'
logits never reach the loss. :class:`GatherIndex` holds the positions of the pass under way;
:meth:`GatherIndex.hooked` puts a forward pre-hook on the model's output embedding that replaces
its input ``(n, t, h)`` by ``(1, N, h)``. It is off whenever the head itself is measured (its
gradient needs its input at every position).
"""
from __future__ import annotations

import contextlib

from torch import Tensor


class GatherIndex:
    """The ``(rows, pos)`` ``(N,), (N,)`` of the pass under way, or none (the head sees every position)."""

    def __init__(self) -> None:
        self.rows: Tensor | None = None
        self.pos: Tensor | None = None

    @contextlib.contextmanager
    def at(self, rows: Tensor, pos: Tensor):
        """Gather at ``(rows, pos)`` during the ``with`` block."""
        self.rows, self.pos = rows, pos
        try:
            yield self
        finally:
            self.rows = self.pos = None

    def _pre_hook(self, module, args):
        h = args[0]
        if h.dim() == 3 and self.rows is not None:
            return (h[self.rows.to(h.device), self.pos.to(h.device)].unsqueeze(0),) + tuple(args[1:])
        return None

    @contextlib.contextmanager
    def hooked(self, model):
        """The pre-hook on ``model.get_output_embeddings()`` for the ``with`` block (nothing if it has none)."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            yield False
            return
        handle = head.register_forward_pre_hook(self._pre_hook)
        try:
            yield True
        finally:
            handle.remove()


def logits_at(logits: Tensor, shape: tuple, rows: Tensor, pos: Tensor) -> Tensor:
    """``(N, V)`` logits of the loss terms, whether the model's head was gathered (``(1, N, V)``) or
    not (``(n, t, V)`` for input ids of ``shape``: the model bypassed the hook, or there is none)."""
    if tuple(logits.shape[:2]) == tuple(shape):
        return logits[rows.to(logits.device), pos.to(logits.device)]
    return logits.reshape(-1, logits.shape[-1])
