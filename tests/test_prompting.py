"""Prompt text, response-token masks, chat templates, truncation."""
from __future__ import annotations

from conftest import NO_SYSTEM_TEMPLATE, make_tokenizer
from layergrad.inputs.data import Example
from layergrad.inputs.prompting import SYSTEM_PROMPT, build_text, encode


def ex(prompt="What is 12 plus 30?", response="The answer is 42.", messages=None):
    return Example(id="x", index=0, source="s", group="g", prompt=None if messages else prompt, response=response, messages=messages)


def test_base_text_is_prompt_newline_response():
    tok = make_tokenizer()
    text, start = build_text(ex(), "base", tok)
    assert text == "What is 12 plus 30?\nThe answer is 42." and text[start:] == "The answer is 42."


def test_response_tokens_are_exactly_those_from_the_response_start():
    tok = make_tokenizer()
    e = encode(ex(), tok, "base", None)
    assert e.input_ids[0] == tok.bos_token_id  # one BOS
    decoded = tok.decode(e.input_ids[e.n_prompt:])
    assert decoded == "The answer is 42."
    assert e.n_response == len(e.input_ids) - e.n_prompt


def test_chat_mode_uses_system_prompt_when_template_accepts_it():
    tok = make_tokenizer()
    text, start = build_text(ex(), "chat", tok)
    assert SYSTEM_PROMPT in text and text.endswith("<|im_start|>assistant\nThe answer is 42.")
    assert "<|im_end|>" not in text[start:]  # no end-of-turn after the response


def test_chat_template_rejecting_system_role_is_detected_by_trying():
    tok = make_tokenizer(NO_SYSTEM_TEMPLATE)
    text, _ = build_text(ex(), "chat", tok)
    assert SYSTEM_PROMPT not in text and text.startswith("<start_of_turn>user\nWhat is 12 plus 30?")


def test_no_doubled_bos_when_template_starts_with_it():
    tok = make_tokenizer("<s>{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    e = encode(ex(), tok, "chat", None)
    assert e.input_ids[0] == tok.bos_token_id and e.input_ids[1] != tok.bos_token_id


def test_chat_records_use_their_own_turns():
    tok = make_tokenizer()
    msgs = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sum?"})
    text, start = build_text(ex(messages=msgs, response="42"), "chat", tok, system="template")
    assert text.count("<|im_start|>") == 4 and text[start:] == "42" and SYSTEM_PROMPT not in text
    # the default rule gives messages records without a system turn the same system turn as Alpaca records
    text, start = build_text(ex(messages=msgs, response="42"), "chat", tok)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi") and text[start:] == "42"


def test_truncation_keeps_prompt_and_counts_remaining_response():
    tok = make_tokenizer()
    full = encode(ex(), tok, "base", None)
    cut = encode(ex(), tok, "base", full.n_prompt + 2)
    assert cut.truncated and cut.n_response == 2 and cut.skip_reason is None
    gone = encode(ex(), tok, "base", full.n_prompt)
    assert gone.n_response == 0 and "--max-length" in gone.skip_reason


def test_tokenizer_without_bos():
    tok = make_tokenizer(bos=False)
    e = encode(ex(), tok, "base", None)
    assert tok.decode(e.input_ids[e.n_prompt:]) == "The answer is 42."
    assert tok.bos_token_id not in e.input_ids
