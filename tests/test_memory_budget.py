"""Memory bounded by design: a batch's peak estimated before it runs, batches split under --max-memory,
an example that cannot fit alone stored as failed without running."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_model, write_json
from helpers import MANY, METRICS, config, loaded
from layergrad.cli import main
from layergrad.inputs.targets import find_targets
from layergrad.run import engine, faults, memory
from layergrad.store import load_results

LONG = {"instruction": "What is 12 plus 30? " * 8, "output": "The answer is 42."}


@pytest.mark.parametrize("text, want", [
    ("12GB", ("bytes", 12e9)), ("12GiB", ("bytes", 12 * 2**30)), ("500M", ("bytes", 500e6)), ("500MiB", ("bytes", 500 * 2**20)),
    ("0.8", ("fraction", 0.8)), ("1", ("fraction", 1.0)), (" 2 gb ", ("bytes", 2e9)),
    ("4096B", ("bytes", 4096)), ("1.5G", ("bytes", 1.5e9)), ("1e9B", ("bytes", 1e9)), ("1MB", ("bytes", 1e6)),
])
def test_parse_bytes(text, want):
    assert memory.parse_bytes(text) == want


@pytest.mark.parametrize("bad", ["abc", "", "0", "-1GB", "12 parsecs", "GB", "0.0"])
def test_parse_bytes_refuses_with_a_message(bad):
    with pytest.raises(ValueError, match="must be|> 0"):
        memory.parse_bytes(bad)


def _shape(attention="eager", **kw):
    return memory.ModelShape(**{"hidden": 64, "ffn": 256, "layers": 4, "heads": 8, "vocab": 1000, "itemsize": 2,
                                "param_bytes": 10_000, "attention": attention, **kw})


def test_estimate_grows_with_n_and_t_and_eager_attention_quadratically(tokenizer):
    targets = find_targets(make_model("llama", len(tokenizer)), "all")
    est = lambda n, t, **kw: memory.estimate_batch_bytes(n, t, kw.pop("shape", _shape()), targets, 8, threads=4, **kw)  # noqa: E731
    for n in (1, 2, 3, 8):
        row = [est(n, t) for t in (1, 16, 64, 256, 1024)]
        assert row == sorted(row) and len(set(row)) == len(row)
    for t in (1, 64, 512):
        col = [est(n, t) for n in (1, 2, 4, 8, 16)]
        assert col == sorted(col) and len(set(col)) == len(col)
    assert est(2, 64) == est(2, 64, n_loss=None) >= est(2, 64, n_loss=10)
    assert est(2, 64, gather=False) >= est(2, 64, n_loss=10)
    # eager attention keeps (n, heads, t, t) per layer: its excess over a fused kernel is quadratic in t
    excess = lambda t: est(2, t) - est(2, t, shape=_shape("sdpa"))  # noqa: E731
    assert excess(512) / excess(256) == pytest.approx(4, rel=1e-3)
    assert excess(512) >= 2 * 8 * 512 * 512 * 4 * (4 * memory.ATTENTION_TENSORS - 1)
    # the weights count once, whatever the batch
    assert est(1, 1, shape=_shape(param_bytes=10**9)) - est(1, 1) == 10**9 - 10_000


def test_model_shape_and_available_memory(tokenizer):
    model = make_model("llama", len(tokenizer))
    s = memory.model_shape_of(model)
    assert s.hidden == model.config.hidden_size and s.layers == model.config.num_hidden_layers and s.itemsize == 8
    assert s.vocab == model.config.vocab_size and s.param_bytes == sum(p.numel() * 8 for p in model.parameters())
    free = memory.available_bytes("cpu")
    assert free is None or free > 0
    assert memory.budget_bytes("3GiB", "cpu") == 3 * 2**30
    if free is not None:
        assert memory.budget_bytes(None, "cpu", resident=5) > 5


def _estimate(model, tokenizer, n, t, n_loss=None):
    return memory.estimate_batch_bytes(n, t, memory.model_shape_of(model), find_targets(model, "attn"), 8,
                                       gather=True, threads=1, n_loss=n_loss)


def test_a_budget_that_splits_batches_changes_no_number(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr("torch.get_num_threads", lambda: 1)  # the estimate's examples in parallel: fixed
    model = make_model("llama", len(tokenizer))
    records = MANY[:8]
    whole_cfg = config(tmp_path, records, out="whole", batch_size=8, max_batch_tokens=10_000, modules="attn", max_memory="64GB")
    sizes = []
    real = engine.compute_batch
    monkeypatch.setattr(engine, "compute_batch", lambda runner, ex, enc, part: sizes.append(len(part)) or real(runner, ex, enc, part))
    engine.run(whole_cfg, loaded=loaded(model, tokenizer))
    assert sizes == [8]
    whole = load_results(whole_cfg.out)
    longest = int(whole.examples["n_tokens"].max())
    budget = _estimate(model, tokenizer, 2, longest, n_loss=2 * longest)  # two examples fit, never eight
    assert _estimate(model, tokenizer, 8, longest, n_loss=8) > budget
    sizes.clear()
    split_cfg = config(tmp_path, records, out="split", batch_size=8, max_batch_tokens=10_000, modules="attn", max_memory=f"{budget}B")
    s = engine.run(split_cfg, loaded=loaded(model, tokenizer))
    assert s.status_counts == {"ok": 8} and len(sizes) > 1 and max(sizes) < 8 and sum(sizes) == 8
    split = load_results(split_cfg.out)
    a, b = (r.examples.sort_values("id").reset_index(drop=True) for r in (whole, split))
    pd.testing.assert_frame_equal(a[["id", "status", "n_tokens"]], b[["id", "status", "n_tokens"]])
    pd.testing.assert_series_equal(a["loss"], b["loss"], check_exact=False, rtol=1e-12)
    ma, mb = (r.modules.sort_values(["id", "module"]).reset_index(drop=True) for r in (whole, split))
    ratios = [m for m in METRICS if m != "min_sigma"]
    # the batch shape reorders eager attention's float32 softmax reductions (see helpers.RTOL): equal to 1e-7
    pd.testing.assert_frame_equal(ma[["id", "module"] + ratios], mb[["id", "module"] + ratios], check_exact=False, rtol=1e-7, atol=1e-12)
    assert (abs(ma["min_sigma"] - mb["min_sigma"]) <= 1e-7 * ma["spectral"]).all()


def test_an_example_that_cannot_fit_alone_is_failed_without_running(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr("torch.get_num_threads", lambda: 1)
    model = make_model("llama", len(tokenizer))
    records = MANY[:5] + [LONG]
    one_cfg = config(tmp_path, records, out="one", batch_size=1, modules="attn", max_memory="64GB")
    engine.run(one_cfg, loaded=loaded(model, tokenizer))
    one = load_results(one_cfg.out)
    lengths = sorted(one.examples["n_tokens"])
    budget = _estimate(model, tokenizer, 1, lengths[-2], n_loss=lengths[-2])
    assert _estimate(model, tokenizer, 1, lengths[-1], n_loss=1) > budget
    ran = []
    real = engine.compute_batch
    monkeypatch.setattr(engine, "compute_batch", lambda runner, ex, enc, part: ran.extend(part) or real(runner, ex, enc, part))
    cfg = config(tmp_path, records, out="budget", batch_size=8, max_batch_tokens=10_000, modules="attn", max_memory=f"{budget}B")
    s = engine.run(cfg, loaded=loaded(model, tokenizer))
    assert 5 not in ran and sorted(ran) == [0, 1, 2, 3, 4]  # the long one never ran
    assert s.status_counts == {"ok": 5, "failed": 1}
    res = load_results(cfg.out)
    failed = res.examples[res.examples["status"] == "failed"].iloc[0]
    assert failed["index"] == 5 and failed["n_tokens"] == lengths[-1]
    est = _estimate(model, tokenizer, 1, lengths[-1], n_loss=int(failed["n_tokens"]))
    assert failed["reason"].startswith(f"out of memory: does not fit alone ({lengths[-1]} tokens; estimated ")
    assert failed["reason"].endswith(f" GiB > budget {budget / 2**30:.2f} GiB)")
    assert faults.reason_kind("failed", failed["reason"]) == faults.OUT_OF_MEMORY
    assert est >= budget
    assert "does not fit the memory budget alone" in capsys.readouterr().err
    ok = res.ok.sort_values("id").reset_index(drop=True)
    want = one.examples[one.examples["index"] != 5].sort_values("id").reset_index(drop=True)
    pd.testing.assert_series_equal(ok["loss"], want["loss"], check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("bad", ["abc", "0", "12 parsecs"])
def test_bad_max_memory_exits_2_with_a_message(tmp_path, records, capsys, bad):
    data = write_json(tmp_path / "d.json", records)
    out = tmp_path / "o"
    code = main(["run", "--data", str(data), "--out", str(out), "--no-progress", "--max-memory", bad])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "max_memory (--max-memory)" in err and repr(bad) in err and "12GB" in err
    assert not out.exists()


def test_the_default_budget_splits_batches_but_never_refuses_an_example(tmp_path, tokenizer, monkeypatch, capsys):
    """Without --max-memory the (conservative) estimate only splits batches: an example over the default
    budget alone still runs (a real out-of-memory error is the back-off's), with a note saying so."""
    from layergrad.run import memory

    monkeypatch.setattr("torch.get_num_threads", lambda: 1)
    model = make_model("llama", len(tokenizer))
    records = MANY[:5] + [LONG]
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1)  # a default budget below every estimate
    cfg = config(tmp_path, records, out="default", batch_size=8, max_batch_tokens=10_000, modules="attn")
    s = engine.run(cfg, loaded=loaded(model, tokenizer))
    assert s.status_counts == {"ok": 6}
    assert "over the default memory budget" in capsys.readouterr().err
