"""Results on disk: atomic Parquet parts (:mod:`.parts`), the run directory, resume by example id and
:func:`load_results` (:mod:`.run`), the manifest and the keys that make a run's identity
(:mod:`.manifest`), the tables with a comment per column (:mod:`.schema`), one row builder per table
(:mod:`.rows`), per-token gradient shares (``shares-*`` parts), the paper's JSON-lines format (:mod:`.paper`) and shards combined (:mod:`.merge`).

May import: pyarrow, :mod:`layergrad.errors`, :mod:`layergrad.atomic`, :mod:`layergrad.vocab`, and
:mod:`layergrad.inputs` (to list a run's expected examples), :mod:`layergrad.spectra.metrics` (why a
metric is undefined). Never the run loop, the hooks or torch at import time.
"""
from .run import ConfigMismatch, Results, RunStore, load_results, load_shares
from .schema import METRICS, SCHEMA_VERSION

__all__ = ["ConfigMismatch", "Results", "RunStore", "load_results", "load_shares", "METRICS", "SCHEMA_VERSION"]
