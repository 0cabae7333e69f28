"""Statistics on stored results: curves, MAD and evenness, the design of a comparison (units, pairing),
the pre-specified primary analysis (overall and at equal length), cell comparisons with max-T, verdict
rules, length tables, scores, selection and the quality study.

Pure functions on arrays and DataFrames: no plotting, no file I/O except reading a run
directory through :func:`layergrad.store.load_results` (:func:`load_group`), and data selection by
scores (:mod:`.selection`, which writes the selected records back in their own format).

May import: numpy, scipy, statsmodels, pandas, :mod:`layergrad.store`, :mod:`layergrad.vocab`; never torch or
the run loop.
"""
from .compare import COMPARE_COLUMNS, CORRECTIONS, auroc, bh_adjust, by_adjust, compare_arrays, compare_groups, compare_table, superiority
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
from .design import DESIGN_COLUMNS, Design, design, design_table
from .evenness import EVENNESS_COLUMNS, evenness_compare_table, evenness_table, roughness
from .length import layer_mean, length_points, length_table, partial_corr, partial_table
from .multiplicity import N_PERM, holm, maxt, min_attainable_p
from .primary import HEADLINE, PRIMARY_COLUMNS, primary_table
from .verdicts import RULES as VERDICT_RULES
from .verdicts import verdict
from .mad import MAD_COLUMNS, PAPER_SPLITS, SEGMENTS, mad_of_curve, mad_table, segment_note, segments

__all__ = [
    "ANALYSIS_METRICS", "AnalysisError", "COMPARE_COLUMNS", "CORRECTIONS", "CURVE_COLUMNS", "Curves", "DEFAULT_METRICS", "DERIVED_METRICS",
    "DESIGN_COLUMNS", "Design", "EVENNESS_COLUMNS", "Group", "HEADLINE", "IncompatibleGroups", "MAD_COLUMNS", "N_BOOT", "N_PERM",
    "PAPER_SPLITS", "PRIMARY_COLUMNS", "SEGMENTS", "VERDICT_RULES", "auroc", "bh_adjust", "by_adjust", "comparability_problems",
    "compare_arrays", "compare_groups", "compare_table", "cosine_table", "curve_table", "design", "design_table",
    "evenness_compare_table", "evenness_table", "exclusions", "group_curves", "group_from_results", "holm", "layer_mean",
    "length_points", "length_table", "load_group", "load_groups", "mad_of_curve", "mad_table", "maxt", "min_attainable_p",
    "partial_corr", "partial_table", "primary_table", "require_comparable", "roughness", "segment_note", "segments", "status_table",
    "superiority", "verdict",
]
