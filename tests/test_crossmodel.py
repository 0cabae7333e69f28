"""Cross-model reports: runs of different depth and family compared on relative depth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import make_run, noise

from layergrad.analysis import IncompatibleGroups, load_group
from layergrad.analysis import crossmodel
from layergrad.report.build import make_report


def shaped(rng, n, L, roles, scale=1.0):
    """Values rising with relative depth (same shape at any depth), times a width scale, plus noise."""
    x = np.arange(L) / (L - 1)
    base = np.stack([1.0 + 2.0 * x ** 2 + 0.3 * r for r in range(len(roles))])  # (R, L)
    return scale * base[None] * (1 + 0.05 * rng.standard_normal((n, len(roles), L)))


def test_two_and_four_layer_models_and_two_families(tmp_path):
    rng = np.random.default_rng(0)
    two = make_run(tmp_path / "two", {"nuclear": shaped(rng, 6, 2, ("q", "o")), "frobenius": shaped(rng, 6, 2, ("q", "o"))},
                   roles=("q", "o"))
    four = make_run(tmp_path / "four", {"nuclear": shaped(rng, 7, 4, ("q", "o")), "frobenius": shaped(rng, 7, 4, ("q", "o"))},
                    roles=("q", "o"))
    other = make_run(tmp_path / "fam", {"nuclear": 40 * noise(rng, 5, 2, 5), "frobenius": 40 * noise(rng, 5, 2, 5)},
                     roles=("q", "k"), model="tiny-gpt2")
    rep = make_report([("two", two), ("four", four), ("family", other)], tmp_path / "out", metrics=("nuclear", "frobenius"),
                      n_boot=50, seed=0, normalise="mean")
    sim = pd.read_csv(tmp_path / "out" / "model_similarity.csv")
    assert (tmp_path / "out" / "figures" / "model_similarity.png").exists() and rep.index.exists()
    # roles in one model only are named, never silently dropped
    assert any("only in 'two': o" in n and "only in 'family': k" in n for n in rep.notes)
    assert set(zip(sim["run_a"], sim["run_b"])) == {("two", "four"), ("two", "family"), ("four", "family")}
    assert set(sim[sim["run_b"] == "family"]["role"]) == {"q"}
    # the similarity, computed here: mean curve per layer, np.interp onto 21 points of relative depth, Pearson
    grid = np.linspace(0, 1, 21)
    ga, gb = load_group("two", two), load_group("four", four)
    for metric in ("nuclear", "frobenius"):
        for r, role in enumerate(("q", "o")):
            ca = ga.values[metric][:, r].mean(0)
            cb = gb.values[metric][:, r].mean(0)
            ca, cb = ca / ca.mean(), cb / cb.mean()
            want = np.corrcoef(np.interp(grid, [0, 1], ca), np.interp(grid, [0, 1 / 3, 2 / 3, 1], cb))[0, 1]
            row = sim[(sim.run_a == "two") & (sim.run_b == "four") & (sim.role == role) & (sim.metric == metric)].iloc[0]
            assert row.correlation == pytest.approx(want, rel=1e-12)
            assert row.ci_low <= row.correlation <= row.ci_high and row.layers_a == 2 and row.layers_b == 4
    thirds = pd.read_csv(tmp_path / "out" / "depth_thirds.csv")
    four_q = thirds[(thirds.group == "four") & (thirds.role == "q") & (thirds.metric == "nuclear")]
    assert list(zip(four_q.first_layer, four_q.last_layer)) == [(0, 1), (2, 2), (3, 3)]  # thirds of its own 4 layers


def test_normalise_options():
    c = np.array([1.0, 2.0, 3.0])
    assert crossmodel.normalise_curve(c, "mean").tolist() == [0.5, 1.0, 1.5]
    np.testing.assert_allclose(crossmodel.normalise_curve(c, "zscore"), (c - 2) / np.std(c))
    with pytest.raises(ValueError, match="unknown normalise 'max'"):
        crossmodel.normalise_curve(c, "max")


def test_runs_sharing_no_role_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = make_run(tmp_path / "a", {"nuclear": noise(rng, 4, 2, 3)}, roles=("q", "o"))
    b = make_run(tmp_path / "b", {"nuclear": noise(rng, 4, 2, 5)}, roles=("gate", "up"))
    with pytest.raises(IncompatibleGroups, match=r"'A' has roles \['q', 'o'\], 'B' has \['gate', 'up'\]: none in common"):
        make_report([("A", a), ("B", b)], tmp_path / "out", metrics=("nuclear",), n_boot=20)
