"""Integrations with training loops: :class:`LayerGradCallback` for ``transformers.Trainer`` and
TRL's ``SFTTrainer`` (:mod:`.trainer`), on the exact rescaling of a training step's output gradients
to each example's own mean-loss gradient (:mod:`.rescale`), with live summaries for the trainer's logs
(:mod:`.live`).

May import: :mod:`layergrad.inputs`, :mod:`layergrad.measure`, :mod:`layergrad.run`,
:mod:`layergrad.store`, torch and transformers.
"""
from __future__ import annotations

__all__ = ["LayerGradCallback"]


def __getattr__(name: str):
    if name == "LayerGradCallback":
        from layergrad.integrations.trainer import LayerGradCallback

        return LayerGradCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
