"""Results on disk: Parquet parts, a manifest, resume by example id."""
from .run import ConfigMismatch, Results, RunStore, load_results, load_shares
from .schema import METRICS, SCHEMA_VERSION

__all__ = ["ConfigMismatch", "Results", "RunStore", "load_results", "load_shares", "METRICS", "SCHEMA_VERSION"]
