"""The cross-model report: groups whose models differ in depth, width or family, on relative depth.

Written when the groups of ``layergrad report`` cannot be compared layer by layer
(:func:`layergrad.analysis.groups.comparability_problems`): ``model_similarity.csv`` (one row per
pair of runs, role and metric: the correlation of the gridded mean curves with its bootstrap
interval, :mod:`layergrad.analysis.crossmodel`), ``depth_curves.csv``, ``depth_thirds.csv``, a figure
of the curves against relative depth per metric, a heat map of the similarities, and ``index.html``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from layergrad.analysis import crossmodel
from layergrad.analysis.groups import Group

from . import figures, html, tables
from .progress import Progress


def write(groups: list[Group], out: Path, metrics, *, n_boot: int, seed: int, normalise: str = "none", progress: bool = False):
    """Write the cross-model report under ``out``; returns ``(index, notes, tables)``."""
    notes = crossmodel.role_coverage(groups)  # refuses groups sharing no role
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps = Progress(progress, 3 + len(metrics), "cross-model report")
    steps("similarity")
    t = {"model_similarity": crossmodel.similarity_table(groups, metrics, n_boot=n_boot, seed=seed, normalise=normalise)}
    steps("curves")
    t["depth_curves"] = crossmodel.depth_curves(groups, metrics, normalise=normalise)
    t["depth_thirds"] = crossmodel.thirds_table(groups, metrics, normalise=normalise)
    for name, df in t.items():
        df.to_csv(out / f"{name}.csv", index=False)
    figs = []
    for m in metrics:
        steps(f"figure {m}")
        if (t["depth_curves"]["metric"] == m).any():
            figs.append(_ref(_curves(groups, t["depth_curves"], m, normalise), out, f"depth_{m}",
                             f"Mean {figures.metric_label(m)} against relative depth, one panel per role."))
    steps("similarity figure")
    heat = _heatmap(groups, t["model_similarity"])
    notes = notes + [f"groups differ in depth or modules, so they are compared on relative depth (layer / (L - 1)); "
                     f"curves interpolated to {len(crossmodel.GRID)} points 0, 0.05, ..., 1; normalise={normalise}"]
    curves = html.Section("curves", "Curves against relative depth", figures=figs)
    sim = html.Section("similarity", "Similarity of the models' curves",
                       "Per pair of models, role and metric: the correlation of the gridded mean curves, with its bootstrap interval.")
    if heat is not None:
        sim.figures.append(_ref(heat, out, "model_similarity", "Correlation of the mean curves per pair of models, role and metric."))
    sim.tables.append(html.TableRef("model_similarity.csv", html.Markup(tables.to_html(t["model_similarity"], 400, "model_similarity.csv")),
                                    [("csv", "model_similarity.csv")], len(t["model_similarity"])))
    data = html.Section("tables", "Tables", tables=[
        html.TableRef(f"{n}.csv", html.Markup(tables.to_html(t[n], 300, f"{n}.csv")), [("csv", f"{n}.csv")], len(t[n]), collapsed=True)
        for n in ("depth_thirds", "depth_curves")])
    sections = [s if not s.empty() else html.left_out(s.anchor, s.title, "no metric with values in every run") for s in (curves, sim)] + [data]
    index = out / "index.html"
    steps("page")
    index.write_text(html.render_page(
        kind="cross-model", title="layergrad cross-model report: " + " vs ".join(g.label for g in groups),
        question=f"Do the models {', '.join(g.label for g in groups)} shape their layer gradients alike (on relative depth)? "
                 + "; ".join(f"{d['group']}: {d['model_short']}, {d['n_layers']} layers, {d['data']}, n = {d['n_ok']}" for d in (g.describe() for g in groups)),
        headline=figs[0] if figs else None, notes=notes, sections=sections,
        methods=["Per model, the mean curve of each role and metric is interpolated to relative depth layer / (L - 1) on a grid of "
                 f"{len(crossmodel.GRID)} points; the similarity of two models is the Pearson correlation of their gridded curves, "
                 f"with a {n_boot}-resample bootstrap interval over examples (seed {seed}); normalise={normalise}."]), encoding="utf-8")
    steps.close()
    return index, notes, t


def _ref(fig, out: Path, name: str, caption: str) -> html.FigureRef:
    figures.save(fig, out / "figures", name)
    return html.FigureRef(f"figures/{name}.png", f"figures/{name}.svg", caption, int(fig.get_size_inches()[0] * 96), f"figures/{name}.pdf")


def _curves(groups, df, metric: str, normalise: str) -> Figure:
    d = df[df["metric"] == metric]
    roles = list(dict.fromkeys(d["role"]))
    colors = {g.label: c for g, c in zip(groups, figures.group_colors(groups).values())}
    fig = Figure(figsize=(3.0 * len(roles) + 1.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    for ax, role in zip(axes, roles):
        for label, g in d[d["role"] == role].groupby("group", sort=False):
            ax.plot(g["relative_depth"], g["mean"], marker="o", ms=3, color=colors.get(label), label=label)
        ax.set_title(role, fontsize=9)
        ax.set_xlabel("relative depth")
    axes[0].set_ylabel(figures.metric_label(metric) + ("" if normalise == "none" else f" ({normalise})"))
    figures.legend_below(fig, axes[0].get_legend_handles_labels()[0], "model")
    figures._title(fig, f"Mean {figures.metric_label(metric)} against relative depth", groups)
    return fig


def _heatmap(groups, sim) -> Figure | None:
    if not len(sim):
        return None
    sim = sim.assign(pair=sim["run_a"] + " vs " + sim["run_b"], cell=sim["role"] + " / " + sim["metric"])
    piv = sim.pivot_table(index="pair", columns="cell", values="correlation", sort=False)
    fig = Figure(figsize=(max(4, 0.45 * piv.shape[1] + 2.5), 0.5 * piv.shape[0] + 2.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(piv.to_numpy(float), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
    ax.set_xticks(np.arange(piv.shape[1]), piv.columns, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(piv.shape[0]), piv.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="correlation of mean curves")
    figures._title(fig, "Correlation of the models' mean curves on relative depth", groups)
    return fig
