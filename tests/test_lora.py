"""LoRA / PEFT adapters, float64, on a tiny random Llama with an adapter made by peft (B nonzero).

Oracles that share no code with the path under test:
- merged: the base weights plus ``s B A`` computed here from the adapter's safetensors file;
- ``--adapter-params``: dense autograd gradients of ``lora_A``/``lora_B`` of a PeftModel loaded
  here, with the SFT loss written out here, and their singular values by ``torch.linalg.svdvals``.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import RECORDS, make_model, make_tokenizer, write_json
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import ModelError, load_model
from layergrad.inputs.prompting import encode
from layergrad.run import engine
from layergrad.store import load_results

RTOL = 1e-6
TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 2, 6


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("lora")
    tok = make_tokenizer()
    base = tmp / "base"
    make_model("llama", len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
    torch.manual_seed(1)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.1, init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # B clearly nonzero, on the scale of the base weights
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    adapter = tmp / "adapter"
    peft_model.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)

    # the merged oracle, by hand: W' = W + (alpha / r) B A
    weights = load_file(base / "model.safetensors")
    factors = load_file(adapter / "adapter_model.safetensors")
    n_lora = 0
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        b = factors[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        weights[name] = weights[name] + (ALPHA / R) * (b.double() @ a.double())
        n_lora += 1
    assert n_lora == 3 * len(TARGETS)
    merged = tmp / "merged"
    shutil.copytree(base, merged)
    save_file(weights, str(merged / "model.safetensors"), metadata={"format": "pt"})
    data = write_json(tmp / "d.json", RECORDS[:3])
    return base, adapter, merged, data


def _run(tmp_path, data, out, **kw):
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / out), progress=False, stats_dtype="float64",
                    spectrum_k=None, device="cpu", batch_size=1, **kw)
    engine.run(cfg)
    return load_results(cfg.out)


def _by_key(res):
    return {(r["id"], r["module"]): r for _, r in res.modules.iterrows()}


def test_adapter_gives_the_merged_models_statistics(tmp_path, lora):
    base, adapter, merged, data = lora
    want = _by_key(_run(tmp_path, data, "merged", model=str(merged)))
    plain = _by_key(_run(tmp_path, data, "base", model=str(base)))
    for res in (_run(tmp_path, data, "adapter", model=str(base), adapter=str(adapter)),
                _run(tmp_path, data, "adapter-as-model", model=str(adapter))):
        got = _by_key(res)
        assert got.keys() == want.keys()  # the base model's module names: runs are comparable
        for k, w in want.items():
            for m in ("nuclear", "spectral", "frobenius", "effective_rank"):
                assert got[k][m] == pytest.approx(w[m], rel=RTOL), (k, m)
        assert res.manifest["adapter"] == str(adapter) and len(res.manifest["adapter_fingerprint"]) == 64
        assert res.manifest["adapter_params"] is False
    # the adapter changes the numbers (so the test could fail)
    q = next(k for k in want if k[1].endswith("layers.2.self_attn.q_proj"))
    assert abs(plain[q]["nuclear"] - want[q]["nuclear"]) > 1e-3 * want[q]["nuclear"]


def _sft_loss(model, ids, n_prompt):
    """Mean cross-entropy of the response tokens (positions >= max(n_prompt, 1)), written out here."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    start = max(n_prompt, 1)
    return torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]), reduction="mean")


def test_adapter_params_are_the_dense_autograd_gradients_of_lora_A_and_B(tmp_path, lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter, _, data = lora
    res = _run(tmp_path, data, "params", model=str(base), adapter=str(adapter), adapter_params=True)
    assert res.manifest["adapter_params"] is True
    got = _by_key(res)
    roles = set(res.modules["role"])
    assert roles == {"q.lora_A", "q.lora_B", "v.lora_A", "v.lora_B", "down.lora_A", "down.lora_B"}

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64), adapter).eval()
    tok = make_tokenizer()
    params = {n.removeprefix("base_model.model.").replace(".default.weight", ""): p
              for n, p in model.named_parameters() if "lora_" in n}
    assert len(params) == 2 * 3 * len(TARGETS)
    exs, _ = load_examples([str(data)])
    checked = 0
    for ex in exs:
        enc = encode(ex, tok, "chat", 1024)
        model.zero_grad()
        for p in params.values():
            p.requires_grad_(True)
        _sft_loss(model, enc.input_ids, enc.n_prompt).backward()
        for name, p in params.items():
            s = torch.linalg.svdvals(p.grad.double())
            row = got[(ex.id, name)]
            assert row["nuclear"] == pytest.approx(float(s.sum()), rel=RTOL), name
            assert row["spectral"] == pytest.approx(float(s[0]), rel=RTOL), name
            assert row["frobenius"] == pytest.approx(float(s.square().sum().sqrt()), rel=RTOL), name
            assert float(s[0]) > 1e-6  # a real gradient, not zero = zero
            checked += 1
    assert checked == len(exs) * len(params)


def test_adapter_for_another_base_is_refused(tmp_path, lora):
    _, adapter, _, _ = lora
    tok = make_tokenizer()
    other = tmp_path / "other"
    make_model("qwen2", len(tok)).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ModelError, match="was made for .*base.*not for --model .*other.*pass --model"):
        load_model(str(other), adapter=str(adapter))


def test_adapter_errors(tmp_path, lora):
    base, _, _, _ = lora
    with pytest.raises(ModelError, match="--adapter-params needs an adapter"):
        load_model(str(base), adapter_params=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no adapter_config.json"):
        load_model(str(base), adapter=str(tmp_path / "empty"))
