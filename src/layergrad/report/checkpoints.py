"""The by-step report: metrics against training step (checkpoints, or a run recorded during training).

Written by ``layergrad report --checkpoints ...`` and for runs recorded by ``LayerGradCallback``
(:mod:`layergrad.analysis.checkpoints`): ``steps.csv`` (per run, step, role, third of the depth and
metric: mean over examples with a 95% bootstrap interval), ``layer_steps.csv`` (per layer: the heat
map's cells), ``checkpoints.csv`` (which folder is which step), one figure per metric of the
thirds against step (one panel per role), one layer x step heat map per run and metric, and
``index.html``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layergrad.analysis import checkpoints as ck

from . import figures, html, tables
from .progress import Progress

SEGMENT_COLOURS = {"early": "#0072B2", "middle": "#009E73", "late": "#D55E00", "all": "#555555"}  # Okabe-Ito
LINESTYLES = ("-", "--", ":", "-.")


def write(series: list[ck.StepSeries], out: Path, metrics, figure_metrics, *, n_boot: int, seed: int, progress: bool = False,
          kind: str = "by-step"):
    """Write the by-step report under ``out`` (``kind``: ``by-step`` for checkpoints, ``training`` for runs recorded during
    training: the same page); returns ``(index, notes, tables)``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps = Progress(progress, 3 + len(figure_metrics) * (1 + len(series)), f"{kind} report")
    steps("steps")
    t = {
        "steps": ck.step_table(series, metrics, n_boot=n_boot, seed=seed),
        "layer_steps": ck.layer_step_table(series, figure_metrics),
        "checkpoints": pd.DataFrame(
            [(s.run, s.source, st, str(p), g.n, g.n_layers) for s in series for st, g, p in zip(s.steps, s.groups, s.paths)],
            columns=["run", "source", "step", "path", "n_ok", "n_layers"]),
    }
    for name, df in t.items():
        df.to_csv(out / f"{name}.csv", index=False)
    against, heat = [], []
    for m in figure_metrics:
        steps(f"figure {m}")
        if (t["steps"]["metric"] == m).any():
            against.append(_ref(_against_step(series, t["steps"], m), out, f"steps_{m}",
                                f"Mean {m} per third of the depth against training step, one panel per role; bands: 95% bootstrap intervals."))
        for s in series:
            steps(f"heat map {m} {s.run}")
            if ((t["layer_steps"]["metric"] == m) & (t["layer_steps"]["run"] == s.run)).any():
                heat.append(_ref(_heatmap(t["layer_steps"], s.run, m), out, f"heatmap_{m}_{_slug(s.run)}",
                                 f"{s.run}: mean {m} per layer and step."))
    notes = [n for s in series for g in s.groups for n in g.notes]
    notes += [f"{s.run!r}: {len(s.steps)} steps ({', '.join(map(str, s.steps))}), {s.source}" for s in series]
    notes += [f"{s.run!r} has a single step: nothing to see against step" for s in series if len(s.steps) == 1]
    shown = t["steps"][t["steps"]["segment"] != "all"]
    sections = [html.Section("steps", "Against training step", figures=against) if against else
                html.left_out("steps", "Against training step", "no figure metric has values"),
                html.Section("layers", "Per layer and step", figures=heat) if heat else
                html.left_out("layers", "Per layer and step", "no figure metric has values per layer"),
                html.Section("tables", "Tables", tables=[
                    html.TableRef("steps.csv (thirds)", html.Markup(tables.to_html(shown, 400, "steps.csv")), [("csv", "steps.csv")], len(shown)),
                    html.TableRef("checkpoints.csv", html.Markup(tables.to_html(t["checkpoints"], 200, "checkpoints.csv")),
                                  [("csv", "checkpoints.csv"), ("csv", "layer_steps.csv")], len(t["checkpoints"]), collapsed=True)])]
    index = out / "index.html"
    steps("page")
    index.write_text(html.render_page(
        kind=kind, title=f"layergrad {kind} report: " + " vs ".join(s.run for s in series),
        question="How do the layer gradients change during training? "
                 + "; ".join(f"{s.run}: steps {s.steps[0]}–{s.steps[-1]} ({len(s.steps)}), n = {s.groups[0].n} at the first" for s in series),
        headline=against[0] if against else None, notes=notes, sections=sections,
        methods=["Per step, role and third of the depth: per example the mean over the third's layers, then the mean over examples, "
                 f"with a 95% percentile bootstrap interval ({n_boot} resamples, seed {seed})."]), encoding="utf-8")
    steps.close()
    return index, notes, t


def _ref(fig, out: Path, name: str, caption: str) -> html.FigureRef:
    figures.save(fig, out / "figures", name)
    return html.FigureRef(f"figures/{name}.png", f"figures/{name}.svg", caption, int(fig.get_size_inches()[0] * 96), f"figures/{name}.pdf")


def _against_step(series, df: pd.DataFrame, metric: str) -> Figure:
    d = df[(df["metric"] == metric) & (df["segment"] != "all")]
    roles = list(dict.fromkeys(d["role"]))
    fig = Figure(figsize=(3.0 * len(roles) + 2.0, 3.3), layout="constrained")
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    runs = list(dict.fromkeys(d["run"]))
    for ax, role in zip(axes, roles):
        for j, run in enumerate(runs):
            for seg, g in d[(d["role"] == role) & (d["run"] == run)].groupby("segment", sort=False):
                ls = LINESTYLES[j % len(LINESTYLES)]
                ax.plot(g["step"], g["mean"], ls, marker="o", ms=3, color=SEGMENT_COLOURS[seg],
                        label=f"{run}: {seg}" if len(runs) > 1 else seg)
                ax.fill_between(g["step"], g["ci_low"], g["ci_high"], color=SEGMENT_COLOURS[seg], alpha=0.12, lw=0)
        ax.set_title(role, fontsize=9)
        ax.set_xlabel("training step")
    axes[0].set_ylabel(metric)
    figures.legend_below(fig, axes[0].get_legend_handles_labels()[0], "third of depth", 7)
    fig.suptitle(figures.wrap(f"Mean {metric} per third of the depth against training step (95% bootstrap CI)",
                              fig.get_size_inches()[0] - 0.3), fontsize=9)
    return fig


def _heatmap(df: pd.DataFrame, run: str, metric: str) -> Figure:
    d = df[(df["metric"] == metric) & (df["run"] == run)]
    roles = list(dict.fromkeys(d["role"]))
    fig = Figure(figsize=(2.6 * len(roles) + 1, 3.6), layout="constrained")
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    for ax, role in zip(axes, roles):
        piv = d[d["role"] == role].pivot(index="layer", columns="step", values="mean")  # (L, steps)
        im = ax.imshow(piv.to_numpy(float), aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(np.arange(piv.shape[1]), piv.columns, fontsize=6, rotation=90)
        ax.set_title(role, fontsize=9)
        ax.set_xlabel("training step")
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("layer")
    fig.suptitle(figures.wrap(f"{run}: mean {metric} per layer and step", fig.get_size_inches()[0] - 0.3), fontsize=9)
    return fig


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"
