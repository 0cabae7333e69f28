"""``layergrad import`` counts each example's response tokens as the paper's script tokenised it (issue 21, item 10).

The expected counts are made here from the paper's rule, written out with transformers alone: the text is
``instruction + "\\n" + output`` (base) or the chat template of the system turn "You are a helpful
assistant." and the instruction, with the generation prompt, then the output (chat); the prompt is
``tokenizer.encode(text[:text.rfind(output)])``; the response tokens are the rest of ``tokenizer.encode(text)``.
"""
from __future__ import annotations

import json

import pytest

from conftest import GOLDEN
from layergrad.cli import main
from layergrad.store import load_results

needs_golden = pytest.mark.skipif(not (GOLDEN / "reference_base.jsonl").exists(), reason="shared/golden not present beside the repository")


def paper_count(tok, instruction: str, output: str, chat: bool) -> tuple[int, int]:
    if chat:
        turns = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": instruction}]
        text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + output
    else:
        text = instruction + "\n" + output
    ids = tok.encode(text)
    n_prompt = len(tok.encode(text[: text.rfind(output)]))
    return len(ids), len(ids) - n_prompt


@needs_golden
@pytest.mark.parametrize("mode", ["base", "chat"])
def test_imported_golden_records_get_the_papers_response_lengths(tmp_path, mode, capsys):
    from transformers import AutoTokenizer

    src = GOLDEN / f"reference_{mode}.jsonl"
    tokenizer = GOLDEN / "tiny-llama"
    assert main(["import", str(src), "--to", str(tmp_path / "imp"), "--tokenizer", str(tokenizer), "--prompt-mode", mode]) == 0
    assert "response lengths counted with" in capsys.readouterr().out
    res = load_results(tmp_path / "imp")
    tok = AutoTokenizer.from_pretrained(tokenizer)
    records = [json.loads(line) for line in src.open()]
    want = [paper_count(tok, r["instruction"], r["output"], mode == "chat") for r in records]
    got = list(zip(res.examples["n_tokens"], res.examples["n_response_tokens"]))
    assert got == want and all(n > 0 for _, n in want)
    assert (res.examples["n_response_tokens_full"] == res.examples["n_response_tokens"]).all()
    m = res.manifest
    assert m["length_tokenizer"] == str(tokenizer) and m["length_prompt_mode"] == mode and m["length_max_length"] == 1024
    if mode == "chat":  # the chat text is not the base text: the counts must come from the template
        base = [paper_count(tok, r["instruction"], r["output"], False) for r in records]
        assert [n for n, _ in base] != [n for n, _ in want]


@needs_golden
def test_an_imported_run_is_a_truncate_to_partner(tmp_path, tokenizer):
    """A layergrad run can be cut to the response lengths of the paper's own results."""
    from conftest import save_model

    src = GOLDEN / "reference_base.jsonl"
    assert main(["import", str(src), "--to", str(tmp_path / "imp"), "--tokenizer", str(GOLDEN / "tiny-llama")]) == 0
    records = [json.loads(line) for line in src.open()]
    data = tmp_path / "longer.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"] + " And that is all there is to it."}
                                for r in records]))
    folder = save_model(tmp_path, "llama", tokenizer)
    assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "cut"), "--prompt-mode", "base",
                 "--modules", "q", "--truncate-to", str(tmp_path / "imp"), "--no-progress"]) == 0
    cut = load_results(tmp_path / "cut").examples
    imported = load_results(tmp_path / "imp").examples
    want = dict(zip(imported["id"], imported["n_response_tokens"]))
    assert (cut["status"] == "ok").all()
    assert [int(a) for a in cut["truncate_at"]] == [int(want[p]) for p in cut["truncate_partner"]]


def test_without_a_tokenizer_no_lengths_are_stored_and_a_partner_run_is_refused(tmp_path, capsys):
    rec = {"instruction": "a", "output": "b", "loss": 1.0,
           "model.layers.0.self_attn.q_proj.weight": {k: 1.0 for k in ("M_mean", "M_max", "M_min", "frobenius_norm", "S_sum", "S_max", "S_min")}}
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    assert main(["import", str(src), "--to", str(tmp_path / "imp"), "--tokenizer", "none"]) == 0
    assert "--tokenizer none" in capsys.readouterr().out
    res = load_results(tmp_path / "imp")
    assert res.examples["n_response_tokens"].isna().all() and res.manifest["length_tokenizer"] is None
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "a", "output": "b c"}]))
    assert main(["run", "--data", str(tmp_path / "d.json"), "--out", str(tmp_path / "o"), "--truncate-to", str(tmp_path / "imp"),
                 "--model", str(tmp_path / "no-model-needed")]) == 2
    assert "stores no response lengths" in capsys.readouterr().err


@pytest.mark.parametrize("name, fragment", [
    ("no/such-folder-here", "tokenizer 'no/such-folder-here'"),  # a local path that does not exist
    ("./nowhere", "no such folder or file"),
])
def test_a_bad_tokenizer_exits_2_and_imports_nothing(tmp_path, capsys, name, fragment, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub-shaped id must not reach the network in a test
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "r.jsonl"
    src.write_text("{}\n")
    assert main(["import", str(src), "--to", str(tmp_path / "imp"), "--tokenizer", name]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and (fragment in err or "not in the Hugging Face cache" in err), err
    assert not (tmp_path / "imp").exists()


@needs_golden
@pytest.mark.slow
def test_the_default_tokenizer_is_the_embedded_models(tmp_path):
    from layergrad.inputs.models import default_model_folder
    from transformers import AutoTokenizer

    src = GOLDEN / "reference_base.jsonl"
    assert main(["import", str(src), "--to", str(tmp_path / "imp")]) == 0
    tok = AutoTokenizer.from_pretrained(default_model_folder())
    records = [json.loads(line) for line in src.open()]
    want = [paper_count(tok, r["instruction"], r["output"], False)[1] for r in records]
    assert list(load_results(tmp_path / "imp").examples["n_response_tokens"]) == want
    assert load_results(tmp_path / "imp").manifest["length_tokenizer"] == "default"
