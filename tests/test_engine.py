"""The fast path against the dense autograd oracle, on tiny models of several architectures (fp64)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import ARCHS, make_model, write_json
from layergrad.run import engine
from layergrad.measure import oracle
from layergrad.config import RunConfig
from layergrad.inputs.targets import find_targets
from layergrad.inputs.prompting import encode
from layergrad.store import load_results
from helpers import RTOL, assert_matches_oracle, loaded, oracle_for, run_and_load











@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["base", "chat"])
def test_batched_run_equals_dense_oracle(tmp_path, tokenizer, records, arch, mode):
    model = make_model(arch, len(tokenizer))
    res, data = run_and_load(tmp_path, model, tokenizer, records, modules="all", prompt_mode=mode, batch_size=3)
    targets = find_targets(model, "all")
    assert_matches_oracle(res, oracle_for(model, tokenizer, data, mode, targets))
    # float64 statistics take the QR or the dense path, chosen per module (every row says which)
    methods = set(res.modules["method"])
    assert methods and methods <= {"factored", "dense"}


@pytest.mark.parametrize("method", ["factored", "dense"])
def test_each_method_equals_oracle(tmp_path, tokenizer, records, method):
    model = make_model("llama", len(tokenizer))
    res, data = run_and_load(tmp_path, model, tokenizer, records, method=method, prompt_mode="base", batch_size=5)
    assert set(res.modules["method"]) == {method}
    assert_matches_oracle(res, oracle_for(model, tokenizer, data, "base", find_targets(model, "all")))


def test_batch_of_many_equals_each_alone_padding_changes_nothing(tmp_path, tokenizer, records):
    model = make_model("qwen2", len(tokenizer))
    many, _ = run_and_load(tmp_path, model, tokenizer, records, batch_size=5, out="many")
    one, _ = run_and_load(tmp_path, model, tokenizer, records, batch_size=1, out="one")
    cols = ["nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank"]
    a = many.modules.sort_values(["id", "module"]).reset_index(drop=True)
    b = one.modules.sort_values(["id", "module"]).reset_index(drop=True)
    assert list(a["module"]) == list(b["module"])
    for c in cols:
        x, y = torch.tensor(a[c].values), torch.tensor(b[c].values)
        # batch shapes differ (see RTOL); min_sigma is compared on the scale of the spectrum
        torch.testing.assert_close(x, y, rtol=RTOL, atol=RTOL * float(torch.tensor(a["spectral"].values).max()) if c == "min_sigma" else 1e-12)
    torch.testing.assert_close(torch.tensor(many.examples["loss"].values), torch.tensor(one.examples["loss"].values), rtol=1e-12, atol=0)


def test_users_model_is_left_as_found(tmp_path, tokenizer, records):
    model = make_model("llama", len(tokenizer))
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_and_load(tmp_path, model, tokenizer, records)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_no_weight_gradient_is_computed(tmp_path, tokenizer, records, monkeypatch):
    """The backward carries activation gradients only: no parameter ever receives a .grad."""
    model = make_model("llama", len(tokenizer))
    seen = []
    for p in model.parameters():
        p.register_hook(lambda g: seen.append(g.shape))
    run_and_load(tmp_path, model, tokenizer, records)
    assert seen == []


def test_single_token_response_and_attention_subset(tmp_path, tokenizer):
    model = make_model("mistral", len(tokenizer))
    recs = [{"instruction": "What is 12 plus 30?", "output": "4"}, {"instruction": "Q", "output": "The answer is 42."}]
    res, data = run_and_load(tmp_path, model, tokenizer, recs, modules="q,k,v,o", prompt_mode="base")
    assert set(res.modules["role"]) == {"q", "k", "v", "o"}
    assert (res.ok["n_response_tokens"] >= 1).all()
    assert_matches_oracle(res, oracle_for(model, tokenizer, data, "base", find_targets(model, "q,k,v,o")))


def test_module_called_twice_sums_both_calls(tokenizer):
    """A module shared by two places (weight tying): its gradient is the sum of both calls'."""
    from layergrad.measure.capture import Capture, activation_only_backward
    from layergrad.measure.measurer import Measurer
    from layergrad.inputs.targets import Target

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 6, bias=False).double()
    net = torch.nn.Sequential(lin, torch.nn.Tanh(), lin)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    t = Target("shared", lin, 0, "unknown", 6, 6, "linear")
    meas = Measurer(stats_dtype=torch.float64, spectrum_k=None)
    with activation_only_backward(net), Capture([t], meas) as cap:
        y = net(x)
        meas.begin(torch.ones(2, 5), cap.consumers(), {})
        (y ** 2).sum(dim=(1, 2)).sum().backward()
        cap.finish()
    got = meas.results["shared"].stats["nuclear"]
    want = []
    for b in range(2):
        lin.weight.grad = None
        with torch.enable_grad():
            lin.weight.requires_grad_(True)
            (net(x[b : b + 1]) ** 2).sum().backward()
        want.append(torch.linalg.svdvals(lin.weight.grad).sum())
    torch.testing.assert_close(got, torch.stack(want))


def test_truncated_response_is_stored_as_skipped_with_reason(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    recs = [{"instruction": "What is 12 plus 30? " * 5, "output": "The answer is 42."},
            {"instruction": "Q", "output": "42"}]
    # without --skip-invalid the run is refused instead (tests/test_bad_input.py)
    res, _ = run_and_load(tmp_path, model, tokenizer, recs, max_length=8, prompt_mode="base", skip_invalid=True)
    skipped = res.examples[res.examples["status"] == "skipped"]
    assert len(skipped) == 1 and "max-length 8" in skipped["reason"].iloc[0]
    assert len(res.ok) == 1 and bool(res.ok["truncated"].iloc[0]) is False


def test_resume_skips_stored_examples_by_id_not_instruction(tmp_path, tokenizer, records):
    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, limit=2, batch_size=1)
    s1 = engine.run(cfg, loaded=loaded(model, tokenizer))
    assert s1.computed == 2
    cfg.limit = None  # a run grows (issue 17): the rest is computed, the first two kept
    s2 = engine.run(cfg, loaded=loaded(model, tokenizer))
    assert (s2.computed, s2.skipped_done) == (len(records) - 2, 2)


def test_rerun_resumes_and_final_store_equals_uninterrupted(tmp_path, tokenizer, records, monkeypatch):
    model = make_model("llama", len(tokenizer))
    data = write_json(tmp_path / "d.json", records)
    full = RunConfig(data=[str(data)], out=str(tmp_path / "full"), progress=False, batch_size=2)
    engine.run(full, loaded=loaded(model, tokenizer))
    cut = RunConfig(data=[str(data)], out=str(tmp_path / "cut"), progress=False, batch_size=2)
    calls = {"n": 0}
    real = engine.compute_batch

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "compute_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        engine.run(cut, loaded=loaded(model, tokenizer))
    monkeypatch.setattr(engine, "compute_batch", real)
    s = engine.run(cut, loaded=loaded(model, tokenizer))
    assert s.skipped_done == 2 and s.computed == 3
    a, b = load_results(full.out), load_results(cut.out)
    assert list(a.examples["id"]) == list(b.examples["id"])
    assert a.modules.drop(columns=["spectrum"]).equals(b.modules.drop(columns=["spectrum"]))
    # the same instruction with two responses is two examples
    assert (a.examples["instruction"] == records[0]["instruction"]).sum() == 2


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_in_training_mode_counts_each_call_once(tokenizer, records, reentrant):
    """Checkpointing active (training mode, dropout 0, as inside a Trainer): each decoder layer is
    recomputed inside the backward, so the capture hooks fire twice per module. The recomputation is
    not a second call: the numbers equal the dense oracle, and the rank bound is that of one call.
    (``layergrad run`` puts the model in eval mode, where transformers never checkpoints.)"""
    from layergrad.run.plan import pad_id_of
    from layergrad.inputs.data import Example
    from layergrad.measure.measurer import Measurer
    from layergrad.run.step import BatchRunner

    model = make_model("llama", len(tokenizer))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    assert model.model.gradient_checkpointing and model.training
    targets = find_targets(model, "all")
    exs = [Example(str(k), k, "d", "g", r["instruction"], r["output"]) for k, r in enumerate(records)]
    encs = [encode(ex, tokenizer, "base", 1024) for ex in exs]
    calls = []
    hook = model.model.layers[1].self_attn.q_proj.register_forward_hook(lambda m, a, o: calls.append(torch.is_grad_enabled()))
    runner = BatchRunner(model, targets, Measurer(stats_dtype=torch.float64, spectrum_k=None), "cpu", pad_id_of(tokenizer))
    try:
        with runner.hooks():
            loss, measured = runner.run(encs)
    finally:
        hook.remove()
    # the forward (without gradients when reentrant) and its recomputation in the backward
    assert calls == ([False, True] if reentrant else [True, True])
    model.gradient_checkpointing_disable()
    model.eval()
    for b, enc in enumerate(encs):
        want_loss, grads = oracle.example_gradients(model, enc.input_ids, max(enc.n_prompt, 1), targets)
        want = oracle.dense_stats(grads)
        assert float(loss[b]) == pytest.approx(want_loss, rel=1e-10)
        for t in targets:
            r = measured.modules[t.name]
            assert int(r.rank[b]) == min(enc.n_tokens, t.in_features, t.out_features), t.name
            for k in ("nuclear", "spectral", "effective_rank"):
                assert float(r.stats[k][b]) == pytest.approx(want[t.name][k], rel=RTOL), (t.name, k)


def test_empty_selection_is_a_clear_error(tmp_path, tokenizer, records):
    from layergrad.inputs.targets import SelectionError

    model = make_model("gpt2", len(tokenizer))
    with pytest.raises(SelectionError, match="roles present"):
        run_and_load(tmp_path, model, tokenizer, records, modules="gate")


def test_fp32_model_stats_close_to_fp64_oracle(tmp_path, tokenizer, records):
    model = make_model("llama", len(tokenizer), dtype="float32")
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "r"), progress=False)
    engine.run(cfg, loaded=loaded(model, tokenizer))
    res = load_results(cfg.out)
    want = oracle_for(model.double(), tokenizer, data, "chat", find_targets(model, "all"))
    worst = 0.0
    for _, r in res.modules.iterrows():
        o = want[r["id"]][1][r["module"]]
        worst = max(worst, abs(r["nuclear"] - o["nuclear"]) / o["nuclear"])
    assert worst < 1e-4
    assert math.isfinite(worst)
