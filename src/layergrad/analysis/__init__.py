"""Statistics on stored results: curves, MAD, group comparisons, length effects.

Pure functions on arrays and DataFrames: no plotting, no file I/O except reading a run
directory through :func:`layergrad.store.load_results` (:func:`load_group`), and data selection by
scores (:mod:`.selection`, which writes the selected records back in their own format).

May import: numpy, scipy, pandas, :mod:`layergrad.store`, :mod:`layergrad.vocab`; never torch or
the run loop.
"""
from .compare import (
    COMPARE_COLUMNS,
    CORRECTIONS,
    N_PERM,
    Pairing,
    adjust,
    auroc,
    bh_adjust,
    by_adjust,
    compare_arrays,
    compare_groups,
    compare_table,
    overall_table,
    pair_examples,
    pairing_table,
    permutation_pvalues,
    signflip_pvalues,
    superiority,
)
from .curves import CURVE_COLUMNS, DEFAULT_METRICS, N_BOOT, Curves, cosine_table, curve_table, group_curves
from .groups import (
    ANALYSIS_METRICS,
    DERIVED_METRICS,
    AnalysisError,
    Group,
    IncompatibleGroups,
    comparability_problems,
    exclusions,
    group_from_results,
    load_group,
    load_groups,
    require_comparable,
    status_table,
)
from .length import layer_mean, length_points, length_strata, length_table, matched_compare, matched_table, partial_corr, partial_table, summaries
from .mad import MAD_COLUMNS, PAPER_SPLITS, SEGMENTS, mad_of_curve, mad_table, segment_note, segments

__all__ = [
    "AnalysisError", "COMPARE_COLUMNS", "CURVE_COLUMNS", "Curves", "DEFAULT_METRICS", "Group", "IncompatibleGroups",
    "MAD_COLUMNS", "N_BOOT", "N_PERM", "SEGMENTS", "auroc", "bh_adjust", "comparability_problems", "compare_groups",
    "compare_table", "cosine_table", "curve_table", "exclusions", "group_curves", "group_from_results",
    "layer_mean", "length_points", "length_table", "load_group", "load_groups", "mad_of_curve", "mad_table", "partial_corr", "partial_table",
    "permutation_pvalues", "require_comparable", "segments", "status_table",
    "ANALYSIS_METRICS", "CORRECTIONS", "DERIVED_METRICS", "PAPER_SPLITS", "Pairing", "adjust", "by_adjust", "compare_arrays",
    "length_strata", "matched_compare", "matched_table", "overall_table", "pair_examples", "pairing_table", "segment_note",
    "signflip_pvalues", "summaries", "superiority",
]
