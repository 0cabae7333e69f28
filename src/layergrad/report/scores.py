"""The report's Scores panel: data-quality scores beside the gradient spectra, all groups together.

The tables come from :mod:`layergrad.analysis.selection` (``score_table``) and :mod:`layergrad.analysis.scores`
(summary, Spearman, high/low split); this module only assembles the report's runs into one
:class:`~layergrad.store.run.Results` and shapes the tables the figures are drawn from:

    scores.csv                  one row per ok example: id, group, ..., one column per score
    scores_summary.csv|md|tex   per group and score: n, NaNs, mean, sd, min, quartiles, max (the boxes)
    scores_spearman.csv|md|tex  score_a, score_b, rho, n: Spearman over the ok examples of all groups
    split_summary.csv|md|tex    per half and group: examples and the range of the split score
    split_ids.csv               half, rank, id, group, score: which examples are in each half
    split_curves.csv|md|tex     split_by, half, role, layer, metric, mean, ci_low, ci_high, n

Scores: IFD (``ifd``, ``ifd_ppl``, ``loss_no_prompt``) only when a run was made with ``--ifd``;
``loss`` and ``n_response_tokens``; ``nuclear`` and ``effective_rank`` averaged over the attn and
the mlp modules of every layer (``:all:`` when the runs measured neither group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.analysis.curves import curve_table
from layergrad.analysis.groups import AnalysisError, Group, group_from_results
from layergrad.analysis.scores import score_summary, spearman_matrix, split_ids, subset
from layergrad.analysis.selection import MetricError, default_metrics, parse_metric, score_table
from layergrad.store.run import Results, load_results

MIN_EXAMPLES = 4  # fewer ok examples in all: no panel (a Spearman of 3 points says nothing)
IFD_COLUMNS = ["ifd", "ifd_ppl", "loss_no_prompt"]
BASE_COLUMNS = ["loss", "n_response_tokens"]
SPECTRAL = ("nuclear", "effective_rank")  # the spectral scores of the panel and the split curves
SPEARMAN_COLUMNS = ["score_a", "score_b", "rho", "n"]
SPLIT_SUMMARY_COLUMNS = ["split_by", "half", "group", "n", "min", "median", "max"]
SPLIT_IDS_COLUMNS = ["half", "rank", "id", "group", "score"]


@dataclass
class ScorePanel:
    has_ifd: bool
    by: str  # canonical name of the split score
    fraction: float
    columns: list[str]  # the panel's scores, display order
    tables: dict[str, pd.DataFrame]  # name -> table (see the module docstring)
    halves: list[Group] = field(default_factory=list)  # [high, low]; empty when no split was possible
    split_problem: str = ""  # why there is no split


def check_split(split_by: str | None, fraction: float) -> None:
    """Validate the split options before any work (clear message for ``--split-by``/``--split-fraction``)."""
    if not 0 < fraction <= 0.5:
        raise AnalysisError(f"--split-fraction {fraction}: must be in (0, 0.5] so the high and low parts do not overlap (0.5: halves)")
    if split_by is not None:
        try:
            parse_metric(split_by)
        except MetricError as e:
            raise AnalysisError(f"--split-by: {e}") from None


def combine_runs(per_run: list[tuple[Path, list[Group]]]) -> tuple[Results, list[str]]:
    """The ok examples of every run as one Results; ``group`` is the report's label of each example.

    Ids that occur in two runs (the same data run twice, e.g. in two prompt modes) are made unique
    as ``group/id``, with a note. ``order`` is renumbered: run order, then each run's own order.
    """
    exs, mods, manifests, notes = [], [], [], []
    first = None
    for path, groups in per_run:
        res = load_results(path)
        first = first or res
        manifests.append(res.manifest)
        label_of = {i: g.label for g in groups for i in g.ids}
        exs.append(res.examples[res.examples["id"].isin(label_of)].assign(group=lambda d, m=label_of: d["id"].map(m)))
        mods.append(res.modules[res.modules["id"].isin(label_of)])
    ids = pd.concat([e["id"] for e in exs])
    if ids.duplicated().any():
        notes.append(f"scores: {int(ids.duplicated().sum())} example ids occur in more than one run; in the score tables "
                     "every id is written as group/id")
        for k, (e, m) in enumerate(zip(exs, mods)):
            new = dict(zip(e["id"], e["group"] + "/" + e["id"]))
            exs[k], mods[k] = e.assign(id=e["id"].map(new)), m.assign(id=m["id"].map(new))
    examples = pd.concat(exs, ignore_index=True)
    examples["order"] = np.arange(len(examples))
    manifest = dict(manifests[0])
    manifest["data"] = list(dict.fromkeys(str(d) for m in manifests for d in (m.get("data") or [])))
    manifest["ifd"] = any(bool(m.get("ifd")) for m in manifests)
    models = list(dict.fromkeys(str(m.get("model")) for m in manifests))
    if len(models) > 1:
        manifest["model"] = " + ".join(models)
        manifest.pop("model_path", None)
    return Results(manifest, examples, pd.concat(mods, ignore_index=True), first.cosine.iloc[:0], first.path), notes


def _has_ifd(results: Results) -> bool:
    ex = results.examples
    return "ifd" in ex.columns and (bool(results.manifest.get("ifd")) or bool(ex["ifd"].notna().any()))


def panel_columns(results: Results) -> tuple[list[str], bool]:
    """The panel's scores for ``results`` and whether IFD is among them."""
    has_ifd = _has_ifd(results)
    stored = [m.name for m in default_metrics(results)]
    spectral = [f"{s}:{r}:mean" for s in SPECTRAL for r in ("attn", "mlp") if f"{s}:{r}:mean" in stored]
    if not spectral:
        spectral = [f"{s}:all:mean" for s in SPECTRAL if f"{s}:all:mean" in stored]
    base = [c for c in BASE_COLUMNS if c in results.examples.columns]
    return (IFD_COLUMNS if has_ifd else []) + base + spectral, has_ifd


def score_panel(per_run, *, split_by: str | None = None, fraction: float = 0.5, n_boot: int, seed: int) -> tuple[ScorePanel | None, list[str]]:
    """The panel for the report's runs (``[(run_dir, its groups)]``), or ``None`` and a note why not."""
    n_ok = sum(g.n for _, groups in per_run for g in groups)
    if n_ok < MIN_EXAMPLES:
        return None, [f"scores panel left out: {n_ok} ok example(s) in all, at least {MIN_EXAMPLES} needed"]
    results, notes = combine_runs(per_run)
    columns, has_ifd = panel_columns(results)
    by = parse_metric(split_by or ("ifd" if has_ifd else "loss")).name
    try:
        table = score_table(results, list(dict.fromkeys(columns + [by])))
    except MetricError as e:
        raise AnalysisError(f"scores panel: {e}") from None
    table = table.drop(columns=["ifd_reason"], errors="ignore")
    if has_ifd:
        for g in dict.fromkeys(table["group"]):
            if table.loc[table["group"] == g, "ifd"].isna().all():
                notes.append(f"scores: group {g!r} has no IFD values (its run was made without --ifd, or IFD is undefined for all its examples)")

    rho, n = spearman_matrix(table, columns)
    spearman = pd.DataFrame([(a, b, rho.loc[a, b], int(n.loc[a, b])) for a in columns for b in columns], columns=SPEARMAN_COLUMNS)
    t = {"scores": table, "scores_summary": score_summary(table, columns), "scores_spearman": spearman}
    panel = ScorePanel(has_ifd, by, fraction, columns, t)

    high, low = split(table, by, fraction)
    if not high:
        panel.split_problem = (f"No {by} split: {int(np.isfinite(pd.to_numeric(table[by], errors='coerce')).sum())} example(s) "
                               f"have a finite {by}, too few for a top and bottom {100 * fraction:g}%")
    else:
        panel.halves = [group_from_results(f"high {by}", subset(results, high)), group_from_results(f"low {by}", subset(results, low))]
        metrics = [m for m in SPECTRAL if all(h.available(m) for h in panel.halves)]
        curves = curve_table(panel.halves, metrics, n_boot=n_boot, seed=seed)
        curves = curves.rename(columns={"group": "half"})
        curves.insert(0, "split_by", by)
        t["split_curves"] = curves
        notes += [n for h in panel.halves for n in h.notes]
        t["split_summary"], t["split_ids"] = _split_tables(table, by, {panel.halves[0].label: high, panel.halves[1].label: low})
        if pd.to_numeric(table[by], errors="coerce").nunique() == 1:
            notes.append(f"scores: {by} has the same value for every example; its high/low split follows input order only")
    return panel, notes


def split(table: pd.DataFrame, by: str, fraction: float) -> tuple[list[str], list[str]]:
    """``(high, low)`` ids: :func:`layergrad.analysis.scores.split_ids` with no IFD filter (the split
    describes all the data). Disjoint by construction, also when ties straddle the cut."""
    return split_ids(table, by, fraction, ifd_filter=False)


def _split_tables(table: pd.DataFrame, by: str, halves: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = table.set_index("id")
    summary, members = [], []
    for half, ids in halves.items():
        part = t.loc[ids]
        for g in ["all", *dict.fromkeys(table["group"])]:
            v = pd.to_numeric((part if g == "all" else part[part["group"] == g])[by], errors="coerce").astype(float)
            summary.append((by, half, g, len(v), v.min(), v.median(), v.max()))
        members += [(half, k + 1, i, part.loc[i, "group"], float(part.loc[i, by])) for k, i in enumerate(ids)]
    return pd.DataFrame(summary, columns=SPLIT_SUMMARY_COLUMNS), pd.DataFrame(members, columns=SPLIT_IDS_COLUMNS)
