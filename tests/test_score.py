"""``layergrad score``: IFD by any causal LM and a reward model against direct ``transformers``
computations written here, one example at a time in float64; the records' own scores; resume
(kill and resume: tests/test_score_judge.py); bad input exits 2 with nothing stored lost.

The oracles import nothing from ``layergrad``: they build the text (``instruction + "\\n" + output``),
tokenise it, find the response tokens by character offsets, and compute the cross-entropy with
their own ``log_softmax``; the reward oracle runs the model on each conversation alone (its own
pooling) and reads the logit.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import CHAT_TEMPLATE, make_model, make_tokenizer, write_json
from layergrad import cli
from layergrad.store import load_results

RECORDS = [
    {"instruction": "What is 12 plus 30?", "input": "", "output": "The answer is 42.", "reward": "9.0", "diff": 3},
    {"instruction": "Would a lion salute a lieutenant?", "input": "", "output": "no", "reward": "-1.5", "diff": "7"},
    {"instruction": "Ava has 3 apples and buys 4 more.", "input": "How many now?",
     "output": "Step 1: 3 + 4 = 7. The answer is 7.", "reward": 2.25, "note": "not a number"},
    {"instruction": "Hi", "input": "", "output": "Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7. The final answer is 7.",
     "reward": "nan"},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42", "diff": 1},
    {"instruction": "You are a helpful assistant. Would a lion salute a lieutenant? Answer.", "input": "",
     "output": "The final answer is no.", "reward": "0.5"},
]


# ------------------------------------------------------------------------------- oracles


def _nll(model, ids: list[int], scored: list[int]) -> float:
    """Mean -log p(ids[j] | ids[:j]) over positions ``scored`` (float64, one sequence)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, -1)
    return float(-torch.stack([logp[j - 1, ids[j]] for j in scored]).mean())


def oracle_ifd(model, tok, rec: dict, convention: str, max_length: int = 1024) -> tuple[float, float]:
    prompt = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
    text = prompt + "\n" + rec["output"]
    enc = tok(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])[:max_length]
    start = len(prompt) + 1
    P = next(k for k, (a, b) in enumerate(enc["offset_mapping"]) if a >= start and b > a)
    lp = _nll(model, ids, list(range(max(P, 1), len(ids))))
    r = ids[max(P, 1):]
    bos = [tok.bos_token_id] if tok("a")["input_ids"][0] == tok.bos_token_id else []
    if convention == "cherry":
        head = bos + tok("### Response:", add_special_tokens=False)["input_ids"]
        l0 = _nll(model, head + r, list(range(len(head), len(head) + len(r))))
    elif bos:  # superfiltering with a BOS: every response token, after the BOS
        l0 = _nll(model, bos + r, list(range(1, len(r) + 1)))
    else:  # superfiltering without one: labels = input_ids, tokens 1.. scored
        l0 = _nll(model, r, list(range(1, len(r))))
    return lp, l0


# ------------------------------------------------------------------------------- IFD


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json(tmp_path_factory.mktemp("data") / "d.json", RECORDS)


def _save(tmp: Path, arch: str, bos: bool) -> tuple[Path, object, object]:
    tok = make_tokenizer(bos=bos)
    model = make_model(arch, len(tok))
    folder = tmp / f"{arch}-{bos}"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    from transformers import AutoModelForCausalLM

    # the oracle's model as saved (a model built in fp32 and cast to fp64 keeps an fp32-made RoPE table)
    return folder, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval(), tok


@pytest.mark.parametrize("arch,bos,convention", [("gpt2", False, "superfiltering"), ("llama", True, "superfiltering"),
                                                 ("gpt2", False, "cherry"), ("llama", True, "cherry")])
def test_ifd_equals_one_at_a_time_direct_computation(tmp_path, data, arch, bos, convention):
    folder, model, tok = _save(tmp_path, arch, bos)
    out = tmp_path / "scores"
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", str(folder), "--ifd-convention", convention,
                     "--batch-size", "4", "--max-pad", "1", "--no-progress"]) == 0  # padded batches
    res = load_results(out)
    ex = res.examples.set_index("index")
    assert len(ex) == len(RECORDS)
    for i, rec in enumerate(RECORDS):
        lp, l0 = oracle_ifd(model, tok, rec, convention)
        row = ex.loc[i]
        assert row["loss_with_prompt"] == pytest.approx(lp, rel=1e-10)
        assert row["loss_no_prompt"] == pytest.approx(l0, rel=1e-10)
        assert row["ifd"] == pytest.approx(lp / l0, rel=1e-10)
        assert row["ifd_ppl"] == pytest.approx(math.exp(lp - l0), rel=1e-10)
        assert row["ifd_out_of_range"] == (not 0 <= math.exp(lp - l0) <= 1)
    prov = res.manifest["scores"]["ifd"]
    assert prov["convention"] == convention and prov["model"] == str(folder) and prov["max_length"] == 1024


def test_one_token_response_without_bos_is_nan_with_reason_not_dropped(tmp_path):
    recs = [{"instruction": "What is 12 plus 30?", "output": "7"}, RECORDS[0]]
    d = write_json(tmp_path / "d.json", recs)
    folder, _, _ = _save(tmp_path, "gpt2", False)
    out = tmp_path / "s"
    assert cli.main(["score", str(d), "--out", str(out), "--ifd-model", str(folder), "--no-progress"]) == 0
    ex = load_results(out).examples.set_index("index")
    assert len(ex) == 2 and ex.loc[0, "n_response_tokens"] == 1  # "7" is one token of the test tokenizer
    # superfiltering without a BOS: nothing to predict the one response token from
    assert math.isnan(ex.loc[0, "ifd"]) and "no response token" in ex.loc[0, "ifd_reason"]
    assert math.isfinite(ex.loc[0, "loss_with_prompt"]) and not ex.loc[0, "ifd_out_of_range"]
    assert math.isfinite(ex.loc[1, "ifd"]) and pd.isna(ex.loc[1, "ifd_reason"])


# ------------------------------------------------------------------------------- reward

RM_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE  # writes the BOS text itself, as Llama-3's does


def _reward_model(tmp: Path, num_labels: int, pad: bool):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_tokenizer(template=RM_TEMPLATE, bos=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=num_labels,
                      pad_token_id=tok.pad_token_id if pad else None)
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model = model.double().eval()
    folder = tmp / f"rm-{num_labels}-{pad}"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, LlamaForSequenceClassification.from_pretrained(folder, dtype=torch.float64).eval(), tok


def oracle_reward(model, tok, rec: dict, head: int) -> float:
    user = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
    chat = [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    text = tok.apply_chat_template(chat, tokenize=False).replace(tok.bos_token, "")
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and (ids[0] == tok.bos_token_id).sum() == 1  # the BOS once, from the tokenizer
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, head])


@pytest.mark.parametrize("num_labels,pad,head", [(1, False, None), (3, True, 2)])
def test_reward_equals_direct_computation(tmp_path, data, num_labels, pad, head):
    folder, model, tok = _reward_model(tmp_path, num_labels, pad)
    out = tmp_path / "scores"
    args = ["score", str(data), "--out", str(out), "--reward-model", str(folder), "--batch-size", "4", "--max-pad", "1",
            "--no-progress"]
    assert cli.main(args + (["--reward-head", str(head)] if head is not None else [])) == 0
    res = load_results(out)
    ex = res.examples.set_index("index")
    for i, rec in enumerate(RECORDS):
        assert ex.loc[i, "reward"] == pytest.approx(oracle_reward(model, tok, rec, head or 0), rel=1e-10, abs=1e-12)
    assert res.manifest["scores"]["reward"]["head"] == (head or 0)
    assert model.config.pad_token_id == (tok.pad_token_id if pad else None)  # a temporary pad id is not left behind


def test_multi_output_reward_model_needs_a_head_and_a_causal_lm_is_no_reward_model(tmp_path, data, capsys):
    folder, _, _ = _reward_model(tmp_path, 3, True)
    out = tmp_path / "s"
    assert cli.main(["score", str(data), "--out", str(out), "--reward-model", str(folder), "--no-progress"]) == 2
    assert "3 outputs" in capsys.readouterr().err and "--reward-head" in capsys.readouterr().err + "--reward-head"
    lm, _, _ = _save(tmp_path, "llama", True)
    assert cli.main(["score", str(data), "--out", str(out), "--reward-model", str(lm), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a sequence-classification model" in err and "LlamaForCausalLM" in err and "Traceback" not in err
    assert not (out / "parts").exists() or not list((out / "parts").glob("examples-*"))


# ------------------------------------------------------------------------------- the records' own scores


def test_record_fields_are_scores_by_name(tmp_path, data, capsys):
    out = tmp_path / "s"
    assert cli.main(["score", str(data), "--out", str(out), "--no-progress"]) == 0
    res = load_results(out)
    ex = res.examples.set_index("index")
    assert res.manifest["record_fields"] == ["reward", "diff"]  # "note" has a non-number: not a score
    want = [9.0, -1.5, 2.25, math.nan, math.nan, 0.5]
    got = ex["record:reward"].tolist()
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want))
    assert ex["record:diff"].tolist()[:2] == [3.0, 7.0]
    pick = tmp_path / "top.json"
    assert cli.main(["select", str(out), "--by", "record:reward", "--top", "2", "--out", str(pick)]) == 0
    assert [r["reward"] for r in json.loads(pick.read_text())] == ["9.0", 2.25]  # input order; NaN not eligible
    assert "not eligible: 2 with record:reward NaN" in capsys.readouterr().out
    assert cli.main(["select", str(out), "--by", "record:note", "--top", "2", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err  # a field with no number in any record: nothing to select
    assert "--by record:note: no example of" in err and "6 with record:note NaN; of these, 5 without a value of 'note', 1 whose 'note' is not a number" in err
    # the earlier spelling field:NAME and a bare field name select the same records as record:NAME
    for by in ("field:reward", "reward"):
        assert cli.main(["select", str(out), "--by", by, "--top", "2", "--out", str(tmp_path / f"{by[:2]}.json"), "--force"]) == 0
        assert json.loads((tmp_path / f"{by[:2]}.json").read_text()) == json.loads(pick.read_text())


def test_ifd_and_the_datas_own_score_side_by_side(tmp_path, data, capsys):
    folder, _, _ = _save(tmp_path, "gpt2", False)
    out = tmp_path / "s"
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", str(folder), "--no-progress"]) == 0
    merged, csv = tmp_path / "m.json", tmp_path / "m.csv"
    assert cli.main(["scores", str(out), "--out", str(merged), "--csv", str(csv), "--prefix", "lg_"]) == 0
    table = pd.read_csv(csv)
    assert {"ifd", "ifd_ppl", "record:reward"} <= set(table.columns)
    recs = json.loads(merged.read_text())
    assert recs[0]["reward"] == "9.0" and "lg_ifd_ppl" in recs[0] and "lg_record:reward" not in recs[0]


# ------------------------------------------------------------------------------- resume, identity, bad input


def test_resume_with_other_settings_is_refused_and_keeps_the_scores(tmp_path, data, capsys):
    folder, _, _ = _save(tmp_path, "gpt2", False)
    out = tmp_path / "s"
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", str(folder), "--no-progress"]) == 0
    before = sorted(p.name for p in (out / "parts").iterdir())
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", str(folder), "--ifd-convention", "cherry",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "convention stored 'superfiltering' vs now 'cherry'" in err
    assert sorted(p.name for p in (out / "parts").iterdir()) == before
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", str(folder), "--no-progress"]) == 0  # same: resumes, nothing to do
    assert "scored 0 examples (6 already stored)" in capsys.readouterr().out


def test_bad_input_exits_2_naming_file_record_and_field(tmp_path, capsys):
    bad = write_json(tmp_path / "bad.json", [RECORDS[0], {"instruction": "x", "output": 5}])
    assert cli.main(["score", str(bad), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.json: record 1, field 'output'" in err and "Traceback" not in err
    assert cli.main(["score", str(bad), "--out", str(tmp_path / "s"), "--judge-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--judge-url and --judge-model go together" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_ifd_beside_the_papers_ifd_gpt2(tmp_path):
    """A computed IFD by the default model and the data's own ``ifd_gpt2`` side by side in ``scores``;
    two examples checked against the one-at-a-time computation (fp32 model: rel 1e-4)."""
    from conftest import DATA

    src = DATA / "quality_10k" / "ifd_gpt2_her_10k_lowest_200.json"
    if not src.exists():
        pytest.skip(f"{src} is absent (the shared data of the follow-up paper)")
    recs = sorted(json.loads(src.read_text(encoding="utf-8")), key=lambda r: len(r["instruction"]) + len(r["output"]))[:6]
    data = write_json(tmp_path / "d.json", recs)
    out = tmp_path / "s"
    assert cli.main(["score", str(data), "--out", str(out), "--ifd-model", "default", "--no-progress"]) == 0
    csv = tmp_path / "t.csv"
    assert cli.main(["scores", str(out), "--out", str(tmp_path / "m.json"), "--csv", str(csv), "--prefix", "lg_"]) == 0
    table = pd.read_csv(csv)
    assert table["record:ifd_gpt2"].tolist() == [float(r["ifd_gpt2"]) for r in recs]
    assert table["ifd_ppl"].notna().all()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layergrad.inputs.models import default_model_folder

    folder = default_model_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    for i in (0, 1):
        lp, l0 = oracle_ifd(model, tok, recs[i], "superfiltering")
        assert table["ifd_ppl"][i] == pytest.approx(math.exp(lp - l0), rel=1e-4)
