"""``--turns all``: every assistant turn's tokens are loss terms, everything else masked.

The oracle here shares no code with the path under test: it renders each prefix of the conversation
with the chat template itself (``tokenizer.apply_chat_template``) to find where each assistant turn's
content starts and ends, tokenises with offsets, builds the mask, and computes the loss (float64
cross-entropy) and the weight gradients (autograd on the weights, no hooks) one example at a time.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import RECORDS, make_tokenizer, save_model, write_json
from layergrad.cli import main
from layergrad.store import load_results

SYSTEM = "You are a helpful assistant."  # the default system turn, spelled out

CHATS = [
    {"id": "two", "messages": [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7."},
                               {"role": "user", "content": "And 12 plus 30?"},
                               {"role": "assistant", "content": "The answer is 42."}]},
    {"id": "three", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Ava has 3 apples."}, {"role": "assistant", "content": "Step 1: 3 apples."},
                                 {"role": "user", "content": "She buys 4 more."}, {"role": "assistant", "content": "3 + 4 = 7."},
                                 {"role": "user", "content": "Final?"}, {"role": "assistant", "content": "The final answer is 7."}]},
    {"id": "one", "messages": [{"role": "user", "content": "Would a lion salute a lieutenant?"},
                               {"role": "assistant", "content": "no"}]},
]


# ------------------------------------------------------------------------------- the oracle

def oracle_turns(messages: list[dict], system: str | None = SYSTEM) -> list[dict]:
    """The conversation the run renders: a system turn first unless the record has one."""
    has = any(m["role"] == "system" for m in messages)
    return list(messages) if has or system is None else [{"role": "system", "content": system}, *messages]


def oracle_chat(tok, messages, *, all_turns: bool, system: str | None = SYSTEM):
    """(text, character spans of the scored assistant contents): the last turn without its end-of-turn."""
    turns = oracle_turns(messages, system)
    text = tok.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True) + turns[-1]["content"]
    spans = []
    for k, m in enumerate(turns):
        if m["role"] != "assistant" or (not all_turns and k != len(turns) - 1):
            continue
        start = len(tok.apply_chat_template(turns[:k], tokenize=False, add_generation_prompt=True))
        assert text[start:start + len(m["content"])] == m["content"]
        spans.append((start, start + len(m["content"])))
    return text, spans


def oracle_base(messages, *, all_turns: bool):
    parts = [m["content"] for m in messages]
    text = "\n".join(parts)
    spans, pos = [], 0
    for k, m in enumerate(messages):
        if m["role"] == "assistant" and (all_turns or k == len(messages) - 1):
            spans.append((pos, pos + len(m["content"])))
        pos += len(m["content"]) + 1
    return text, spans


def oracle_mask(tok, text, spans, max_length=None):
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if ids[:2] == [tok.bos_token_id] * 2:  # a template that writes the BOS itself: no second one
        ids, offsets = ids[1:], offsets[1:]
    mask = [j >= 1 and b > a and any(s <= a < e for s, e in spans) for j, (a, b) in enumerate(offsets)]
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, [j for j, m in enumerate(mask) if m]


def oracle_loss_and_grads(model, ids, targets):
    """float64 mean CE over ``targets`` and each q_proj weight's autograd gradient."""
    model.zero_grad(set_to_none=True)
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0].to(torch.float64)
    t = torch.tensor(targets)
    loss = F.cross_entropy(logits[t - 1], x[0, t], reduction="mean")
    loss.backward()
    grads = {n.removesuffix(".weight"): p.grad.detach().clone() for n, p in model.named_parameters() if n.endswith("q_proj.weight")}
    return loss.item(), grads


# ------------------------------------------------------------------------------- running the tool

def run(folder, data, out, *extra):
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(out), "--modules", "q", "--dtype", "fp64",
                 "--stats-dtype", "float64", "--spectrum-k", "all", "--batch-size", "1", "--no-progress", *extra])
    assert code == 0
    res = load_results(out)
    return res.examples.set_index("id"), res.modules, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("turns"), "llama", tokenizer)


@pytest.fixture(scope="module")
def oracle_model(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    return model, AutoTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------------------- the mask

@pytest.mark.parametrize("rec", CHATS, ids=[c["id"] for c in CHATS])
@pytest.mark.parametrize("mode", ["chat", "base"])
def test_turns_all_masks_exactly_the_assistant_turns(tokenizer, rec, mode):
    from layergrad.inputs.data import Example
    from layergrad.inputs.prompting import encode

    msgs = rec["messages"]
    ex = Example(id="x", index=0, source="s", group="g", prompt=None, response=msgs[-1]["content"],
                 messages=tuple(msgs[:-1]))
    text, spans = oracle_chat(tokenizer, msgs, all_turns=True) if mode == "chat" else oracle_base(msgs, all_turns=True)
    ids, targets = oracle_mask(tokenizer, text, spans)
    enc = encode(ex, tokenizer, mode, None, turns="all")
    assert enc.text == text and enc.input_ids == ids
    assert enc.loss_targets() == targets and enc.n_response == len(targets)
    n_assistant = sum(m["role"] == "assistant" for m in msgs)
    assert len(enc.loss_spans) == n_assistant  # one run of tokens per assistant turn
    decoded = [tokenizer.decode(ids[a:b]) for a, b in enc.loss_spans]
    assert decoded == [m["content"] for m in msgs if m["role"] == "assistant"]
    # --turns last: the last turn only, one suffix
    text, spans = oracle_chat(tokenizer, msgs, all_turns=False) if mode == "chat" else oracle_base(msgs, all_turns=False)
    assert encode(ex, tokenizer, mode, None).loss_targets() == oracle_mask(tokenizer, text, spans)[1]


def test_truncation_keeps_the_turns_before_the_cut(tokenizer):
    from layergrad.inputs.data import Example
    from layergrad.inputs.prompting import encode

    msgs = CHATS[1]["messages"]
    ex = Example(id="x", index=0, source="s", group="g", prompt=None, response=msgs[-1]["content"], messages=tuple(msgs[:-1]))
    text, spans = oracle_chat(tokenizer, msgs, all_turns=True)
    full = oracle_mask(tokenizer, text, spans)[1]
    cut = (full[0] + full[-1]) // 2  # inside the conversation: the later turns are cut away
    enc = encode(ex, tokenizer, "chat", cut, turns="all")
    assert enc.truncated and enc.loss_targets() == [j for j in full if j < cut] == oracle_mask(tokenizer, text, spans, cut)[1]


def test_loss_positions_take_spans():
    from layergrad.run.loss import loss_positions

    rows, pred, tgt = loss_positions([6, 5], [2, 0], [((0, 2), (4, 6)), None])
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 1] and tgt.tolist() == [1, 4, 5, 1, 2, 3, 4]
    assert (pred == tgt - 1).all()


# ------------------------------------------------------------------------------- the numbers

def _check_numbers(ex, mods, oracle_model, records, *, all_turns: bool, system=SYSTEM):
    model, tok = oracle_model
    for rec in records:
        text, spans = oracle_chat(tok, rec["messages"], all_turns=all_turns, system=system)
        ids, targets = oracle_mask(tok, text, spans)
        loss, grads = oracle_loss_and_grads(model, ids, targets)
        row = ex.loc[rec["id"]]
        assert row["status"] == "ok" and int(row["n_tokens"]) == len(ids) and int(row["n_response_tokens"]) == len(targets)
        assert abs(row["loss"] - loss) <= 1e-10 * loss, (rec["id"], row["loss"], loss)
        got = mods[mods["id"] == rec["id"]].set_index("module")
        assert set(got.index) == set(grads)
        for name, g in grads.items():  # X and D over every real token; only the loss is masked
            s = torch.linalg.svdvals(g)
            assert abs(got.loc[name, "nuclear"] - s.sum().item()) <= 1e-8 * s.sum().item()
            assert abs(got.loc[name, "spectral"] - s[0].item()) <= 1e-8 * s[0].item()
            assert int(got.loc[name, "rank"]) == min(len(ids), *g.shape)


def test_turns_all_numbers_match_the_oracle(tmp_path, folder, oracle_model):
    data = write_json(tmp_path / "chats.json", CHATS)
    ex, mods, manifest = run(folder, data, tmp_path / "out", "--prompt-mode", "chat", "--turns", "all")
    assert manifest["turns"] == "all"
    _check_numbers(ex, mods, oracle_model, CHATS, all_turns=True)


def test_turns_last_keeps_todays_numbers(tmp_path, folder, oracle_model):
    data = write_json(tmp_path / "chats.json", CHATS)
    ex, mods, manifest = run(folder, data, tmp_path / "last", "--prompt-mode", "chat", "--turns", "last")
    default, mods_default, _ = run(folder, data, tmp_path / "default", "--prompt-mode", "chat")
    assert manifest["turns"] == "last"
    assert ex["loss"].to_dict() == default["loss"].to_dict()  # --turns last is the default, bit for bit
    _check_numbers(ex, mods, oracle_model, CHATS, all_turns=False)
    # today's text for messages records (the template's own system default) is --system-prompt template
    old, old_mods, _ = run(folder, data, tmp_path / "template", "--prompt-mode", "chat", "--system-prompt", "template")
    _check_numbers(old, old_mods, oracle_model, CHATS, all_turns=False, system=None)


def test_one_assistant_turn_has_the_same_numbers_and_ifd_under_both(tmp_path, folder):
    data = write_json(tmp_path / "chats.json", CHATS)
    last, _, _ = run(folder, data, tmp_path / "last", "--prompt-mode", "chat", "--ifd")
    every, _, _ = run(folder, data, tmp_path / "all", "--prompt-mode", "chat", "--ifd", "--turns", "all")
    assert every.loc["one", "loss"] == last.loc["one", "loss"] and every.loc["one", "ifd"] == last.loc["one", "ifd"]
    assert math.isfinite(every.loc["one", "ifd"]) and not isinstance(every.loc["one", "ifd_reason"], str)
    for k, n in (("two", 2), ("three", 3)):  # several turns scored: IFD undefined, with the reason
        assert math.isnan(every.loc[k, "ifd"]) and math.isnan(every.loc[k, "ifd_ppl"])
        assert f"--turns all scores {n} assistant turns" in every.loc[k, "ifd_reason"]
        assert every.loc[k, "loss_with_prompt"] == every.loc[k, "loss"]
        assert math.isfinite(last.loc[k, "ifd"])


# ------------------------------------------------------------------------------- bad input

def test_turns_all_on_alpaca_records_is_a_clear_error(tmp_path, folder, capsys):
    data = write_json(tmp_path / "mixed.json", [CHATS[0], RECORDS[0]])
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--turns", "all",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{data}: record 1, field 'output': --turns all needs chat 'messages' records" in err
    assert "an Alpaca record" in err and "--turns last" in err and "record 0" not in err
    assert not (tmp_path / "o").exists()


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path, capsys):
    hiding = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}(hidden)"
              "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = make_tokenizer(hiding)
    folder = save_model(tmp_path, "llama", tok)
    data = write_json(tmp_path / "chats.json", CHATS[:1])
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--turns", "all",
                 "--prompt-mode", "chat", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{data}: record 0, field 'messages[1]'" in err and "rewrites earlier turns" in err and "--turns last" in err


def test_turns_all_with_the_papers_rule_is_a_config_error():
    from layergrad.config import RunConfig
    from layergrad.errors import ConfigError

    with pytest.raises(ConfigError, match="turns.*paper's tokenisation rule"):
        RunConfig(data=["d.json"], out="o", turns="all", reference=True).validate()
    with pytest.raises(ConfigError, match="unknown turns value 'every'"):
        RunConfig(data=["d.json"], out="o", turns="every").validate()
