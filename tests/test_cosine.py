"""``run --cosine``: gradient cosines from the factors equal those of dense autograd gradients."""
from __future__ import annotations

import pytest
import torch

from conftest import make_model, write_json
from layergrad.run import engine
from layergrad.measure import oracle
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.inputs.targets import find_targets
from layergrad.inputs.prompting import encode
from layergrad.store import load_results


@pytest.mark.parametrize("route", ["auto", "gram", "dense"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cosines_equal_dense_gradients(tmp_path, tokenizer, records, arch, route, monkeypatch):
    from layergrad.spectra import products

    if route != "auto":  # each way of taking the products (factors or dense gradients) against the oracle
        monkeypatch.setattr(products, "inner_route", lambda *a, **k: route)
    model = make_model(arch, len(tokenizer))
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "r"), progress=False, stats_dtype="float64", cosine=True, batch_size=3, prompt_mode="base")
    lm = LoadedModel(model, tokenizer, "t", "t", "fp", "float64")
    engine.run(cfg, loaded=lm)
    res = load_results(cfg.out)
    targets = find_targets(model, "all")
    kinds = set(res.cosine["kind"])
    assert kinds == {"next_layer", "q_o", "k_v"}
    n_layers = model.config.num_hidden_layers
    # every role present in consecutive layers pairs up once per example
    per_ex = res.cosine[res.cosine["id"] == res.ok["id"].iloc[0]]
    assert (per_ex["kind"] == "next_layer").sum() == 7 * (n_layers - 1)
    assert (per_ex["kind"] == "k_v").sum() == n_layers
    exs = {e.id: e for e in load_examples([str(data)])[0]}
    for ex_id, rows in res.cosine.groupby("id"):
        enc = encode(exs[ex_id], tokenizer, "base", 1024)
        _, grads = oracle.example_gradients(model, enc.input_ids, enc.n_prompt, targets)
        for _, r in rows.iterrows():
            a, b = grads[r["module_a"]], grads[r["module_b"]]
            want = float((a * b).sum() / (a.norm() * b.norm()))
            assert r["cosine"] == pytest.approx(want, rel=1e-6, abs=1e-7)  # rotary in fp32: see test_engine.RTOL
    assert res.cosine["cosine"].between(-1, 1).all()
