"""The by-step report: metrics against training step (checkpoints, or a run recorded during training).

Written by ``layergrad report --checkpoints ...`` and for runs recorded by ``LayerGradCallback``
(:mod:`layergrad.analysis.checkpoints`): ``steps.csv`` (per run, step, role, third of the depth and
metric: mean over examples with a 95% bootstrap interval), ``layer_steps.csv`` (per layer: the heat
map's cells), ``checkpoints.csv`` (which folder is which step), one figure per metric of the
thirds against step (one panel per role), one layer x step heat map per run and metric, and
``index.html``.
"""
from __future__ import annotations

import html as _html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layergrad.analysis import checkpoints as ck

SEGMENT_COLOURS = {"early": "#1f77b4", "middle": "#2ca02c", "late": "#d62728", "all": "#555555"}
LINESTYLES = ("-", "--", ":", "-.")


def write(series: list[ck.StepSeries], out: Path, metrics, figure_metrics, *, n_boot: int, seed: int):
    """Write the by-step report under ``out``; returns ``(index, notes, tables)``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    t = {
        "steps": ck.step_table(series, metrics, n_boot=n_boot, seed=seed),
        "layer_steps": ck.layer_step_table(series, figure_metrics),
        "checkpoints": pd.DataFrame(
            [(s.run, s.source, st, str(p), g.n, g.n_layers) for s in series for st, g, p in zip(s.steps, s.groups, s.paths)],
            columns=["run", "source", "step", "path", "n_ok", "n_layers"]),
    }
    for name, df in t.items():
        df.to_csv(out / f"{name}.csv", index=False)
    figs = [_against_step(t["steps"], m, out) for m in figure_metrics if (t["steps"]["metric"] == m).any()]
    figs += [_heatmap(t["layer_steps"], s.run, m, out) for s in series for m in figure_metrics
             if ((t["layer_steps"]["metric"] == m) & (t["layer_steps"]["run"] == s.run)).any()]
    notes = [n for s in series for g in s.groups for n in g.notes]
    notes += [f"{s.run!r}: {len(s.steps)} steps ({', '.join(map(str, s.steps))}), {s.source}" for s in series]
    notes += [f"{s.run!r} has a single step: nothing to see against step" for s in series if len(s.steps) == 1]
    body = "".join(f"<li>{_html.escape(n)}</li>" for n in notes)
    imgs = "".join(f'<figure><img src="figures/{f}" style="max-width:100%"><figcaption>{f}</figcaption></figure>' for f in figs)
    links = " ".join(f'<a href="{n}.csv">{n}.csv</a>' for n in t)
    shown = t["steps"][t["steps"]["segment"] != "all"]
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>layergrad by-step report</title></head>"
        f"<body><h1>layergrad by-step report: {' vs '.join(_html.escape(s.run) for s in series)}</h1><ul>{body}</ul>"
        "<p>Per step, role and third of the depth: per example the mean over the third's layers, then the mean over "
        f"examples, with a 95% percentile bootstrap interval ({n_boot} resamples, seed {seed}).</p><p>{links}</p>{imgs}"
        f"{shown.to_html(index=False, float_format='%.4g', max_rows=400)}</body></html>", encoding="utf-8")
    return index, notes, t


def _against_step(df: pd.DataFrame, metric: str, out: Path) -> str:
    d = df[(df["metric"] == metric) & (df["segment"] != "all")]
    roles = list(dict.fromkeys(d["role"]))
    fig = Figure(figsize=(3.2 * len(roles), 2.9))
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    runs = list(dict.fromkeys(d["run"]))
    for ax, role in zip(axes, roles):
        for j, run in enumerate(runs):
            for seg, g in d[(d["role"] == role) & (d["run"] == run)].groupby("segment", sort=False):
                ls = LINESTYLES[j % len(LINESTYLES)]
                ax.plot(g["step"], g["mean"], ls, marker="o", ms=3, color=SEGMENT_COLOURS[seg],
                        label=f"{run}: {seg}" if len(runs) > 1 else seg)
                ax.fill_between(g["step"], g["ci_low"], g["ci_high"], color=SEGMENT_COLOURS[seg], alpha=0.12, lw=0)
        ax.set_title(role)
        ax.set_xlabel("training step")
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    name = f"steps_{metric}.png"
    fig.savefig(out / "figures" / name, dpi=150)
    return name


def _heatmap(df: pd.DataFrame, run: str, metric: str, out: Path) -> str:
    d = df[(df["metric"] == metric) & (df["run"] == run)]
    roles = list(dict.fromkeys(d["role"]))
    fig = Figure(figsize=(2.6 * len(roles) + 1, 3.4))
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    for ax, role in zip(axes, roles):
        piv = d[d["role"] == role].pivot(index="layer", columns="step", values="mean")  # (L, steps)
        im = ax.imshow(piv.to_numpy(float), aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(np.arange(piv.shape[1]), piv.columns, fontsize=6, rotation=90)
        ax.set_title(role)
        ax.set_xlabel("training step")
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("layer")
    fig.suptitle(f"{run}: mean {metric} per layer and step", fontsize=9)
    fig.tight_layout()
    name = f"heatmap_{metric}_{_slug(run)}.png"
    fig.savefig(out / "figures" / name, dpi=150)
    return name


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"
