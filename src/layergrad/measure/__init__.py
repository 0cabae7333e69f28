"""Capture and measure: hooks that take each measured module's inputs ``X`` and output gradients
``D`` (:mod:`.capture`) and hand them to a sink (:mod:`.sink`, the protocol); the sink that turns
them into per-example statistics (:mod:`.measurer`) and its guard against non-finite values
(:mod:`.guard`); the dense autograd oracle the tests hold them to (:mod:`.oracle`).

May import: :mod:`layergrad.spectra` (the math), :mod:`layergrad.inputs.targets`, torch.
Knows nothing of files, batches on disk or the command line.
"""
from layergrad.measure.measurer import COSINE_PAIRS, Measurer, ModuleResult

__all__ = ["COSINE_PAIRS", "Measurer", "ModuleResult"]
