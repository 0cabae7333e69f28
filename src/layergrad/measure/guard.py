"""A sink in front of another that keeps one example's non-finite values from costing the others
their results (see :class:`FiniteGuard`)."""
from __future__ import annotations

import torch
from torch import Tensor

from layergrad.measure.sink import Measured


class FiniteGuard:
    """A capture sink in front of another (the :class:`~layergrad.measure.Measurer`).

    Per batch, ``nonfinite`` maps an example's row ``b`` to the modules whose ``X`` or ``D`` held a
    non-finite value at one of its real tokens (``mask`` from :meth:`begin`). Non-finite values
    are replaced by zeros in a copy before the sink sees them; values at padding tokens are
    cleaned without blaming the example. :meth:`finish` returns the wrapped sink's results with
    these faults (a :class:`~layergrad.measure.sink.Sink` itself).

    Cost when nothing is wrong: one reduction over ``X`` (once per shared input) and ``D``.
    """

    def __init__(self, sink):
        self.sink = sink
        self.nonfinite: dict[int, list[str]] = {}
        self._mask: Tensor | None = None
        self._cleaned: dict = {}

    def begin(self, mask: Tensor, consumers: dict, by_layer_role: dict) -> None:
        self.nonfinite = {}
        self._mask = mask
        self._cleaned = {}
        self.sink.begin(mask, consumers, by_layer_role)

    def finish(self) -> Measured:
        measured = self.sink.finish()
        measured.faults = {b: list(names) for b, names in self.nonfinite.items()}
        return measured

    def accept(self, target, X: Tensor, D: Tensor, x_key=None) -> None:
        key = x_key if x_key is not None else id(X)
        if key not in self._cleaned:
            self._cleaned[key] = self._clean(X, target.name)
        else:  # a shared input (q, k, v): checked once, blamed on every module that reads it
            for b in self._cleaned[key][1]:
                self.nonfinite.setdefault(b, []).append(target.name)
        X = self._cleaned[key][0]
        D, _ = self._clean(D, target.name)
        self.sink.accept(target, X, D, x_key)

    def _clean(self, A: Tensor, name: str) -> tuple[Tensor, list[int]]:
        """``A`` ``(n, t, f)`` with non-finite values zeroed, and the rows blamed for them."""
        sums = A.sum(dim=(-2, -1), dtype=torch.promote_types(A.dtype, torch.float32))  # (n,)
        rows = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
        if not rows:
            return A, []
        A = A.clone()
        blamed = []
        for b in rows:
            bad = ~torch.isfinite(A[b])  # (t, f)
            if not bad.any():  # the sum overflowed, the values did not
                continue
            real = self._real_tokens(b, A.shape[-2], A.device)
            if (bad.any(dim=-1) & real).any():
                blamed.append(b)
                self.nonfinite.setdefault(b, []).append(name)
            A[b] = torch.where(bad, torch.zeros((), dtype=A.dtype, device=A.device), A[b])
        return A, blamed

    def _real_tokens(self, b: int, t: int, device) -> Tensor:
        if self._mask is None:
            return torch.ones(t, dtype=torch.bool, device=device)
        m = self._mask[b].to(device=device, dtype=torch.bool)
        return m.repeat(t // m.shape[-1]) if t != m.shape[-1] else m  # a module called several times
