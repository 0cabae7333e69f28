"""Hooks that hand each measured module's ``X`` and ``D`` to a sink, and leave no trace.

``X`` (``(n, t, i)``: the module's inputs) is kept from the forward pass; ``D`` (``(n, t, o)``:
the loss gradients at its outputs) is taken in the backward pass by a tensor hook on the
forward output (not ``register_full_backward_hook``, which breaks on in-place operations on
views, pytorch/pytorch#61519). As soon as a module's ``D`` is complete the sink is called and
the capture drops both tensors.

No weight gradient is ever needed: under :func:`activation_only_backward` every parameter has
``requires_grad=False``, and a measured module's output that does not already require a
gradient (the first modules after the embedding) is made a leaf that does, so the backward
pass carries activation gradients only and stops at the earliest measured module.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .modules import Target

#: sink(target, X, D, x_key): X (n, t', i), D (n, t', o); t' = t * calls when a module ran more than once.
Sink = Callable[[Target, Tensor, Tensor, tuple], None]


@contextlib.contextmanager
def activation_only_backward(model: nn.Module):
    """Turn off ``requires_grad`` on every parameter; restore the user's flags on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Capture:
    """Context manager: ``with Capture(targets, sink) as cap: loss = f(model); loss.backward(); cap.finish()``.

    A module called more than once in one forward pass (weight sharing) contributes the sum of
    its calls' gradients, ``sum_c D_c^T X_c``: the calls are concatenated along the token axis.
    """

    def __init__(self, targets: Iterable[Target], sink: Sink):
        self.targets = list(targets)
        self.sink = sink
        self._handles: list = []
        self._x: dict[str, list[Tensor]] = defaultdict(list)
        self._versions: dict[str, list[int]] = defaultdict(list)
        self._keys: dict[str, list[int]] = defaultdict(list)
        self._d: dict[str, dict[int, Tensor]] = defaultdict(dict)
        self._done: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        try:
            for t in self.targets:
                self._handles.append(t.module.register_forward_hook(self._forward_hook(t)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.reset()

    def reset(self) -> None:
        """Drop every captured tensor (between batches, or after an error)."""
        self._x.clear()
        self._versions.clear()
        self._keys.clear()
        self._d.clear()
        self._done.clear()

    # -- hooks ----------------------------------------------------------------------------
    def _forward_hook(self, t: Target):
        def hook(module, args, output):
            if not torch.is_grad_enabled():
                return None
            x = args[0].detach()
            self._x[t.name].append(x)
            self._versions[t.name].append(x._version)
            # Same storage, shape and strides = the same input (q, k, v). Our reference keeps
            # the storage alive, so no other tensor can take its address during the batch.
            self._keys[t.name].append((x.data_ptr(), tuple(x.shape), tuple(x.stride())))
            if not output.requires_grad:
                output.requires_grad_(True)  # a leaf: backward stops here, no weight gradient
            call = len(self._x[t.name]) - 1
            output.register_hook(lambda g, _t=t, _c=call: self._on_grad(_t, _c, g))
            return None

        return hook

    def x_key(self, name: str) -> tuple:
        """Identity of a module's input: modules fed the same tensor (q, k, v) share it."""
        return tuple(self._keys[name])

    def consumers(self) -> dict[tuple, int]:
        """How many captured modules share each input (valid once the forward pass is done)."""
        counts: dict[tuple, int] = defaultdict(int)
        for name in self._x:
            counts[self.x_key(name)] += 1
        return dict(counts)

    def _on_grad(self, t: Target, call: int, g: Tensor) -> None:
        self._d[t.name][call] = g.detach()
        if len(self._d[t.name]) == len(self._x[t.name]):
            self._deliver(t)

    def _deliver(self, t: Target) -> None:
        xs = self._x.pop(t.name)
        versions = self._versions.pop(t.name)
        for x, v in zip(xs, versions):
            if x._version != v:
                raise RuntimeError(
                    f"the input of {t.name} was modified in place after the module ran; "
                    "its gradient cannot be measured from the captured input"
                )
        ds = self._d.pop(t.name)
        d = [ds.get(c) if ds.get(c) is not None else xs[c].new_zeros(*xs[c].shape[:-1], t.out_features) for c in range(len(xs))]
        X = xs[0] if len(xs) == 1 else torch.cat(xs, dim=-2)
        D = d[0] if len(d) == 1 else torch.cat(d, dim=-2)
        key = tuple(self._keys.pop(t.name))
        self._done.add(t.name)
        self.sink(t, X, D, key)

    def finish(self) -> None:
        """After ``backward``: deliver modules whose output received no gradient (``D = 0``)."""
        for t in self.targets:
            if t.name in self._x and t.name not in self._done:
                self._deliver(t)
        missing = [t.name for t in self.targets if t.name not in self._done]
        self.reset()
        if missing:
            raise RuntimeError(f"modules not called in the forward pass: {', '.join(missing[:5])}")
