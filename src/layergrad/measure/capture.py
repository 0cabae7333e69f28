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
from typing import Iterable

import torch
from torch import Tensor, nn

from layergrad.errors import LayergradError
from layergrad.inputs.targets import Target
from layergrad.measure.sink import Sink



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


class CaptureError(LayergradError, RuntimeError):
    """A captured tensor cannot be attributed to the batch's examples (never stored as a number)."""


def _embedding_scale(emb: nn.Module):
    """The ``c`` of an input embedding computing ``c * W[ids]`` (Gemma scales by ``sqrt(hidden)``)."""
    c = getattr(emb, "embed_scale", None)
    return 1.0 if c is None else c


class Capture:
    """Context manager: ``with Capture(targets, sink) as cap: loss = f(model); cap.seal(); loss.backward(); cap.finish()``.

    A module called more than once in one forward pass (weight sharing) contributes the sum of
    its calls' gradients, ``sum_c D_c^T X_c``: the calls are concatenated along the token axis.
    A tied output head (``Target.tied``) gets one more call, its input embedding's use: with
    ``E = c * W[ids]`` the embedding's contribution to the weight's gradient is
    ``onehot(ids)^T (c * D_E)``, i.e. a call whose "input" is ``c * D_E`` ``(n, t, h)`` and whose
    "output gradient" is ``onehot(ids)`` ``(n, t, V)`` (zero at the embedding's ``padding_idx``,
    whose row ``nn.Embedding`` never updates).

    :meth:`seal` marks the end of the forward pass. A module run again after it (activation
    checkpointing recomputes a layer inside the backward) is not a new call and is ignored,
    unless it recorded no call in the forward pass (reentrant checkpointing runs the first
    forward without gradients, so only its recomputation can be captured).
    """

    def __init__(self, targets: Iterable[Target], sink: Sink, embeddings: dict[str, nn.Module] | None = None):
        self.targets = list(targets)
        self.sink = sink
        self.embeddings = dict(embeddings or {})  # path -> module, for tied targets
        self._handles: list = []
        self._x: dict[str, list[Tensor]] = defaultdict(list)
        self._versions: dict[str, list[int]] = defaultdict(list)
        self._keys: dict[str, list[int]] = defaultdict(list)
        self._d: dict[str, dict[int, Tensor]] = defaultdict(dict)
        self._tied: dict[str, list] = {}  # name -> [ids (n, t), c * D_E or None]
        self._done: set[str] = set()
        self._sealed = False
        self._sealed_calls: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        try:
            for t in self.targets:
                self._handles.append(t.module.register_forward_hook(self._forward_hook(t)))
                if t.tied is not None:
                    emb = self.embeddings.get(t.tied)
                    if emb is None:
                        raise CaptureError(f"{t.name} is tied to {t.tied}, which was not passed to the capture")
                    if getattr(emb, "max_norm", None) is not None:
                        raise CaptureError(f"{t.tied} renormalises its rows (max_norm): the tied gradient of {t.name} cannot be factored")
                    self._handles.append(emb.register_forward_hook(self._embedding_hook(t, emb)))
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
        self._tied.clear()
        self._done.clear()
        self._sealed = False
        self._sealed_calls = {}

    def seal(self) -> None:
        """The forward pass is over: later calls of a module that already ran are recomputations."""
        self._sealed = True
        self._sealed_calls = {name: len(xs) for name, xs in self._x.items()}

    def _recomputed(self, name: str) -> bool:
        return self._sealed and self._sealed_calls.get(name, 0) > 0

    # -- hooks ----------------------------------------------------------------------------
    def _forward_hook(self, t: Target):
        def hook(module, args, output):
            if not torch.is_grad_enabled() or self._recomputed(t.name):
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

    def _embedding_hook(self, t: Target, emb: nn.Module):
        scale = _embedding_scale(emb)

        def hook(module, args, output):
            if not torch.is_grad_enabled() or (self._sealed and t.name in self._tied):
                return None
            ids = args[0].detach()
            want = module.weight.detach()[ids] * scale
            tol = max(1e-5, 4 * torch.finfo(output.dtype).eps)
            if want.shape != output.shape or not torch.allclose(want.to(output.dtype), output.detach(), rtol=tol, atol=0):
                raise CaptureError(
                    f"{t.tied} is not a plain (scaled) lookup of its weight, so the tied gradient of {t.name} cannot be "
                    "factored; measure the head without --modules lm_head, or untie it"
                )
            self._tied[t.name] = [ids, None]
            if not output.requires_grad:
                output.requires_grad_(True)
            output.register_hook(lambda g, _t=t: self._on_embedding_grad(_t, g * scale))
            return None

        return hook

    def _on_embedding_grad(self, t: Target, g: Tensor) -> None:
        self._tied[t.name][1] = g.detach()
        if self._complete(t):
            self._deliver(t)

    def x_key(self, name: str) -> tuple:
        """Identity of a module's input: modules fed the same tensor (q, k, v) share it."""
        return tuple(self._keys[name])

    def consumers(self) -> dict[tuple, int]:
        """How many captured modules share each input (valid once the forward pass is done)."""
        counts: dict[tuple, int] = defaultdict(int)
        for t in self.targets:
            if t.name in self._x:
                counts[self._key_of(t)] += 1
        return dict(counts)

    def _key_of(self, t: Target) -> tuple:
        key = self.x_key(t.name)
        return key + (("tied", t.tied),) if t.tied is not None else key

    def _complete(self, t: Target) -> bool:
        calls = len(self._d[t.name]) == len(self._x[t.name]) and t.name in self._x
        return calls and (t.tied is None or (t.name in self._tied and self._tied[t.name][1] is not None))

    def _on_grad(self, t: Target, call: int, g: Tensor) -> None:
        g = g.detach()
        if t.out_rows is not None:  # one role of a fused module: its columns of the output gradient
            parts = [g[..., a:b] for a, b in t.out_rows]
            g = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        self._d[t.name][call] = g
        if self._complete(t):
            self._deliver(t)

    def _deliver(self, t: Target) -> None:
        key = self._key_of(t)
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
        if t.tied is not None:
            ids, g_emb = self._tied.pop(t.name, (None, None))
            if ids is not None:
                xs, d = list(xs), list(d)
                xs.append(g_emb if g_emb is not None else xs[0].new_zeros(*ids.shape, xs[0].shape[-1]))
                d.append(self._onehot(t, ids, d[0]))
        X = xs[0] if len(xs) == 1 else torch.cat([x.to(xs[0].dtype) for x in xs], dim=-2)
        D = d[0] if len(d) == 1 else torch.cat([v.to(d[0].dtype) for v in d], dim=-2)
        self._keys.pop(t.name, None)
        self._done.add(t.name)
        self.sink.accept(t, X, D, key)

    def _onehot(self, t: Target, ids: Tensor, like: Tensor) -> Tensor:
        """``onehot(ids)`` ``(n, t, V)``, zero at the embedding's ``padding_idx`` (its row gets no gradient)."""
        oh = torch.zeros(*ids.shape, t.out_features, dtype=like.dtype, device=like.device)
        oh.scatter_(-1, ids.to(like.device).unsqueeze(-1), 1.0)
        pad = getattr(self.embeddings.get(t.tied), "padding_idx", None)
        if pad is not None:
            oh[..., pad] = 0
        return oh

    def finish(self) -> None:
        """After ``backward``: deliver modules whose output received no gradient (``D = 0``)."""
        for t in self.targets:
            if t.name in self._x and t.name not in self._done:
                self._deliver(t)
        missing = [t.name for t in self.targets if t.name not in self._done]
        self.reset()
        if missing:
            raise RuntimeError(f"modules not called in the forward pass: {', '.join(missing[:5])}")
