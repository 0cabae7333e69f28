"""build_report: run directories in, a folder with index.html, tables and figures out.

Layout of ``OUT``::

    index.html                     the report (static, no scripts, opens from disk; templates/, html.py): the question,
                                   the verdict table (verdicts.py) and the headline figure on the first screen, then
                                   the findings, the sections (figures, then tables), runs and Methods last
    findings.csv|md|tex            the findings in words, one row per pair and headline metric, every number a column
    curves.csv|md|tex              group, role, layer, metric, mean, ci_low, ci_high, n
    mad.csv|md|tex                 group, role, segment, metric, mad, ci_low, ci_high
    primary.csv|md|tex             per pair, headline metric and role: the primary analysis (overall and at equal length)
    compare.csv|md|tex             group_a, group_b, design, n_pairs, role, layer, metric, rel_diff, ratio (+ CI), auroc,
                                   p_value, p_adjusted, correction, min_p, n_a, n_b
    compare_summary.csv|md|tex     per pair and metric: tests, significant after the correction, AUROC range
    design.csv|md|tex              per pair: paired or independent, the key, units, examples left out of pairing
    evenness.csv|md|tex            per group, role and segment: noise-corrected relative roughness (scale-free evenness)
    evenness_compare.csv|md|tex    per pair, role and segment: roughness b vs a with interval and verdict
    length.csv|md|tex              per group and role: length vs nuclear norm correlations
    length_partial.csv|md|tex      per pair and role: group effect controlling for length (exploratory; only with overlap)
    length_points.csv              the scatter's points (per example)
    cosine.csv|md|tex              only when the runs hold cosine rows
    token_shares*.csv|md|tex       only when the runs hold token shares (run --token-shares; report/shares.py)
    runs.csv|md|tex                the runs: model, prompt mode, data, depth, examples ok / not ok
    status.csv|md|tex              examples that were not ok, by status and reason
    exclusions.csv|md|tex          cells where examples had no finite value
    scores*.csv, split_*.csv       the Scores panel (report/scores.py), when the runs have >= 4 ok examples
    figures/*.png|svg|pdf          PNG at 300 dpi, SVG and PDF; figures/headline.* is the first screen's figure

The by-step report (``--checkpoints``, or runs recorded during training) writes instead steps.csv,
layer_steps.csv, checkpoints.csv and its figures (report/checkpoints.py); runs of different models, the
cross-model report (report/crossmodel.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.analysis.compare import CORRECTIONS, DEFAULT_CORRECTION, compare_table
from layergrad.analysis.curves import DEFAULT_METRICS, N_BOOT, cosine_table, curve_table
from layergrad.analysis.design import design_table
from layergrad.analysis.evenness import evenness_compare_table, evenness_table
from layergrad.analysis.length import length_points, length_table, partial_table
from layergrad.analysis.multiplicity import N_PERM
from layergrad.analysis.primary import primary_table
from layergrad.analysis.mad import SCHEMES, describe_segments, mad_table, segment_note
from layergrad.analysis.groups import ANALYSIS_METRICS as METRICS
from layergrad.analysis.groups import (AnalysisError, Group, comparability_problems, exclusions, load_groups,
                                       require_comparable, status_table)
from layergrad.vocab import did_you_mean

from . import figures, findings, html, scores, tables, verdicts
from .progress import Progress
from . import shares as shares_report

FIGURE_METRICS = ("nuclear", "top1_share", "effective_rank")
ALPHA = 0.05


@dataclass
class Report:
    index: Path
    notes: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def build_report(runs, out, *, metrics=DEFAULT_METRICS, seed: int = 0, n_boot: int = N_BOOT, n_perm: int = N_PERM,
                 split_by: str | None = None, split_fraction: float = 0.5, segments: str = "thirds",
                 correction: str = DEFAULT_CORRECTION, pairing: str = "auto", normalise: str = "none", progress: bool = True) -> Path:
    """Write the report for ``runs`` (``[(label, run_dir), ...]``) under ``out``; return ``out/index.html``.

    Each run is one group under its label; a label of ``None`` splits the run by its examples'
    ``group`` column (see :func:`layergrad.analysis.load_groups`). Groups are compared in order.

    The Scores panel splits the examples of all groups together into the ``split_fraction`` with
    the highest and the lowest ``split_by`` (a METRIC of :mod:`layergrad.analysis.selection`; default
    ``ifd`` when the runs were made with ``--ifd``, else ``loss``).

    Raises :class:`layergrad.analysis.AnalysisError` (or its subclass ``IncompatibleGroups``)
    with a message naming the problem when the runs cannot be reported or compared.
    """
    return make_report(runs, out, metrics=metrics, seed=seed, n_boot=n_boot, n_perm=n_perm, split_by=split_by,
                       split_fraction=split_fraction, segments=segments, correction=correction, pairing=pairing,
                       normalise=normalise, progress=progress).index


def _check_args(runs, metrics) -> tuple[list[tuple[str | None, Path]], list[str]]:
    runs = [(None if label is None else str(label), Path(path)) for label, path in runs]
    if not runs:
        raise AnalysisError("no runs given: pass at least one LABEL=DIR")
    labels = [label for label, _ in runs if label is not None]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise AnalysisError(f"group labels must be unique; repeated: {', '.join(map(repr, dup))}")
    if any(not label.strip() for label in labels):
        raise AnalysisError("empty group label; use --run \"LABEL=DIR\"")
    metrics = list(dict.fromkeys(metrics))
    for m in metrics:
        if m not in METRICS:
            hint = did_you_mean(m, METRICS)
            raise AnalysisError(f"unknown metric {m!r}{hint} available: {', '.join(METRICS)}")
    if not metrics:
        raise AnalysisError(f"no metrics selected; available: {', '.join(METRICS)}")
    return runs, metrics


def make_report(runs, out, *, metrics=DEFAULT_METRICS, seed: int = 0, n_boot: int = N_BOOT, n_perm: int = N_PERM,
                split_by: str | None = None, split_fraction: float = 0.5, segments: str = "thirds",
                correction: str = DEFAULT_CORRECTION, pairing: str = "auto", normalise: str = "none",
                checkpoints=(), progress: bool = True) -> Report:
    """Like :func:`build_report`, also returning the notes and the tables as DataFrames.

    ``checkpoints`` (``--checkpoints`` items: folders, globs, ``STEP=DIR``, ``NAME@STEP=DIR``), or runs
    recorded during training (examples with a ``step`` column), give the by-step report instead
    (:func:`make_step_report`).

    ``segments``: ``thirds`` or ``paper`` (the paper's layer splits, analysis.mad); ``correction``:
    ``maxt`` (max-T, family-wise), ``by`` (Benjamini-Yekutieli) or ``bh`` (Benjamini-Hochberg) over the cells of each
    pair and metric; ``pairing``: ``auto`` (paired where the groups share pair keys or instructions, analysis.design),
    ``none``, or one key (``pair_key``, ``instruction``, ``id``). ``progress``: a tqdm bar
    over the report's parts on stderr (``--no-progress``: none).
    """
    if checkpoints or (runs and _recorded(runs)):
        return make_step_report(runs, out, checkpoints=checkpoints, metrics=metrics, seed=seed, n_boot=n_boot, progress=progress)
    runs, metrics = _check_args(runs, metrics)
    if segments not in SCHEMES:
        raise AnalysisError(f"unknown segments {segments!r}; choose one of {', '.join(SCHEMES)}")
    if correction not in CORRECTIONS:
        raise AnalysisError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    scores.check_split(split_by, split_fraction)
    per_run = [(path, load_groups(path, label)) for label, path in runs]
    groups = [g for _, gs in per_run for g in gs]
    labels = [g.label for g in groups]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise AnalysisError(f"two groups are labelled {', '.join(map(repr, dup))}; give each run a distinct label with --run \"LABEL=DIR\"")
    if len(groups) > 1 and any(comparability_problems(a, b) for a in groups for b in groups if a is not b):
        # different depth, width or family: compared on relative depth (report.crossmodel)
        from layergrad.report import crossmodel

        index, notes, tables_ = crossmodel.write(groups, out, metrics, n_boot=n_boot, seed=seed, normalise=normalise, progress=progress)
        return Report(index, [n for g in groups for n in g.notes] + notes, tables_)
    if len(groups) > 1:
        require_comparable(groups)  # before any heavy work
    steps = Progress(progress, 14 + len(groups) * (len(groups) - 1) // 2)
    steps("scores panel")
    panel, panel_notes = scores.score_panel(per_run, split_by=split_by, fraction=split_fraction, n_boot=n_boot, seed=seed)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    t: dict[str, pd.DataFrame] = {}
    steps("curves")
    t["curves"] = curve_table(groups, metrics, n_boot=n_boot, seed=seed)
    steps("MAD")
    t["mad"] = mad_table(groups, metrics, n_boot=n_boot, seed=seed, scheme=segments)
    t["design"] = design_table(groups, pairing)
    steps("comparisons")
    t["compare"] = compare_table(groups, metrics, n_perm=n_perm, seed=seed, pairing=pairing, correction=correction)
    headline = [m for m in findings.HEADLINE if m in metrics]
    steps("headline tests")
    t["primary"] = primary_table(groups, headline, pairing=pairing)
    t["compare_summary"] = _compare_summary(t["compare"])
    t["evenness"] = evenness_table(groups, [findings.EVENNESS_METRIC], scheme=segments)
    t["evenness_compare"] = evenness_compare_table(groups, [findings.EVENNESS_METRIC], scheme=segments, pairing=pairing)
    steps("length")
    t["length"] = length_table(groups)
    t["length_partial"] = pd.concat([partial_table(groups, m) for m in dict.fromkeys(["nuclear", *headline])], ignore_index=True)
    t["findings"] = findings.findings_table(t, groups)
    points = length_points(groups)
    steps("cosine")
    t["cosine"] = cosine_table(groups, n_boot=n_boot, seed=seed)
    t["runs"] = _runs_frame(groups)
    t["status"] = status_table(groups)
    t["exclusions"] = pd.concat([exclusions(g, metrics) for g in groups], ignore_index=True)
    notes = ([n for g in groups for n in g.notes] + _exclusion_notes(groups, t["exclusions"]) + panel_notes
             + _design_notes(t["design"]) + [n for n in {segment_note(g.n_layers, segments) for g in groups} if n])
    warnings = findings.small_sample_warnings(groups)
    per_example = {}  # written as CSV only (one row per example)
    if panel is not None:
        per_example = {k: panel.tables[k] for k in ("scores", "split_ids") if k in panel.tables}
        t.update({k: v for k, v in panel.tables.items() if k not in per_example})

    files = {name: tables.write_table(df, out, name, CAPTIONS.get(name, "")) for name, df in t.items() if name != "cosine" or len(df)}
    if len(groups) == 1:  # nothing compared: no comparison tables beside the report
        for name in ("findings", "design", "primary", "evenness_compare"):
            files.pop(name)
            for ext in ("csv", "md", "tex"):
                (out / f"{name}.{ext}").unlink(missing_ok=True)
    points.to_csv(out / "length_points.csv", index=False)
    for name, df in per_example.items():
        df.to_csv(out / f"{name}.csv", index=False)

    fig_metrics = _figure_metrics(t["curves"], metrics)
    primary = _primary_metric(t["curves"], metrics)
    steps("headline figure")
    head = None
    if primary is not None:
        role, why = _headline_role(groups, t["compare"], primary)
        head = _fig(figures.headline_figure(groups, t["curves"], primary, role, why), out, "headline",
                    f"{figures.metric_label(primary).capitalize()} per layer of role {role}{why}, every group on one axis; "
                    "bands: 95% bootstrap intervals of the mean. Every role: Per-layer curves below.")
    sections = _sections(groups, t, files, points, fig_metrics, out, segments, steps)
    steps("scores figures")
    if panel is not None:
        sections.append(_scores_section(groups, panel, t, files, out))
    else:
        sections.append(html.left_out("scores", "Scores", "; ".join(panel_notes) or "too few examples"))
    steps("token shares")
    share_sec, share_tabs, share_files = shares_report.section(per_run, groups, out, _fig, _table, html, tables.write_table)
    if share_sec is not None:  # only runs made with --token-shares
        sections.append(share_sec)
        t.update(share_tabs)
        files.update(share_files)
    else:
        sections.append(html.left_out("token_shares", "Where in the response the gradient comes from",
                                      "the runs were made without `layergrad run --token-shares`"))
    sections.append(_data_section(t, files))
    steps("page")
    compared = t["findings"] if len(groups) > 1 else t["findings"].iloc[:0]
    page = html.render_page(
        kind="report",
        title="layergrad report: " + " vs ".join(g.label for g in groups),
        question=_question(groups),
        subtitle=_subtitle(seed, n_boot, n_perm),
        verdicts=verdicts.table_html(verdicts.verdict_table(compared)) if len(compared) else "",
        headline=head,
        findings=verdicts.short_findings_html(compared),
        findings_files=[p.name for p in files["findings"].values()] if "findings" in files else [],
        warnings=warnings,
        notes=notes,
        sections=sections,
        runs_table=tables.to_html(t["runs"]) + '<p class="files">' + " ".join(f'<a href="{p.name}">{p.name}</a>' for p in files["runs"].values()) + "</p>",
        methods=_methods(groups, n_boot, n_perm, seed, segments, correction) + ([_scores_method(panel)] if panel is not None else []),
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    _remove_stale(out, sections + ([html.Section("headline", "", figures=[head])] if head else []), {**files, **per_example})
    steps.close()
    return Report(index, notes, {**t, "length_points": points, **per_example})


def _recorded(runs) -> bool:
    """Whether the runs were recorded during training (several steps); refuses a mix with ordinary runs."""
    from layergrad.analysis.checkpoints import recorded_steps
    from layergrad.store.run import load_results

    multi = [(label, path) for label, path in runs if len(recorded_steps(load_results(path))) > 1]
    if multi and len(multi) < len(runs):
        plain = [str(path) for label, path in runs if (label, path) not in multi]
        raise AnalysisError(f"runs recorded during training ({', '.join(str(p) for _, p in multi)}) are reported against "
                            f"step; report them apart from the ordinary run(s) {', '.join(plain)}")
    return bool(multi)


def make_step_report(runs, out, *, checkpoints=(), metrics=DEFAULT_METRICS, seed: int = 0, n_boot: int = N_BOOT,
                     progress: bool = True) -> Report:
    """The by-step report (report.checkpoints): ``checkpoints`` grouped by step (analysis.checkpoints), and
    ``runs`` (``[(label, dir)]``) recorded during training, each split by its examples' step."""
    from layergrad.analysis import checkpoints as ck
    from layergrad.store.run import load_results

    from . import checkpoints as step_report

    checked, metrics = _check_args(runs or [(None, ".")], metrics)  # labels and metric names, with or without runs
    runs = checked if runs else []
    series = ck.load_checkpoints(checkpoints) if checkpoints else []
    for label, path in runs:
        res = load_results(path)
        if not ck.recorded_steps(res):
            raise AnalysisError(f"{path}: its examples have no step column; with --checkpoints pass checkpoint runs "
                                "as --checkpoints STEP=DIR, not --run")
        series += ck.recorded_series(res, label)
    names = [s.run for s in series]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise AnalysisError(f"two training runs are named {', '.join(map(repr, dup))}; name them (NAME@STEP=DIR, LABEL=DIR)")
    fig_metrics = [m for m in FIGURE_METRICS if m in metrics] or metrics[:3]
    index, notes, t = step_report.write(series, out, metrics, fig_metrics, n_boot=n_boot, seed=seed, progress=progress,
                                        kind="by-step" if checkpoints else "training")
    return Report(index, notes, t)


def _remove_stale(out: Path, sections: list[html.Section], files: dict) -> None:
    """Delete outputs of an earlier report in ``out`` that this one did not write (e.g. a third
    group's heat maps, cosine tables), so the folder holds exactly what index.html shows."""
    keep = {Path(x).name for s in sections for f in s.figures for x in (f.png, f.svg, f.pdf)}
    for p in (out / "figures").glob("*"):
        if (p.suffix in (".png", ".svg", ".pdf") and p.name.split("_")[0].split(".")[0] in
                ("curves", "overlay", "mad", "auroc", "length", "cosine", "scores", "token", "headline") and p.name not in keep):
            p.unlink()
    for name in ("cosine", "scores", "scores_summary", "scores_spearman", "split_summary", "split_ids", "split_curves",
                 "token_shares", "token_shares_summary"):
        if name not in files:
            for ext in ("csv", "md", "tex"):
                (out / f"{name}.{ext}").unlink(missing_ok=True)


CAPTIONS = {
    "curves": "Per-layer mean over examples with 95% percentile bootstrap interval; n = examples with a finite value.",
    "mad": "Mean absolute difference between consecutive layers of the mean curve; segments are thirds of the depth (np.array_split); 95% bias-corrected bootstrap interval.",
    "compare": "Group b against group a per role and layer, on unit values (design.csv): ratio of geometric means with 95% t interval, AUROC P(b > a) (paired: within-pair probability of superiority), two-sided relabelling p-value of the studentized statistic (paired: sign flips; independent: permutations with Welch's statistic), adjusted within each pair and metric by the correction named (maxt: max-T family-wise); min_p = the smallest p the design allows.",
    "compare_summary": "Per pair of groups and metric: tests, tests with adjusted p < 0.05 (column correction of compare.csv), and the AUROC range.",
    "primary": "The pre-specified primary analysis per pair, headline metric and role (all = geometric mean over roles): ratio of geometric means overall with 95% t interval and Holm-adjusted p (over the all rows), and at equal response length (length_control: equal = every pair at the same length; model = ln y ~ group + ln length; no common support / lengths unknown = none given).",
    "design": "Per pair of groups: paired on a shared key (pair_key, else the instruction text; the id only with --pairing id) or independent; units are instructions (repeated instructions averaged within a group); n_left = examples without a partner, left out.",
    "evenness": "Per group, role and segment: relative roughness of the mean curve, sqrt(mean[(step of the mean curve)^2 - var(per-example step)/n]) / mean level (scale-free, noise-corrected), with a 95% jackknife t interval.",
    "evenness_compare": "Per pair, role and segment: roughness of b and a, their ratio, and the difference of squared roughness with a 95% jackknife t interval; verdict more even / less even where that interval excludes 0.",
    "findings": "The findings, one row per pair of groups and headline metric, and one for evenness; every number of a sentence is a column of its row.",
    "length": "Per group and role: correlation of response length (tokens) with the per-example mean over layers of the nuclear norm.",
    "length_partial": "Exploratory. Per pair, role (all = mean over roles) and metric: correlation of the per-example layer mean with group membership (0 = group_a, 1 = group_b), raw and partial on response length (Pearson on values, Spearman on ranks); NaN where the lengths do not overlap (support = False).",
    "cosine": "Per-layer mean gradient cosine similarity with 95% bootstrap interval.",
    "runs": "The runs compared: one group per run directory, with the provenance of its numbers.",
    "status": "Examples that were not ok, by status and reason; they take no part in any statistic.",
    "exclusions": "Cells (metric, role, layer) where some ok examples had no finite value and were excluded from that cell only.",
    "scores_summary": "Per group and score (ok examples): n with a finite value, n_nan without, mean, sd (ddof 1), min, quartiles, max.",
    "scores_spearman": "Spearman rank correlation between two scores over the ok examples of all groups pooled, pairwise complete; n = examples with both finite; NaN below 3 or for a constant score.",
    "split_summary": "The high and low parts of the split: per part and group, the examples in it and the range of the split score.",
    "split_curves": "Per-layer mean over the examples of each part (95% percentile bootstrap interval), as curves.csv.",
}


CAPTIONS.update(shares_report.CAPTIONS)


def _compare_summary(c: pd.DataFrame) -> pd.DataFrame:
    cols = ["group_a", "group_b", "metric", "tests", "significant", "auroc_min", "auroc_median", "auroc_max", "min_p_adjusted"]
    if len(c) == 0:
        return pd.DataFrame(columns=cols)
    g = c.groupby(["group_a", "group_b", "metric"], sort=False)
    s = g.agg(tests=("p_value", "count"), significant=("p_adjusted", lambda p: int((p < ALPHA).sum())),
              auroc_min=("auroc", "min"), auroc_median=("auroc", "median"), auroc_max=("auroc", "max"),
              min_p_adjusted=("p_adjusted", "min"))
    return s.reset_index()[cols]


def _design_notes(p: pd.DataFrame) -> list[str]:
    notes = []
    for r in p.itertuples():
        if r.n_left_a or r.n_left_b:
            notes.append(f"{r.group_b!r} vs {r.group_a!r}: paired on {r.pair_by}; {r.n_pairs} pairs, {r.n_left_a} examples of "
                         f"{r.group_a!r} and {r.n_left_b} of {r.group_b!r} have no partner and take no part in that comparison (design.csv)")
        if r.clustered:
            notes.append(f"{r.group_b!r} vs {r.group_a!r}: some instructions have several examples in a group; they enter as one unit, "
                         "their mean (design.csv)")
    return notes


def _exclusion_notes(groups: list[Group], ex: pd.DataFrame) -> list[str]:
    notes = []
    for g in groups:
        e = ex[ex["group"] == g.label]
        if len(e):
            worst = e.loc[e["n_excluded"].idxmax()]
            notes.append(
                f"group {g.label!r}: in {len(e)} (metric, role, layer) cells some examples have NaN or missing values; "
                f"they are excluded from those cells only, never replaced (at most {int(worst['n_excluded'])} of {g.n}, "
                f"e.g. {worst['metric']} {worst['role']} layer {int(worst['layer'])}). Counts per cell: exclusions.csv; n per cell: curves.csv"
            )
    return notes


def _runs_frame(groups: list[Group]) -> pd.DataFrame:
    rows = []
    for g in groups:
        d = g.describe()
        rows.append({"group": g.label, "model": d["model"], "prompt mode": d["prompt_mode"], "dtype": d["dtype"],
                     "data": d["data"], "layers": g.n_layers, "roles": ", ".join(g.series), "examples ok": d["n_ok"],
                     "not ok": d["n_not_ok"], "fingerprint": str(g.manifest.get("model_fingerprint", ""))[:12]})
    return pd.DataFrame(rows)


def _subtitle(seed: int, n_boot: int, n_perm: int) -> str:
    try:
        from importlib.metadata import version

        v = version("layergrad")
    except Exception:  # not installed (running from a source tree)
        v = "unknown"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"layergrad {v} · {now} · seed {seed} · {n_boot} bootstrap resamples · {n_perm} permutations"


def _methods(groups: list[Group], n_boot: int, n_perm: int, seed: int, scheme: str = "thirds", correction: str = DEFAULT_CORRECTION) -> list[str]:
    L = groups[0].n_layers
    seg_text = describe_segments(L, scheme)
    if scheme == "paper":
        seg_how = ("Segments are the paper's own splits (--segments paper: 26 layers [:7] [7:20] [20:]; 28 [:7] [7:21] [21:]; "
                   "32 [:10] [10:20] [20:]; 42 [:12] [12:30] [30:]; other depths: thirds by np.array_split)")
    else:
        seg_how = "Segments are thirds of the depth by np.array_split"
    from layergrad.analysis.verdicts import RULES as VERDICT_RULES

    corr = CORRECTIONS[correction]
    return [
        "Only examples with status ok enter any statistic; per group, the not-ok ones are counted by status and reason (status.csv).",
        "Curves: per group, role and layer, the mean of the metric over examples. Interval: 95% percentile bootstrap over "
        f"examples, {n_boot} resamples (seed {seed}); the same resamples for every role, layer and metric of a group. An example "
        "with no finite value in one cell is excluded from that cell only (n in curves.csv). With fewer than 2 examples an interval is undefined (NaN).",
        "MAD: mean absolute difference |c(l+1) - c(l)| of the mean curve c over consecutive layer pairs with both layers in the segment. "
        f"{seg_how} (for {L} layers: {seg_text}); the pairs straddling a "
        "boundary count only in 'all' (all L-1 pairs). Interval: bias-corrected (BC) percentile bootstrap of the MAD of the "
        "resampled mean curves; noise inflates a MAD (a flat curve's sample MAD is positive), by about 1/sqrt(n), so compare groups of similar size.",
        "Design: two groups are PAIRED when they share at least max(3, 80% of the smaller group's) keys: a pair_key column, "
        "else the instruction text as scored (the example id only with --pairing id). Units are instructions: the examples of a "
        "group that share one are averaged (of the log values), so repeated instructions count once (a random intercept per "
        "instruction, fitted exactly). Examples without a partner take no part and are counted (design.csv). Other pairs of "
        "groups are independent samples of units.",
        "Primary analysis (pre-specified, primary.csv): per pair and headline metric (nuclear norm, effective rank), the outcome "
        "per example is the geometric mean over roles of the per-role layer means, so no module decides it by its size. Effect: "
        "the ratio of geometric means, exp(mean ln b - mean ln a), with a 95% t interval (paired: Student's t on the differences; "
        "independent: Welch's t with Satterthwaite degrees of freedom). At equal length: where every pair has the same number of "
        "response tokens (one group cut to the other's lengths, layergrad run --truncate-to: exact for a causal LM) the effect "
        "itself; otherwise, paired, the intercept of the OLS regression of the within-pair difference on the difference of "
        "ln(response tokens) (the pair intercepts of ln y ~ group + ln length + pair removed by differencing), independent, the "
        "group coefficient of ln y ~ 1 + group + ln length by OLS with HC3 standard errors (statsmodels). It is fitted only with "
        "common support (paired: at least 2 pairs on each side of equal length; independent: at least 3 units and 25% of each "
        "group inside the other's length range); without it no length-adjusted number is given. Holm's step-down adjustment "
        "over all pairs x headline metrics of the report, separately for the overall and the equal-length p-values (Holm 1979). "
        "Verdicts follow the rules of layergrad.analysis.verdicts.RULES: " + "; ".join(f"'{w}': {c}" for w, c in VERDICT_RULES) + ".",
        "Cells (compare.csv): per (role, layer) the same ratio of geometric means on unit values with its t interval; p-values "
        f"from {n_perm} relabellings of the studentized statistic (paired: sign flips; independent: label permutations with "
        "Welch's statistic, valid with unequal spreads), enumerated exactly when fewer exist. "
        + ("Multiple testing: single-step max-T (Westfall & Young 1993) within each pair of groups and metric: each relabelling is "
           "applied to every cell and the largest |t| kept; a cell's adjusted p is the share of relabellings whose maximum reaches "
           "its |t| (family-wise error 5% under any dependence, and layers that move together are not penalised as independent tests). "
           if correction == "maxt" else
           f"Multiple testing: {corr} within each pair of groups and metric (family: every role and layer). ")
        + f"min_p is the smallest p-value the design can give; where it is at least {ALPHA}, no cell can be significant and the "
        "findings say so. AUROC: independent, P(b > a) + 0.5 P(b = a) (Mann-Whitney U); paired, P(d > 0) + 0.5 P(d = 0).",
        "Evenness (evenness.csv): per role and segment, the root-mean-square step of the mean curve relative to its mean level, "
        "with each squared step reduced by its expected noise var(per-example step)/n (von Neumann's mean square successive "
        "difference), so it is scale-free and a noisy flat curve is not called rough. Interval: jackknife t on the squared "
        "roughness (a U-statistic). Comparisons: the difference of squared roughness with a jackknife t interval (paired: "
        "leaving out one pair); 'more even' where the interval lies below 0. The raw MAD stays for the paper's tables.",
        "Length (length.csv, length_partial.csv, exploratory): per example, the metric averaged over layers against the number of "
        "response tokens (Pearson and Spearman), and the partial correlation with group membership controlling for length, only "
        "where the lengths overlap (the primary analysis's rule).",
        f"Findings: sentences built from the CSV rows (findings.csv). Groups with fewer than {findings.SMALL_N} examples are flagged: "
        "their intervals are wide.",
    ]


def _fig(fig, out: Path, name: str, caption: str) -> html.FigureRef:
    figures.save(fig, out / "figures", name)
    return html.FigureRef(f"figures/{name}.png", f"figures/{name}.svg", caption, int(fig.get_size_inches()[0] * 96), f"figures/{name}.pdf")


def _table(title: str, df: pd.DataFrame, files: dict, max_rows: int | None = 400, collapsed: bool = False, name: str = "", shown=None) -> html.TableRef:
    src = f"{name}.csv"
    view = df if shown is None else shown
    return html.TableRef(
        title=title, html=html.jinja2.utils.markupsafe.Markup(tables.to_html(view, max_rows, src)),
        files=[(ext, p.name) for ext, p in files.items()], n_rows=len(df), caption=CAPTIONS.get(name, ""), collapsed=collapsed,
    )


def _figure_metrics(curves: pd.DataFrame, metrics) -> list[str]:
    """The figures' metrics: FIGURE_METRICS (else the first three asked for) that have a finite value (imported runs store no
    effective rank: no figure of an empty panel)."""
    stored = set(curves.loc[np.isfinite(curves["mean"].to_numpy(float)), "metric"]) if len(curves) else set()
    chosen = [m for m in FIGURE_METRICS if m in metrics and m in stored] or [m for m in metrics if m in stored][:3]
    return chosen


def _primary_metric(curves: pd.DataFrame, metrics) -> str | None:
    """The headline figure's metric: the first headline metric of the findings with values, else the first with values."""
    ok = _figure_metrics(curves, metrics)
    return next((m for m in (*findings.HEADLINE, *ok) if m in ok), None)


def _headline_role(groups, compare: pd.DataFrame, metric: str) -> tuple[str, str]:
    """The role the comparisons single out for ``metric`` (most layers significant after the correction, over every pair; ties:
    the larger mean |log ratio|), with the reason as words; one group or no differences: the first role measured."""
    roles = list(dict.fromkeys(s for g in groups for s in g.series))
    c = compare[compare["metric"] == metric] if len(compare) else compare
    if len(groups) < 2 or not len(c):
        return roles[0], ""
    with np.errstate(divide="ignore", invalid="ignore"):
        score = c.assign(sig=c["p_adjusted"] < ALPHA, size=np.abs(np.log(c["ratio"].astype(float))))
    per = score.groupby("role", sort=False).agg(sig=("sig", "sum"), size=("size", "mean"))
    per = per.reindex([r for r in roles if r in per.index]).sort_values(["sig", "size"], ascending=False, kind="stable")
    role = str(per.index[0])
    k = int(per["sig"].iloc[0])
    return role, (f" (the role with the most significant layers, {k})" if k else " (the role with the largest mean |log ratio|; no layer significant)")


def _question(groups) -> str:
    """The page's question in one line: groups, model, data, n."""
    d = [g.describe() for g in groups]
    models = list(dict.fromkeys(f"{x['model_short']} ({x['prompt_mode']})" for x in d))
    per = "; ".join(f"{x['group']}: {x['data']}, n = {x['n_ok']}" for x in d)
    if len(groups) == 1:
        return f"How do the per-example layer gradients of {groups[0].label} look? Model {', '.join(models)} · {per}."
    names = ", ".join(g.label for g in groups[:-1]) + f" and {groups[-1].label}"
    return f"Do {names} differ in their per-example layer gradients? Model {', '.join(models)} · {per}."


def _sections(groups, t, files, points, fig_metrics, out, scheme="thirds", steps=lambda part: None) -> list[html.Section]:
    s = []
    steps("curve figures")
    curves = html.Section("curves", "Per-layer curves", "First all groups on the same axes, one panel per role (the paper's style); then one "
                          "panel per group, one line per role. Bands are 95% bootstrap intervals of the mean.")
    for m in fig_metrics:
        if len(groups) > 1:
            curves.figures.append(_fig(figures.overlay_figure(groups, t["curves"], m), out, f"overlay_{m}",
                                       f"{figures.metric_label(m).capitalize()} per layer, all groups on the same axes, one panel per role."))
        curves.figures.append(_fig(figures.curves_figure(groups, t["curves"], m), out, f"curves_{m}", f"{figures.metric_label(m).capitalize()} per layer."))
    curves.tables.append(_table("curves.csv", t["curves"], files["curves"], 2000, True, "curves"))
    s.append(curves)

    steps("MAD figures")
    mad = html.Section("mad", "Layer-to-layer change (MAD)")
    if groups[0].n_layers < 2:
        s.append(html.left_out("mad", "Layer-to-layer change (MAD)", "the runs have one layer: no consecutive layers to compare"))
    else:
        for m in fig_metrics:
            mad.figures.append(_fig(figures.mad_figure(groups, t["mad"], m), out, f"mad_{m}", f"MAD of the mean {figures.metric_label(m)} curve per segment."))
        mad.tables.append(_table("evenness.csv (scale-free, noise-corrected)", t["evenness"], files["evenness"], 1000, len(t["evenness"]) > 60, "evenness"))
        if len(groups) > 1:
            mad.tables.append(_table("evenness_compare.csv", t["evenness_compare"], files["evenness_compare"], 1000, len(t["evenness_compare"]) > 60, "evenness_compare"))
        mad.tables.append(_table("mad.csv (the paper's MAD, in the metric's units)", t["mad"], files["mad"], 1000, len(t["mad"]) > 60, "mad"))
        mad.intro = "Segments: " + ("the paper's layer splits (--segments paper)" if scheme == "paper" else "thirds of the depth") + f": {describe_segments(groups[0].n_layers, scheme)}."
        s.append(mad)

    if len(groups) > 1:
        comp = html.Section("compare", "Group comparisons", "AUROC above 0.5 (red) means group b tends to have larger values than group a.")
        for j in range(len(groups)):
            for k in range(j + 1, len(groups)):
                a, b = groups[j], groups[k]
                steps(f"AUROC {b.label} vs {a.label}")
                comp.figures.append(_fig(figures.auroc_figure(a, b, t["compare"], fig_metrics, ALPHA), out, f"auroc_{j + 1}_vs_{k + 1}",
                                         f"AUROC of {b.label} against {a.label} per role and layer."))
        comp.tables.append(_table("Primary analysis per pair, metric and role (primary.csv)", t["primary"], files["primary"], None, False, "primary"))
        comp.tables.append(_table("Design per pair (design.csv)", t["design"], files["design"], None, False, "design"))
        comp.tables.append(_table("Summary per pair and metric (compare_summary.csv)", t["compare_summary"], files["compare_summary"], None, False, "compare_summary"))
        c = t["compare"]
        top = c.assign(_e=-(c["auroc"] - 0.5).abs()).sort_values(["p_adjusted", "_e"], kind="stable").drop(columns="_e").head(40)
        ref = _table("Strongest differences (first 40 rows of compare.csv by p_adjusted, then |AUROC - 0.5|)", c, files["compare"], None, False, "compare", shown=top)
        ref.n_rows = len(c)
        comp.tables.append(ref)
        s.append(comp)
    else:
        s.append(html.left_out("compare", "Group comparisons", "one group: nothing to compare"))

    steps("length figure")
    if len(points) and np.isfinite(points["n_response_tokens"].to_numpy(float)).any():
        length = html.Section("length", "Length effect", "Is a difference only a length effect? Each point is one example.")
        length.figures.append(_fig(figures.length_figure(groups, points, t["length"]), out, "length_nuclear", "Response length against the nuclear norm averaged over layers."))
        length.tables.append(_table("length.csv", t["length"], files["length"], None, False, "length"))
        if len(groups) > 1:
            length.tables.append(_table("length_partial.csv", t["length_partial"], files["length_partial"], None, len(t["length_partial"]) > 40, "length_partial"))
        s.append(length)
    else:
        s.append(html.left_out("length", "Length effect", "no example has both a response length and a nuclear norm "
                                                           "(imported results carry no lengths)"))

    if len(t["cosine"]):
        cos = html.Section("cosine", "Cross-layer gradient similarity")
        for kind in dict.fromkeys(t["cosine"]["kind"]):
            cos.figures.append(_fig(figures.cosine_figure(groups, t["cosine"], kind), out, f"cosine_{kind}", f"Gradient cosine similarity, kind {kind}."))
        cos.tables.append(_table("cosine.csv", t["cosine"], files["cosine"], 2000, True, "cosine"))
        s.append(cos)
    else:
        s.append(html.left_out("cosine", "Cross-layer gradient similarity", "the runs hold no cosine rows (made without `layergrad run --cosine`)"))
    return s


def _data_section(t, files) -> html.Section:
    """Examples not ok and cells with excluded values; one line when there are none."""
    if not len(t["status"]) and not len(t["exclusions"]):
        return html.left_out("data", "Examples left out", "none: every example is ok and every value finite")
    data = html.Section("data", "Examples left out")
    if len(t["status"]):
        data.tables.append(_table("status.csv", t["status"], files["status"], 200, False, "status"))
    if len(t["exclusions"]):
        data.tables.append(_table("exclusions.csv", t["exclusions"], files["exclusions"], 200, len(t["exclusions"]) > 20, "exclusions"))
    return data


def _scores_section(groups, panel: scores.ScorePanel, t, files, out) -> html.Section:
    """Scores panel: distributions per group, Spearman heat map, high vs low curves (report/scores.py)."""
    pct = f"{100 * panel.fraction:g}%"
    ifd = ("IFD is shown as the loss ratio (ifd) and the perplexity ratio (ifd_ppl), beside the loss of the response alone (loss_no_prompt). "
           if panel.has_ifd else
           "IFD was not computed for these runs (they were made without `layergrad run --ifd`): the panel uses loss, response length and spectral scores. ")
    sec = html.Section("scores", "Scores", ifd + "Spectral scores are per example the mean over the modules of all layers of the role set "
                       "(e.g. effective_rank:attn:mean); per-example values in scores.csv.")
    sec.figures.append(_fig(figures.score_distribution_figure(groups, t["scores_summary"], panel.columns), out, "scores_distribution",
                            "Distribution of each score per group (from scores_summary.csv)."))
    sec.figures.append(_fig(figures.spearman_figure(groups, t["scores_spearman"], panel.columns), out, "scores_spearman",
                            "Spearman rank correlation between scores, all groups pooled (scores_spearman.csv)."))
    sec.tables.append(_table("scores_summary.csv", t["scores_summary"], files["scores_summary"], None, len(t["scores_summary"]) > 40, "scores_summary"))
    sec.tables[-1].files.append(("csv", "scores.csv"))
    sec.tables.append(_table("scores_spearman.csv", t["scores_spearman"], files["scores_spearman"], None, True, "scores_spearman"))
    if not panel.halves:
        sec.intro += f" {panel.split_problem}."
        return sec
    what = f"High vs low {panel.by}: top and bottom {pct} of the ok examples of all groups with a finite {panel.by}"
    for m in dict.fromkeys(t["split_curves"]["metric"]):
        fig = figures.split_curves_figure(groups, panel.halves, t["split_curves"], m, panel.by, panel.fraction)
        sec.figures.append(_fig(fig, out, f"scores_split_{m}", f"{what}: {figures.metric_label(m)} per layer (split_curves.csv)."))
    sec.tables.append(_table("split_summary.csv", t["split_summary"], files["split_summary"], None, False, "split_summary"))
    sec.tables.append(_table("split_curves.csv", t["split_curves"], files["split_curves"], 2000, True, "split_curves"))
    sec.tables[-1].files.append(("csv", "split_ids.csv"))
    return sec


def _scores_method(panel: scores.ScorePanel) -> str:
    return (
        "Scores: one row per ok example of all groups (scores.csv; selection.score_table). Spearman's rho is the Pearson "
        "correlation of midranks over the examples where both scores are finite, all groups pooled (so it mixes within- and "
        f"between-group variation). The high/low split ranks the ok examples with a finite {panel.by} as `layergrad select` does "
        f"(ties: earlier input first; runs in the order given) and takes floor({panel.fraction:g} x eligible) from each end "
        "(split_ids.csv); with 0.5 the middle example of an odd count is in neither. The IFD filter of `select` is not applied. "
        "Curves of the two parts are computed as the per-layer curves above."
    )
