"""One system-prompt rule for Alpaca and ``messages`` records: ``--system-prompt TEXT|none|template``.

Each expected text is written out here by hand for the conftest templates.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import CHAT_TEMPLATE, NO_SYSTEM_TEMPLATE, make_tokenizer, save_model, write_json
from layergrad.cli import main
from layergrad.inputs.data import Example
from layergrad.inputs.prompting import build_text, encode
from layergrad.store import load_results

# like SmolLM2's: its own system turn when none is given
DEFAULT_TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are SmolTest.<|im_end|>\n{% endif %}"
                    + CHAT_TEMPLATE)
Q, R = "What is 12 plus 30?", "The answer is 42."
USER = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n{R}"


def sys_turn(text):
    return f"<|im_start|>system\n{text}<|im_end|>\n"


def alpaca():
    return Example(id="a", index=0, source="s", group="g", prompt=Q, response=R)


def chat(system=None):
    turns = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": Q}]
    return Example(id="c", index=0, source="s", group="g", prompt=None, response=R, messages=tuple(turns))


EXPECTED = {  # (template, --system-prompt) -> text of both records (neither has a system turn)
    (CHAT_TEMPLATE, None): sys_turn("You are a helpful assistant.") + USER,  # the default
    (CHAT_TEMPLATE, "Be brief."): sys_turn("Be brief.") + USER,
    (CHAT_TEMPLATE, "template"): USER,  # this template writes no default of its own
    (CHAT_TEMPLATE, "none"): USER,
    (DEFAULT_TEMPLATE, None): sys_turn("You are a helpful assistant.") + USER,
    (DEFAULT_TEMPLATE, "template"): sys_turn("You are SmolTest.") + USER,
    (DEFAULT_TEMPLATE, "none"): sys_turn("") + USER,  # its default kept out by an empty system turn
    (NO_SYSTEM_TEMPLATE, None): f"<start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\n{R}",  # the fallback
    (NO_SYSTEM_TEMPLATE, "none"): f"<start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\n{R}",
}


@pytest.mark.parametrize("template, system", list(EXPECTED), ids=[f"{i}-{s}" for i, (_, s) in enumerate(EXPECTED)])
def test_each_mode_gives_alpaca_and_messages_records_the_same_text(template, system):
    tok = make_tokenizer(template)
    kw = {} if system is None else {"system": system}
    for ex in (alpaca(), chat()):
        text, start = build_text(ex, "chat", tok, **kw)
        assert text == EXPECTED[template, system] and text[start:] == R
    assert encode(alpaca(), tok, "chat", None, **kw).input_ids == encode(chat(), tok, "chat", None, **kw).input_ids


@pytest.mark.parametrize("system", [None, "Be brief.", "none", "template"])
@pytest.mark.parametrize("template", [CHAT_TEMPLATE, DEFAULT_TEMPLATE])
def test_a_records_own_system_turn_always_wins(template, system):
    tok = make_tokenizer(template)
    text, _ = build_text(chat(system="Own rule."), "chat", tok, **({} if system is None else {"system": system}))
    assert text == sys_turn("Own rule.") + USER


@pytest.mark.parametrize("system", ["Be brief.", "none", "template"])
def test_base_mode_has_no_system_text(system):
    tok = make_tokenizer()
    for ex in (alpaca(), chat()):
        assert build_text(ex, "base", tok, system=system) == (f"{Q}\n{R}", len(Q) + 1)


def test_the_run_records_the_rule_and_its_numbers_follow_it(tmp_path, capsys):
    tok = make_tokenizer(DEFAULT_TEMPLATE)
    folder = save_model(tmp_path, "llama", tok)
    data = write_json(tmp_path / "d.json", [{"id": "a", "instruction": Q, "output": R},
                                            {"id": "c", "messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": R}]}])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    otok = AutoTokenizer.from_pretrained(folder)
    for system, sys_text in (("Be brief.", sys_turn("Be brief.")), ("template", sys_turn("You are SmolTest.")),
                             ("none", sys_turn(""))):
        out = tmp_path / f"run-{system.split()[0]}"
        assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(out), "--modules", "q",
                     "--dtype", "fp64", "--prompt-mode", "chat", "--system-prompt", system, "--no-progress"]) == 0
        assert json.loads((out / "manifest.json").read_text())["system_prompt"] == system
        # the oracle: the text written out above, its response tokens by offsets, float64 CE
        text = sys_text + USER
        enc = otok(text, return_offsets_mapping=True)
        ids = enc["input_ids"]
        first = next(k for k, (a, b) in enumerate(enc["offset_mapping"]) if a >= len(text) - len(R) and b > a)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        loss = F.cross_entropy(logits[first - 1:-1], torch.tensor(ids[first:])).item()
        ex = load_results(out).examples.set_index("id")
        for k in ("a", "c"):
            assert int(ex.loc[k, "n_prompt_tokens"]) == first and abs(ex.loc[k, "loss"] - loss) <= 1e-10 * loss
    # another rule is another run: a resume with it is refused, naming the key
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "run-none"), "--modules", "q",
                 "--dtype", "fp64", "--prompt-mode", "chat", "--system-prompt", "template", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "system_prompt" in err and "Traceback" not in err
