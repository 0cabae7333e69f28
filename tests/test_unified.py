"""Drop-in compatibility with the follow-up paper's script (``get_grad_vector_initial_try.py``), against
what that script wrote (shared/golden/gradient_unified), and the layer x layer cosines from the factors
against dense autograd gradients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import GOLDEN, make_model, write_json
from layergrad.cli import main
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.inputs.prompting import encode
from layergrad.inputs.targets import find_targets
from layergrad.measure import oracle
from layergrad.run import engine
from layergrad.store import load_results
from layergrad.store.paper import ReferenceFormatError, export_reference, import_reference

UNIFIED = GOLDEN / "gradient_unified"
needs_golden = pytest.mark.skipif(not (UNIFIED / "reference_base.jsonl").exists(),
                                  reason="shared/golden/gradient_unified not present beside the repository")
TOL = 1e-4
PARAM_KEYS = ["M_mean", "M_max", "M_min", "frobenius_norm", "S_list"]


def compare_unified(got_lines, want_lines, tol=TOL) -> float:
    """Same keys in the same order; values within ``tol`` relative (M_* to the matrix's largest entry,
    S_list to its largest value, cosine matrices to their largest entry); returns the worst error."""
    assert len(got_lines) == len(want_lines)
    worst = 0.0

    def close(g, w, scale, what):
        nonlocal worst
        err = abs(g - w) / scale
        worst = max(worst, err)
        assert err < tol, (what, g, w)

    for got, want in zip(got_lines, want_lines):
        assert list(got) == list(want)
        assert got["instruction"] == want["instruction"] and got["output"] == want["output"]
        close(got["loss"], want["loss"], abs(want["loss"]), "loss")
        for name in want:
            if not name.endswith(".weight"):
                continue
            g, w = got[name], want[name]
            assert list(g) == list(w) == PARAM_KEYS
            scale_m = max(abs(w["M_max"]), abs(w["M_min"]))
            for k in ("M_mean", "M_max", "M_min"):
                close(g[k], w[k], scale_m, (name, k))
            close(g["frobenius_norm"], w["frobenius_norm"], w["frobenius_norm"], (name, "frobenius_norm"))
            assert len(g["S_list"]) == len(w["S_list"])
            for i, (a, b) in enumerate(zip(g["S_list"], w["S_list"])):
                close(a, b, w["S_list"][0], (name, "S_list", i))
        assert list(got["cosine_sim"]) == list(want["cosine_sim"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
        for proj, table in want["cosine_sim"].items():
            mine = got["cosine_sim"][proj]
            assert list(mine) == ["layer_indices", "matrix"] and mine["layer_indices"] == table["layer_indices"]
            scale = max(abs(x) for row in table["matrix"] for x in row)
            for ra, rb in zip(mine["matrix"], table["matrix"]):
                assert len(ra) == len(rb)
                for a, b in zip(ra, rb):
                    close(a, b, scale, (proj, "matrix"))
        assert list(got["cosine_sim_qkvo"]) == list(want["cosine_sim_qkvo"])
        for layer, info in want["cosine_sim_qkvo"].items():
            assert list(got["cosine_sim_qkvo"][layer]) == list(info) == ["q_proj_x_o_proj", "k_proj_x_v_proj"]
            for k, v in info.items():
                close(got["cosine_sim_qkvo"][layer][k], v, 1.0, (layer, k))  # cosines: absolute, on the scale of 1
    return worst


def _golden(chat: bool):
    return [json.loads(line) for line in (UNIFIED / f"reference_{'chat' if chat else 'base'}.jsonl").open()]


@needs_golden
@pytest.mark.parametrize("chat", [False, True], ids=["base", "chat"])
def test_drop_in_reproduces_the_follow_ups_output(tmp_path, chat):
    save = tmp_path / "out" / "S.jsonl"
    argv = ["run", "--format", "unified", "--data_path", str(GOLDEN / "examples.json"), "--save_path", str(save),
            "--model_name_or_path", str(GOLDEN / "tiny-llama"), "--max_length", "1024", "--no-progress"]
    if chat:
        argv.append("--run_instruct_version")
    assert main(argv) == 0
    compare_unified([json.loads(line) for line in save.open()], _golden(chat))
    # rerunning resumes from SAVE_PATH.layergrad: nothing recomputed, the same file
    before = save.read_text()
    assert main(argv) == 0
    assert save.read_text() == before


@needs_golden
def test_import_of_the_follow_ups_file_feeds_report_and_round_trips(tmp_path):
    from layergrad.report.build import make_report

    src = UNIFIED / "reference_chat.jsonl"
    want = _golden(True)
    assert import_reference(src, tmp_path / "imp") == 5
    res = load_results(tmp_path / "imp")
    assert res.manifest["spectrum_k"] is None and res.manifest["cosine_layers"] is False  # 2 layers: no gap2
    assert set(res.modules["role"]) == {"q", "k", "v", "o"}
    # every metric from the file's own S_list, by the formulas, in float64 here
    first = res.modules[res.modules["id"] == res.ok["id"].iloc[0]]
    for _, m in first.iterrows():
        s = np.asarray(want[0][m["param"]]["S_list"], dtype=np.float64)
        p = s / s.sum()
        assert m["nuclear"] == pytest.approx(s.sum(), rel=1e-12)
        assert m["spectral"] == pytest.approx(s.max(), rel=1e-12)
        assert m["effective_rank"] == pytest.approx(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-12)
        assert m["min_sigma"] == pytest.approx(s.min(), rel=1e-12)
    # the store holds exact cosines: the file's value * (n_a n_b + 1e-9) / (n_a n_b)
    c = res.cosine[(res.cosine["id"] == res.ok["id"].iloc[0]) & (res.cosine["kind"] == "next_layer")
                   & (res.cosine["role"] == "o")].iloc[0]
    n0 = want[0]["model.layers.0.self_attn.o_proj.weight"]["frobenius_norm"]
    n1 = want[0]["model.layers.1.self_attn.o_proj.weight"]["frobenius_norm"]
    assert c["cosine"] == pytest.approx(want[0]["cosine_sim"]["o_proj"]["matrix"][0][1] * (n0 * n1 + 1e-9) / (n0 * n1), rel=1e-12)
    assert set(res.cosine["kind"]) == {"next_layer", "q_o", "k_v"}
    # export gives the file back: exactly but for the matrices' diagonals, recomputed as n^2 / (n^2 + 1e-9) in
    # float64 from the file's norm where the script divided float32 values (2e-7 apart here)
    export_reference(tmp_path / "imp", tmp_path / "back.jsonl", "unified")
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").open()]
    assert compare_unified(back, want, tol=1e-6) < 1e-6
    cos_keys = ("cosine_sim", "cosine_sim_qkvo")
    assert [{k: v for k, v in r.items() if k not in cos_keys} for r in back] == [{k: v for k, v in r.items() if k not in cos_keys} for r in want]
    for r, w in zip(back, want):
        for proj, table in w["cosine_sim"].items():
            off = [(i, j) for i in range(len(table["matrix"])) for j in range(len(table["matrix"])) if i != j]
            assert all(r["cosine_sim"][proj]["matrix"][i][j] == pytest.approx(table["matrix"][i][j], rel=1e-12) for i, j in off)
        assert all(r["cosine_sim_qkvo"][layer][k] == pytest.approx(v, rel=1e-12)
                   for layer, info in w["cosine_sim_qkvo"].items() for k, v in info.items())
    # and the report reads it (curves of effective rank, cosine tables)
    rep = make_report([("chat", tmp_path / "imp")], tmp_path / "report", n_boot=50, n_perm=50)
    assert rep.index.exists()
    curves = rep.tables["curves"]
    er = curves[(curves["metric"] == "effective_rank") & (curves["role"] == "q") & (curves["layer"] == 0)]
    want_er = np.mean([res.modules[(res.modules["id"] == i) & (res.modules["module"] == "model.layers.0.self_attn.q_proj")]
                       ["effective_rank"].iloc[0] for i in res.ok["id"]])
    assert float(er["mean"].iloc[0]) == pytest.approx(want_er, rel=1e-12)
    assert set(rep.tables["cosine"]["kind"]) == {"next_layer", "q_o", "k_v"}


def test_layer_pair_cosines_equal_dense_gradients_and_export_the_scripts_convention(tmp_path, tokenizer, records):
    """3 layers: gap2 pairs too. Every matrix entry against dense autograd gradients, in float64 here."""
    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", records[:3])
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "r"), progress=False, stats_dtype="float64", cosine_layers=True,
                    batch_size=2, prompt_mode="base", modules="q,k,v,o", spectrum_k=None, elementwise=True)
    assert cfg.cosine is True  # implied
    engine.run(cfg, loaded=LoadedModel(model, tokenizer, "t", "t", "fp", "float64"))
    res = load_results(cfg.out)
    assert set(res.cosine["kind"]) == {"next_layer", "gap2", "q_o", "k_v"}
    export_reference(cfg.out, tmp_path / "u.jsonl", "unified")
    lines = [json.loads(line) for line in (tmp_path / "u.jsonl").open()]
    targets = find_targets(model, "q,k,v,o")
    exs = {e.id: e for e in load_examples([str(data)])[0]}
    for (_, ex), line in zip(res.ok.iterrows(), lines):
        enc = encode(exs[ex["id"]], tokenizer, "base", 1024)
        _, grads = oracle.example_gradients(model, enc.input_ids, enc.n_prompt, targets)
        g = {name: grads[name].double().flatten() for name in grads}

        def script(a, b):  # the script's convention, on the dense gradients
            return float(g[a] @ g[b] / (g[a].norm() * g[b].norm() + 1e-9))

        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            table = line["cosine_sim"][proj]
            assert table["layer_indices"] == [0, 1, 2]
            names = [f"model.layers.{i}.self_attn.{proj}" for i in range(3)]
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    assert table["matrix"][i][j] == pytest.approx(script(a, b), rel=1e-6, abs=1e-7)
        for layer in range(3):
            info = line["cosine_sim_qkvo"][str(layer)]
            pre = f"model.layers.{layer}.self_attn."
            assert info["q_proj_x_o_proj"] == pytest.approx(script(pre + "q_proj", pre + "o_proj"), rel=1e-6, abs=1e-7)
            assert info["k_proj_x_v_proj"] == pytest.approx(script(pre + "k_proj", pre + "v_proj"), rel=1e-6, abs=1e-7)
        s = torch.linalg.svdvals(grads["model.layers.1.self_attn.k_proj"].double())
        got = line["model.layers.1.self_attn.k_proj.weight"]["S_list"]
        assert len(got) == len(s) == min(model.config.hidden_size, 2 * 4)  # every one of the min(out, in) values
        assert np.allclose(got, s.numpy(), rtol=0, atol=1e-6 * float(s[0]))


def test_drop_in_refuses_what_it_cannot_do_or_would_overwrite(tmp_path, capsys):
    data = write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}])
    save = tmp_path / "S.jsonl"
    save.write_text('{"instruction": "old", "output": "x", "loss": 1.0}\n')
    base = ["run", "--format", "unified", "--data_path", str(data), "--save_path", str(save)]
    assert main(base) == 2
    assert "not written by layergrad" in capsys.readouterr().err
    assert save.read_text() == '{"instruction": "old", "output": "x", "loss": 1.0}\n'  # nothing lost
    assert main(base + ["--run_scratch_version"]) == 2
    assert "init_weights" in capsys.readouterr().err
    assert main(["run", "--format", "unified", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "drop-in flags" in capsys.readouterr().err


def test_import_refuses_a_file_mixing_both_scripts_lines(tmp_path):
    old = {"instruction": "a", "output": "b", "loss": 1.0,
           "model.layers.0.self_attn.q_proj.weight": {k: 1.0 for k in ("M_mean", "M_max", "M_min", "frobenius_norm", "S_sum", "S_max", "S_min")}}
    new = {"instruction": "c", "output": "d", "loss": 1.0,
           "model.layers.0.self_attn.q_proj.weight": {"M_mean": 0.0, "M_max": 1.0, "M_min": -1.0, "frobenius_norm": 1.0, "S_list": [1.0, 0.0]},
           "cosine_sim": {}, "cosine_sim_qkvo": {}}
    bad = dict(new, **{"model.layers.0.self_attn.k_proj.weight": {"frobenius_norm": 1.0, "S_list": "x"}})
    p = tmp_path / "mixed.jsonl"
    p.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    with pytest.raises(ReferenceFormatError, match="mixes lines"):
        import_reference(p, tmp_path / "imp")
    p.write_text(json.dumps(new) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ReferenceFormatError, match=r"line 2: .*k_proj"):
        import_reference(p, tmp_path / "imp2")


def test_the_memory_estimate_counts_every_kept_gradient_with_cosine_layers(tokenizer):
    from layergrad.run import memory

    model = make_model("llama", len(tokenizer))
    targets = find_targets(model, "q,k,v,o")
    shape = memory.model_shape_of(model)
    base = memory.estimate_batch_bytes(3, 50, shape, targets, 8)
    kept = memory.estimate_batch_bytes(3, 50, shape, targets, 8, keep_all_gradients=True)
    per_layer = sum(t.out_features for t in targets if t.layer == 0)
    extra = (sum(t.out_features for t in targets) - per_layer) * 3 * 50 * 8  # every layer's D but the one counted
    assert kept - base == pytest.approx(extra * (1 + memory.SLACK), abs=2)
