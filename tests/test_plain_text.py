"""Plain-text records (only ``text``): every token after the first is a loss term; IFD undefined."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tokenizer, save_model, write_json
from layergrad.cli import main
from layergrad.inputs.data import Fields, load_examples, validate
from layergrad.store import load_results

TEXTS = ["Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7.", "What is 12 plus 30? The answer is 42."]


def oracle_loss(model, tok, text):
    """Mean float64 CE of every token given those before it (token 0 has nothing to be predicted from)."""
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item(), len(ids)


@pytest.mark.parametrize("bos", [True, False])
def test_the_loss_is_the_mean_ce_over_all_tokens(tmp_path, bos, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_model(tmp_path, "llama", make_tokenizer(bos=bos))
    data = write_json(tmp_path / "t.json", [{"text": t} for t in TEXTS])
    for mode in ("base", "chat"):  # no template and no system text either way
        out = tmp_path / f"out-{mode}"
        assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(out), "--modules", "q", "--dtype", "fp64",
                     "--prompt-mode", mode, "--ifd", "--no-progress"]) == 0
        ex = load_results(out).examples.sort_values("order")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        for (_, row), text in zip(ex.iterrows(), TEXTS):
            loss, T = oracle_loss(model, tok, text)
            assert row["status"] == "ok" and int(row["n_tokens"]) == T
            assert int(row["n_prompt_tokens"]) == 0 and int(row["n_response_tokens"]) == T - 1
            assert abs(row["loss"] - loss) <= 1e-10 * loss
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_ppl"]) and math.isnan(row["loss_no_prompt"])
            assert row["ifd_reason"].startswith("plain-text record: no prompt, so IFD") and row["loss_with_prompt"] == row["loss"]


def test_a_fields_mapping_names_the_text_field(tmp_path):
    path = write_json(tmp_path / "c.json", [{"content": TEXTS[0]}, {"content": 7}])
    problems = validate([path], fields=Fields(text="content"))
    assert [str(p) for p in problems] == [f"{path}: record 1, field 'content': must be a string, found a number"]
    folder = save_model(tmp_path, "llama", make_tokenizer())
    write_json(path, [{"content": TEXTS[0]}])
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "c.json"\nmodules = "q"\n[fields]\ntext = "content"\n')
    assert main(["run", "--config", str(toml), "--model", str(folder), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    row = load_results(tmp_path / "o").examples.iloc[0]
    assert row["status"] == "ok" and row["output"] == TEXTS[0] and int(row["n_prompt_tokens"]) == 0


def test_which_records_are_plain_text(tmp_path):
    path = write_json(tmp_path / "d.json", [
        {"text": TEXTS[0]},
        {"instruction": "Q", "output": "A", "text": "### Instruction: Q ### Response: A"},  # Alpaca, as tatsu-lab/alpaca
        {"text": "   "},
        {"text": ["a"]},
        {"other": 1},
    ])
    problems = [str(p) for p in validate([path])]
    assert problems[0] == f"{path}: record 2, field 'text': must be a non-empty string (the text is empty)"
    assert problems[1] == f"{path}: record 3, field 'text': must be a string, found a list"
    assert all("record 4" in p for p in problems[2:]) and problems[2:]  # neither kind: Alpaca's missing fields
    write_json(path, [{"text": TEXTS[0]}, {"instruction": "Q", "output": "A", "text": "T"}])
    examples, _ = load_examples([path])
    assert examples[0].is_text and examples[0].response == TEXTS[0]
    assert not examples[1].is_text and examples[1].prompt == "Q" and examples[1].response == "A"


def test_turns_all_refuses_plain_text(tmp_path, capsys):
    folder = save_model(tmp_path, "llama", make_tokenizer())
    data = write_json(tmp_path / "t.json", [{"text": TEXTS[0]}])
    assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--turns", "all",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{data}: record 0, field 'text': --turns all needs chat 'messages' records" in err and "Traceback" not in err
