"""Token shares (run --token-shares) against per-token autograd, and their store, merge and report.

The oracle takes, for one example alone, each linear weight's full gradient G from autograd
(``weight.grad`` of the example's mean response loss) and each token's contribution
``g_t = d_t x_t^T`` from the module's input and the loss gradient w.r.t. its output (hooks in this
file), then ``<g_t, G> / ||G||^2``, summed over the modules of a group and the layers of a third
as the schema defines. No package code computes any of it.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from conftest import make_model, write_json
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.inputs.prompting import encode, resolve_mode
from layergrad.run import engine
from layergrad.store import load_results, load_shares

RECS = [
    {"instruction": "What is 12 plus 30?", "input": "", "output": "The answer is 42."},
    {"instruction": "Ava has 3 apples and buys 4 more.", "input": "How many now?", "output": "Step 1: 3 + 4 = 7. The answer is 7."},
    {"instruction": "Would a lion salute a lieutenant?", "input": "", "output": "no"},
]


def loaded(model, tok):
    return LoadedModel(model=model, tokenizer=tok, source="test", path="test", fingerprint="fp", dtype=str(model.dtype).removeprefix("torch."))


def five_layer_llama(vocab: int):
    """Five layers, so thirds hold 2, 2 and 1 layers (np.array_split) and sums over layers are tested."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=5, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.double().eval()


# ---------------------------------------------------------------------------------------
# The oracle: autograd, this file only
# ---------------------------------------------------------------------------------------

_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")


def _group(name: str) -> str | None:
    if re.search(r"\.(self_attn|attn|attention)\.", name):
        return "attn"
    if re.search(r"\.mlp\.", name):
        return "mlp"
    return None


def oracle_shares(model, ids: list[int], n_prompt: int) -> dict[tuple[int, str], tuple[torch.Tensor, float]]:
    """(layer, group) -> (sum over the group's weights of <g_t, G> per token (T,), sum of ||G||^2)."""
    mods = {n: m for n, m in model.named_modules() if _LAYER.search(n) and _group(n) and getattr(m, "weight", None) is not None
            and m.weight.dim() == 2}
    xs, ds, handles = {}, {}, []

    def keep(name):
        def fwd(m, args, out):
            xs[name] = args[0].detach()[0]  # (T, i)
            out.register_hook(lambda g: ds.__setitem__(name, g.detach()[0]))  # (T, o): dloss/d(output)
        return fwd

    for n, m in mods.items():
        handles.append(m.register_forward_hook(keep(n)))
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            x = torch.tensor([ids])
            logits = model(input_ids=x, use_cache=False).logits[0]  # (T, V)
            start = max(n_prompt, 1)  # the loss terms: response tokens, predicted from the position before
            loss = torch.nn.functional.cross_entropy(logits[start - 1 : -1].double(), x[0, start:], reduction="mean")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    out: dict[tuple[int, str], list] = {}
    for n, m in mods.items():
        G = m.weight.grad.double()  # autograd's full gradient: (o, i) for Linear, (i, o) for GPT-2's Conv1D
        X, D = xs[n].double(), ds[n].double()
        g = torch.einsum("to,ti->toi", D, X)  # per-token gradients d_t x_t^T: (T, o, i)
        if type(m).__name__ == "Conv1D":
            g = g.transpose(1, 2)  # GPT-2's Conv1D stores the weight as (in, out)
        assert torch.allclose(g.sum(0), G, rtol=1e-10, atol=1e-12 * G.abs().max())  # autograd's G is the sum of the g_t
        c = (g * G).sum(dim=(1, 2))  # <g_t, G>: (T,)
        key = (int(_LAYER.search(n).group(1)), _group(n))
        acc = out.setdefault(key, [torch.zeros_like(c), 0.0])
        acc[0] += c
        acc[1] += float((G * G).sum())
    model.zero_grad(set_to_none=True)
    return {k: (c, total) for k, (c, total) in out.items()}


def oracle_rows(model, tok, records, n_layers: int) -> dict[tuple[str, str, str], np.ndarray]:
    """(example id, segment, group) -> shares (T,), the thirds by np.array_split written here."""
    thirds = dict(zip(("early", "middle", "late"), np.array_split(np.arange(n_layers), 3)))
    exs, _ = load_examples([str(records)])
    mode = resolve_mode("auto", tok)
    out = {}
    for ex in exs:
        enc = encode(ex, tok, mode, 1024)
        per = oracle_shares(model, enc.input_ids, enc.n_prompt)
        for seg, layers in thirds.items():
            for group in ("attn", "mlp"):
                c = sum(per[(int(layer), group)][0] for layer in layers)
                total = sum(per[(int(layer), group)][1] for layer in layers)
                out[(ex.id, seg, group)] = (c / total).numpy()
    return out


def run_shares(tmp_path, model, tok, records=RECS, name="run", **kw):
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / name), progress=False, stats_dtype="float64", token_shares=True, **kw)
    engine.run(cfg, loaded=loaded(model, tok))
    return cfg.out, data


def assert_shares_match(shares, want, rtol):
    assert len(want) and set(zip(shares["id"], shares["segment"], shares["module_group"])) == set(want)
    for (eid, seg, group), w in want.items():
        got = shares[(shares["id"] == eid) & (shares["segment"] == seg) & (shares["module_group"] == group)].sort_values("position")
        assert got["position"].tolist() == list(range(len(w)))
        s = got["share"].to_numpy()
        assert np.max(np.abs(s - w)) <= rtol * np.max(np.abs(w)), (eid, seg, group)
        assert abs(s.sum() - 1) <= 1e-12


# ---------------------------------------------------------------------------------------
# The math alone
# ---------------------------------------------------------------------------------------


def test_token_contributions_are_inner_products_with_the_gradient():
    from layergrad.spectra.products import token_contributions, token_shares

    g = torch.Generator().manual_seed(0)
    X, D = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    G = sum(torch.outer(D[t], X[t]) for t in range(7))  # (o, i)
    want = torch.tensor([float((torch.outer(D[t], X[t]) * G).sum()) for t in range(7)], dtype=torch.float64)
    c = token_contributions(X, D)
    assert torch.allclose(c, want, rtol=1e-12, atol=0)
    assert math.isclose(float(c.sum()), float((G * G).sum()), rel_tol=1e-12)
    s = token_shares(X, D)
    assert abs(float(s.sum()) - 1) < 1e-12
    assert torch.allclose(s, want / (G * G).sum(), rtol=1e-12)
    K = X @ X.T
    assert torch.equal(token_contributions(X, D, K_X=K), (D @ D.T * K).sum(-1))


def test_token_shares_of_a_zero_gradient_are_nan_not_a_division_error():
    from layergrad.spectra.products import token_shares

    s = token_shares(torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    assert s.shape == (3,) and bool(torch.isnan(s).all())


# ---------------------------------------------------------------------------------------
# The run against the oracle
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama5", "gpt2"])
def test_stored_shares_equal_per_token_autograd(tmp_path, tokenizer, arch):
    """One example a batch (eager attention's float32 softmax makes padded rows differ by ~1e-7)."""
    model = five_layer_llama(len(tokenizer)) if arch == "llama5" else make_model(arch, len(tokenizer))
    out, data = run_shares(tmp_path, model, tokenizer, batch_size=1)
    res = load_results(out)
    assert res.manifest["token_shares"] is True and (res.examples["status"] == "ok").all()
    shares = load_shares(out)
    assert_shares_match(shares, oracle_rows(model, tokenizer, data, res.manifest["n_layers"]), rtol=1e-10)
    # every token of every example is there, prompt ones too, with its response flag and relative position
    for _, ex in res.ok.iterrows():
        rows = shares[(shares["id"] == ex["id"]) & (shares["segment"] == "early") & (shares["module_group"] == "attn")].sort_values("position")
        T, R = int(ex["n_tokens"]), int(ex["n_response_tokens"])
        assert len(rows) == T and rows["response"].tolist() == [t >= T - R for t in range(T)]
        rel = rows["rel_position"].to_numpy()[T - R :]
        assert np.allclose(rel, np.arange(R) / (R - 1) if R > 1 else [0.0]) and rows["rel_position"].iloc[: T - R].isna().all()
        assert "".join(rows["token"]).endswith(ex["output"].split()[-1])  # the tokens' text spells the response


def test_padded_batches_give_the_same_shares(tmp_path, tokenizer):
    model = make_model("qwen2", len(tokenizer))
    one, _ = run_shares(tmp_path, model, tokenizer, name="one", batch_size=1)
    many, _ = run_shares(tmp_path, model, tokenizer, name="many", batch_size=3)
    a, b = (load_shares(p).sort_values(["id", "segment", "module_group", "position"]).reset_index(drop=True) for p in (one, many))
    assert len(a) == len(b) and (a[["id", "segment", "module_group", "position"]] == b[["id", "segment", "module_group", "position"]]).all().all()
    assert np.allclose(a["share"], b["share"], rtol=1e-6, atol=1e-7)  # eager attention's float32 softmax


def test_float32_gram_path_shares_k_x_and_matches(tmp_path, tokenizer):
    """The default statistics (float32: the Gram path, K_X shared across q/k/v) give the same float64 shares."""
    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", RECS)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "g"), progress=False, token_shares=True, batch_size=1)
    engine.run(cfg, loaded=loaded(model, tokenizer))
    assert set(load_results(cfg.out).modules["method"]) == {"gram"}
    assert_shares_match(load_shares(cfg.out), oracle_rows(model, tokenizer, data, 3), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Identity, store, merge
# ---------------------------------------------------------------------------------------


def test_token_shares_are_part_of_the_runs_identity(tmp_path, tokenizer):
    from layergrad.store import ConfigMismatch

    model = make_model("llama", len(tokenizer))
    out, data = run_shares(tmp_path, model, tokenizer, records=RECS[:1])
    cfg = RunConfig(data=[str(data)], out=out, progress=False, stats_dtype="float64", token_shares=False)
    with pytest.raises(ConfigMismatch, match="token_shares"):
        engine.run(cfg, loaded=loaded(model, tokenizer))


def test_resume_without_shares_flag_keeps_old_manifest_working(tmp_path, tokenizer):
    import json

    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", RECS[:2])
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "old"), progress=False)
    engine.run(cfg, loaded=loaded(model, tokenizer))
    m = tmp_path / "old" / "manifest.json"
    d = json.loads(m.read_text())
    del d["token_shares"]
    m.write_text(json.dumps(d))
    s = engine.run(cfg, loaded=loaded(model, tokenizer))  # resumes: absent means off
    assert s.computed == 0 and s.skipped_done == 2
    assert len(load_shares(cfg.out)) == 0


def test_a_part_with_an_unreadable_shares_file_is_left_out_whole(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    out, _ = run_shares(tmp_path, model, tokenizer, batch_size=1)
    parts = sorted((tmp_path / "run" / "parts").glob("shares-*.parquet"))
    assert len(parts) == 3
    parts[0].write_bytes(parts[0].read_bytes()[:40])  # cut short
    with pytest.warns(UserWarning, match="cannot be read"):
        res = load_results(out)
    assert len(res.examples) == 2
    assert set(load_shares(out)["id"]) == set(res.examples["id"])  # the shares of the parts that are used, no more


def test_merge_keeps_the_shares(tmp_path, tokenizer):
    from layergrad.store.merge import merge

    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", RECS)
    dirs = []
    for i in range(2):
        cfg = RunConfig(data=[str(data)], out=str(tmp_path / f"s{i}"), progress=False, token_shares=True, shard=f"{i}/2", batch_size=1)
        engine.run(cfg, loaded=loaded(model, tokenizer))
        dirs.append(cfg.out)
    merge(dirs, tmp_path / "merged")
    got = load_shares(tmp_path / "merged").sort_values(["id", "segment", "module_group", "position"]).reset_index(drop=True)
    want = __import__("pandas").concat([load_shares(d) for d in dirs]).sort_values(["id", "segment", "module_group", "position"]).reset_index(drop=True)
    assert len(got) and got.equals(want)


def test_token_shares_flag_reaches_the_config(tmp_path):
    from layergrad.cli import build_parser
    from layergrad.cli.run import _run_config

    args = build_parser().parse_args(["run", "--data", "d.json", "--out", "o", "--token-shares"])
    assert _run_config(args)[0].token_shares is True
    assert _run_config(build_parser().parse_args(["run", "--data", "d.json", "--out", "o"]))[0].token_shares is False
    with pytest.raises(Exception, match="token_shares"):
        RunConfig(data=["d.json"], out="o", token_shares="yes").validate()


# ---------------------------------------------------------------------------------------
# Analysis and report
# ---------------------------------------------------------------------------------------


def test_share_curve_is_the_mean_over_examples_of_each_bins_summed_share():
    import pandas as pd

    from layergrad.analysis.shares import share_tables

    # example a: 1 prompt token + 4 response tokens (rel 0, 1/3, 2/3, 1); b: 2 + 2 (rel 0, 1); c: NaN shares (left out)
    rows = []
    for eid, shares, n_prompt in (("a", [0.1, 0.2, 0.3, 0.0, 0.4], 1), ("b", [0.5, -0.1, 0.2, 0.4], 2), ("c", [math.nan] * 3, 1)):
        R = len(shares) - n_prompt
        for t, s in enumerate(shares):
            resp = t >= n_prompt
            rows.append({"id": eid, "segment": "late", "module_group": "mlp", "position": t, "share": s, "response": resp,
                         "rel_position": ((t - n_prompt) / (R - 1)) if resp else None, "token": "x"})
    curve, summary = share_tables(pd.DataFrame(rows), {"a": "g", "b": "g", "c": "g"}, bins=2)
    # bins [0, .5) and [.5, 1]: a -> 0.2 + 0.3, 0.0 + 0.4; b -> 0.2, 0.4
    assert curve["share"].tolist() == pytest.approx([(0.5 + 0.2) / 2, (0.4 + 0.4) / 2], abs=1e-15)
    assert curve["n"].tolist() == [2, 2]
    s = summary.iloc[0]
    assert s["prompt_share"] == pytest.approx((0.1 + 0.4) / 2) and s["response_share"] == pytest.approx((0.9 + 0.6) / 2)
    assert s["prompt_share"] + s["response_share"] == pytest.approx(1.0)


def test_report_shows_the_shares_only_for_runs_that_have_them(tmp_path, tokenizer):
    from layergrad.report.build import make_report

    model = make_model("llama", len(tokenizer))
    out, data = run_shares(tmp_path, model, tokenizer, batch_size=3)
    rep = make_report([("with", out)], tmp_path / "rep", n_boot=20, n_perm=20)
    page = rep.index.read_text()
    assert 'id="token_shares"' in page and (tmp_path / "rep" / "figures" / "token_shares.png").exists()
    curve = rep.tables["token_shares"]
    assert set(curve["segment"]) == {"early", "middle", "late"} and set(curve["module_group"]) == {"attn", "mlp"}
    summary = rep.tables["token_shares_summary"]
    assert np.allclose(summary["prompt_share"] + summary["response_share"], 1.0, atol=1e-12)
    assert "background: rgba(" in page
    shaded = page.split('id="token_shares"')[1]
    assert shaded.count("<span style=\"background") > 10 and "title=\"position 0: share" in shaded

    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "plain"), progress=False)
    engine.run(cfg, loaded=loaded(model, tokenizer))
    rep = make_report([("without", cfg.out)], tmp_path / "rep", n_boot=20, n_perm=20)  # same folder: the old section's files go
    assert 'id="token_shares"' not in rep.index.read_text() and "token_shares" not in rep.tables
    assert not (tmp_path / "rep" / "figures" / "token_shares.png").exists() and not (tmp_path / "rep" / "token_shares.csv").exists()
