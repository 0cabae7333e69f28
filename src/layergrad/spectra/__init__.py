"""The math, tensors only: singular values of per-example gradients ``G = D^T X`` from their
factors (:mod:`.svd`: the QR core, the float64 Gram sides, the dense oracle; :mod:`.batched`: the
Gram sides for a padded batch, many eigenproblems in one solver call), the registry of those
ways with their cost functions (:mod:`.methods`), the metrics of a spectrum (:mod:`.metrics`), and
entries, inner products and cosines of gradients from factors (:mod:`.products`).

May import: torch and :mod:`layergrad.vocab` (and, lazily, CuPy: the optional extra `layergrad[gpu]`). No ``nn.Module``, no hooks, no file I/O.
``layergrad.spectra`` re-exports every name of its submodules.
"""
from layergrad.spectra.batched import *  # noqa: F401,F403
from layergrad.spectra.methods import *  # noqa: F401,F403
from layergrad.spectra.methods import CHOL_COST, EIG_COST, QR_SLOWDOWN, SVD_COST, WAYS  # noqa: F401
from layergrad.spectra.metrics import *  # noqa: F401,F403
from layergrad.spectra.metrics import METRIC_NAMES, ZERO_GRADIENT  # noqa: F401
from layergrad.spectra.products import *  # noqa: F401,F403
from layergrad.spectra.svd import *  # noqa: F401,F403
from layergrad.spectra.svd import GRAM_DTYPE, GRAM_SIDES, SYMMETRIC_SPLIT  # noqa: F401
