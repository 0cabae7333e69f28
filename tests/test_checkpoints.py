"""Metrics against training step: checkpoint runs grouped by step, runs recorded by LayerGradCallback,
refusal of mixed architectures, the CLI path, and experiments with several [[models]]."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import make_run, noise

from layergrad.analysis import AnalysisError
from layergrad.analysis.checkpoints import IncompatibleCheckpoints, parse_checkpoint
from layergrad.cli import main
from layergrad.report.build import make_report

ROLES = ("q", "o")
L = 5  # thirds of 5 layers (np.array_split): [0, 1], [2, 3], [4]
THIRDS = {"early": [0, 1], "middle": [2, 3], "late": [4], "all": [0, 1, 2, 3, 4]}


def checkpoint(tmp_path, step, values, *, folder=None, **kw):
    extra = {"model_path": f"/ckpts/run/checkpoint-{step}", "model_type": "llama", **kw.pop("manifest_extra", {})}
    return make_run(tmp_path / (folder or f"ckpt-{step}"), values, kw.pop("roles", ROLES), manifest_extra=extra, seed=step, **kw)


@pytest.fixture
def three(tmp_path):
    """Checkpoints at steps 100, 20, 300 (folder order is not step order); one NaN cell at step 300."""
    rng = np.random.default_rng(0)
    vals = {}
    for step, n in ((100, 4), (20, 3), (300, 5)):
        v = {"nuclear": noise(rng, n, len(ROLES), L, loc=1 + step / 100), "top1_share": noise(rng, n, len(ROLES), L, loc=0.3)}
        if step == 300:
            v["nuclear"][1, 1, 3] = np.nan  # example 1, role o, layer 3 (middle third)
        checkpoint(tmp_path, step, v)
        vals[step] = v
    return tmp_path, vals


def test_checkpoints_grouped_by_step_against_a_computation_here(three):
    tmp, vals = three
    rep = make_report([], tmp / "out", checkpoints=[str(tmp / "ckpt-*")], metrics=("nuclear", "top1_share"), n_boot=200)
    steps = pd.read_csv(tmp / "out" / "steps.csv")
    assert sorted(set(steps["step"])) == [20, 100, 300] and set(steps["run"]) == {"checkpoints"}
    for step, v in vals.items():
        for metric in ("nuclear", "top1_share"):
            for r, role in enumerate(ROLES):
                for seg, layers in THIRDS.items():
                    x = v[metric][:, r, layers]  # (n, |segment|)
                    per_example = np.array([np.mean(row[np.isfinite(row)]) for row in x])  # NaN layers left out
                    row = steps[(steps.step == step) & (steps.metric == metric) & (steps.role == role) & (steps.segment == seg)]
                    assert len(row) == 1
                    row = row.iloc[0]
                    assert row["mean"] == pytest.approx(per_example.mean(), rel=1e-12)
                    assert row.n == len(per_example) and row.first_layer == layers[0] and row.last_layer == layers[-1]
                    assert row.ci_low <= row["mean"] <= row.ci_high
    # the NaN cell: example 1's middle-third value of role o at step 300 is its layer 2 alone
    o_mid = steps[(steps.step == 300) & (steps.metric == "nuclear") & (steps.role == "o") & (steps.segment == "middle")].iloc[0]
    v = vals[300]["nuclear"][:, 1]
    assert o_mid["mean"] == pytest.approx(np.mean([v[0, 2:4].mean(), v[1, 2], *v[2:, 2:4].mean(1)]), rel=1e-12)
    # the heat map's cells: per layer, the mean over examples
    cells = pd.read_csv(tmp / "out" / "layer_steps.csv")
    c = cells[(cells.step == 100) & (cells.metric == "nuclear") & (cells.role == "q")].sort_values("layer")
    np.testing.assert_allclose(c["mean"].to_numpy(), vals[100]["nuclear"][:, 0].mean(0), rtol=1e-12)
    assert cells[(cells.step == 300) & (cells.role == "o") & (cells.layer == 3) & (cells.metric == "nuclear")].n.item() == 4
    figs = {p.name for p in (tmp / "out" / "figures").glob("*.png")}
    assert {"steps_nuclear.png", "steps_top1_share.png", "heatmap_nuclear_checkpoints.png"} <= figs
    assert rep.index.exists() and "checkpoints" in rep.index.read_text()
    assert pd.read_csv(tmp / "out" / "checkpoints.csv")["step"].tolist() == [20, 100, 300]


def test_step_given_or_from_the_step_column(tmp_path):
    rng = np.random.default_rng(1)
    a = make_run(tmp_path / "a", {"nuclear": noise(rng, 3, 2, L)})  # model path names no checkpoint
    b = make_run(tmp_path / "b", {"nuclear": noise(rng, 3, 2, L)})
    with pytest.raises(AnalysisError, match=r"cannot tell the training step.*give it as STEP="):
        make_report([], tmp_path / "out", checkpoints=[str(a)], n_boot=20)
    rep = make_report([], tmp_path / "out", checkpoints=[f"7={a}", f"run@3={b}"], metrics=("nuclear",), n_boot=20)
    runs = rep.tables["checkpoints"]
    assert list(zip(runs.run, runs.step)) == [("checkpoints", 7), ("run", 3)]
    assert parse_checkpoint("cot=runs/c*") == parse_checkpoint("cot=runs/c*") and parse_checkpoint("12=x").step == 12
    with pytest.raises(AnalysisError, match="two training runs|repeat a step"):
        make_report([], tmp_path / "out2", checkpoints=[f"7={a}", f"7={b}"], n_boot=20)


@pytest.mark.parametrize("what,kw,message", [
    ("depth", {"values_layers": 7}, r"n_layers 5 in .*ckpt-100.* vs 7 in .*ckpt-200"),
    ("modules", {"roles": ("q", "k")}, r"module_names differ: 5 only in .*ckpt-100.* \(e\.g\. model\.layers\.0\.self_attn\.o_proj"),
    ("family", {"manifest_extra": {"model_type": "gpt2"}}, r"model_type 'llama' in .* vs 'gpt2'"),
])
def test_checkpoints_of_different_architectures_are_refused(tmp_path, what, kw, message):
    rng = np.random.default_rng(2)
    checkpoint(tmp_path, 100, {"nuclear": noise(rng, 3, 2, L)})
    layers = kw.pop("values_layers", L)
    checkpoint(tmp_path, 200, {"nuclear": noise(rng, 3, 2, layers)}, **kw)
    with pytest.raises(IncompatibleCheckpoints, match=message):
        make_report([], tmp_path / "out", checkpoints=[str(tmp_path / "ckpt-*")], n_boot=20)


def test_cli_by_step_and_its_errors(three, capsys):
    tmp, _ = three
    assert main(["report", "--checkpoints", str(tmp / "ckpt-*"), "--out", str(tmp / "cli"), "--n-boot", "20", "--metric", "nuclear"]) == 0
    assert (tmp / "cli" / "steps.csv").exists() and capsys.readouterr().out.strip().endswith("index.html")
    for argv, want in (
        (["--checkpoints", str(tmp / "none-*")], "matches no folder"),
        (["--checkpoints", f"x@y={tmp / 'ckpt-20'}"], "the step after '@' must be a whole number"),
        (["--run", f"plain={tmp / 'ckpt-20'}", "--run", f"more={tmp / 'ckpt-100'}", "--n-boot", "0"], "--n-boot and --n-perm"),
    ):
        assert main(["report", *argv, "--out", str(tmp / "bad")]) == 2
        err = capsys.readouterr().err
        assert want.split("|")[0] in err or want.split("|")[-1] in err, err
        assert "Traceback" not in err
    for argv, want in (([], "one of the arguments --run --checkpoints is required"),
                       (["--checkpoints", str(tmp / "ckpt-*"), "--run", str(tmp / "ckpt-20")], "not allowed with argument")):
        with pytest.raises(SystemExit) as e:
            main(["report", *argv, "--out", str(tmp / "bad")])
        assert e.value.code == 2 and want in capsys.readouterr().err


def test_callback_run_reported_against_step(tmp_path, tokenizer):
    """A run recorded by LayerGradCallback (steps 0, 2, 4): per-step values from its own modules table."""
    pytest.importorskip("transformers")
    from helpers import train

    from layergrad.integrations import LayerGradCallback
    from layergrad.store import load_results

    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=2, modules="attn", stats_dtype="float64")
    train(tmp_path, tokenizer, steps=5, callbacks=[cb])
    rep = make_report([("train", tmp_path / "rec")], tmp_path / "out", metrics=("nuclear", "effective_rank"), n_boot=50)
    steps = rep.tables["steps"]
    assert sorted(set(steps["step"])) == [0, 2, 4] and set(steps["run"]) == {"train"}
    res = load_results(tmp_path / "rec")
    mods = res.modules.merge(res.examples[["id", "step"]], on="id")
    n_layers = res.manifest["n_layers"]  # 3: thirds [0], [1], [2]
    for (step, role, metric) in [(0, "q", "nuclear"), (4, "o", "effective_rank"), (2, "v", "nuclear")]:
        for seg, layers in {"early": [0], "late": [n_layers - 1], "all": list(range(n_layers))}.items():
            m = mods[(mods.step == step) & (mods.role == role) & mods.layer.isin(layers)]
            want = m.groupby("id")[metric].mean().mean()
            got = steps[(steps.step == step) & (steps.role == role) & (steps.metric == metric) & (steps.segment == seg)]["mean"].item()
            assert got == pytest.approx(want, rel=1e-12)
    assert (tmp_path / "out" / "figures" / "heatmap_nuclear_train.png").exists()
    # a recorded run beside an ordinary one is refused, naming both
    rng = np.random.default_rng(3)
    plain = make_run(tmp_path / "plain", {"nuclear": noise(rng, 3, 4, 3)}, roles=("q", "k", "v", "o"))
    with pytest.raises(AnalysisError, match=r"recorded during training .*report them apart from the ordinary run\(s\) .*plain"):
        make_report([("train", tmp_path / "rec"), ("plain", plain)], tmp_path / "out2", n_boot=20)


def test_experiment_with_two_models_writes_a_cross_model_report(tmp_path, tokenizer):
    from conftest import save_model, write_json

    from layergrad.analysis import load_group

    llama, qwen = save_model(tmp_path, "llama", tokenizer), save_model(tmp_path, "qwen2", tokenizer)
    (tmp_path / "data").mkdir()
    write_json(tmp_path / "data" / "short.json", [{"instruction": f"Q{i}", "output": "42"} for i in range(4)])
    write_json(tmp_path / "data" / "long.json", [{"instruction": f"Q{i}", "output": "Step 1: 3 + 4 = 7. The answer is 7."} for i in range(4)])
    conf = tmp_path / "exp.toml"
    conf.write_text(f'''name = "two models"
out = "{tmp_path / 'out'}"
data_root = "data"
[run]
modules = "attn"
prompt_mode = "base"
progress = false
[report]
n_boot = 30
n_perm = 99
metrics = ["nuclear", "effective_rank"]
normalise = "mean"
[[models]]
name = "tiny llama"
model = "{llama}"
[[models]]
name = "tiny qwen"
model = "{qwen}"
[[groups]]
label = "short"
data = "short.json"
[[groups]]
label = "long"
data = "long.json"
''')
    assert main(["experiment", str(conf)]) == 0
    out = tmp_path / "out"
    assert (out / "reports" / "tiny-llama" / "all-groups" / "curves.csv").exists()  # the per-model reports stay
    assert (out / "reports" / "tiny-qwen" / "all-groups" / "curves.csv").exists()
    sim = pd.read_csv(out / "reports" / "cross-model" / "short" / "model_similarity.csv")
    assert set(zip(sim.run_a, sim.run_b)) == {("tiny llama", "tiny qwen")} and (sim.normalise == "mean").all()
    assert (out / "reports" / "cross-model" / "long" / "model_similarity.csv").exists()
    # the correlation written out here: mean curves over examples, / their mean, onto 21 points, Pearson
    a = load_group("a", out / "runs" / "tiny-llama" / "short")
    b = load_group("b", out / "runs" / "tiny-qwen" / "short")
    grid, x = np.linspace(0, 1, 21), np.array([0, 0.5, 1])
    ca, cb = a.values["nuclear"][:, a.series.index("v")].mean(0), b.values["nuclear"][:, b.series.index("v")].mean(0)
    want = np.corrcoef(np.interp(grid, x, ca / ca.mean()), np.interp(grid, x, cb / cb.mean()))[0, 1]
    assert sim[(sim.role == "v") & (sim.metric == "nuclear")].correlation.item() == pytest.approx(want, rel=1e-12)
    overview = (out / "index.html").read_text()
    assert "all models" in overview and 'href="reports/cross-model/short/index.html"' in overview
    conf.write_text(conf.read_text().replace('normalise = "mean"', 'normalise = "max"'))
    assert main(["experiment", str(conf)]) == 2  # refused (before any report), not a traceback
