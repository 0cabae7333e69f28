"""Results on disk: Parquet parts, a manifest, resume by example id."""
from .run import ConfigMismatch, Results, RunStore, load_results
from .schema import METRICS, SCHEMA_VERSION

__all__ = ["ConfigMismatch", "Results", "RunStore", "load_results", "METRICS", "SCHEMA_VERSION"]
