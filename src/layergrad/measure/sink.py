"""The protocol between the capture hooks and whatever turns ``X`` and ``D`` into statistics.

Per batch: ``begin(mask, consumers, by_layer_role)`` once the forward pass is done (before the
backward), ``accept(target, X, D, x_key)`` for each measured gradient as soon as its output
gradient is complete (during the backward), then ``finish()`` returns what was measured. A sink
keeps only small per-example results; the big tensors are the caller's and are freed after
``accept`` returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass
class Measured:
    """What a sink measured in one batch."""

    modules: dict = field(default_factory=dict)  # target name -> ModuleResult
    cosines: list = field(default_factory=list)  # (kind, name_a, name_b, (n,) cosines)
    faults: dict[int, list[str]] = field(default_factory=dict)  # example row b -> modules whose X or D was not finite
    shares: dict = field(default_factory=dict)  # (layer, role group) -> per example b: (T_b,) float64 <d_t x_t^T, G> summed over the group's modules, or None


class Sink(Protocol):
    def begin(self, mask: Tensor, consumers: dict[tuple, int], by_layer_role: dict) -> None:
        """Start a batch: ``mask`` ``(n, t)`` is 1 at real tokens; ``consumers``: how many targets read each input."""

    def accept(self, target, X: Tensor, D: Tensor, x_key: tuple) -> None:
        """One gradient's factors: ``X`` ``(n, t * calls, i)``, ``D`` ``(n, t * calls, o)``."""

    def finish(self) -> Measured:
        """The batch's results (and faults); the next batch starts with :meth:`begin`."""
