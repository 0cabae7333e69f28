"""The cross-model report: groups whose models differ in depth, width or family, on relative depth.

Written when the groups of ``layergrad report`` cannot be compared layer by layer
(:func:`layergrad.analysis.groups.comparability_problems`): ``model_similarity.csv`` (one row per
pair of runs, role and metric: the correlation of the gridded mean curves with its bootstrap
interval, :mod:`layergrad.analysis.crossmodel`), ``depth_curves.csv``, ``depth_thirds.csv``, a figure
of the curves against relative depth per metric, a heat map of the similarities, and ``index.html``.
"""
from __future__ import annotations

import html as _html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from layergrad.analysis import crossmodel
from layergrad.analysis.groups import Group


def write(groups: list[Group], out: Path, metrics, *, n_boot: int, seed: int, normalise: str = "none"):
    """Write the cross-model report under ``out``; returns ``(index, notes, tables)``."""
    notes = crossmodel.role_coverage(groups)  # refuses groups sharing no role
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    t = {
        "model_similarity": crossmodel.similarity_table(groups, metrics, n_boot=n_boot, seed=seed, normalise=normalise),
        "depth_curves": crossmodel.depth_curves(groups, metrics, normalise=normalise),
        "depth_thirds": crossmodel.thirds_table(groups, metrics, normalise=normalise),
    }
    for name, df in t.items():
        df.to_csv(out / f"{name}.csv", index=False)
    figs = [_curves(t["depth_curves"], m, out, normalise) for m in metrics if (t["depth_curves"]["metric"] == m).any()]
    figs.append(_heatmap(t["model_similarity"], out))
    notes = notes + [f"groups differ in depth or modules, so they are compared on relative depth (layer / (L - 1)); "
                     f"curves interpolated to {len(crossmodel.GRID)} points 0, 0.05, ..., 1; normalise={normalise}"]
    index = out / "index.html"
    body = "".join(f"<li>{_html.escape(n)}</li>" for n in notes)
    imgs = "".join(f'<figure><img src="figures/{f}" style="max-width:100%"><figcaption>{f}</figcaption></figure>' for f in figs if f)
    links = " ".join(f'<a href="{n}.csv">{n}.csv</a>' for n in t)
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>layergrad cross-model report</title></head>"
                     f"<body><h1>layergrad cross-model report: {' vs '.join(_html.escape(g.label) for g in groups)}</h1>"
                     f"<ul>{body}</ul><p>{links}</p>{t['model_similarity'].to_html(index=False, float_format='%.3f')}{imgs}"
                     "</body></html>", encoding="utf-8")
    return index, notes, t


def _curves(df, metric: str, out: Path, normalise: str) -> str:
    d = df[df["metric"] == metric]
    roles = list(dict.fromkeys(d["role"]))
    fig = Figure(figsize=(3.2 * len(roles), 2.8))
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    for ax, role in zip(axes, roles):
        for label, g in d[d["role"] == role].groupby("group", sort=False):
            ax.plot(g["relative_depth"], g["mean"], marker="o", ms=3, label=label)
        ax.set_title(role)
        ax.set_xlabel("relative depth")
    axes[0].set_ylabel(metric + ("" if normalise == "none" else f" ({normalise})"))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = f"depth_{metric}.png"
    fig.savefig(out / "figures" / name, dpi=150)
    return name


def _heatmap(sim, out: Path) -> str | None:
    if not len(sim):
        return None
    sim = sim.assign(pair=sim["run_a"] + " vs " + sim["run_b"], cell=sim["role"] + " / " + sim["metric"])
    piv = sim.pivot_table(index="pair", columns="cell", values="correlation", sort=False)
    fig = Figure(figsize=(max(4, 0.45 * piv.shape[1] + 2), 0.5 * piv.shape[0] + 2))
    ax = fig.subplots()
    im = ax.imshow(piv.to_numpy(float), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
    ax.set_xticks(np.arange(piv.shape[1]), piv.columns, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(piv.shape[0]), piv.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="correlation of mean curves")
    fig.tight_layout()
    fig.savefig(out / "figures" / "model_similarity.png", dpi=150)
    return "model_similarity.png"
