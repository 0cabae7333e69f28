"""The text a model is trained on, and which of its tokens are the response.

Modes:

* ``base``: ``prompt + "\\n" + response`` (the paper's text for base models).
* ``chat``: the tokenizer's chat template applied to a system turn (``SYSTEM_PROMPT``) and the
  user's prompt with the generation prompt, followed directly by the response (no end-of-turn
  token), as the paper does for instruction-tuned models. A template that rejects a system
  role is detected by trying it, then the system turn is left out.

Records that already hold chat ``messages`` use those turns as the prompt (chat mode), or their
contents joined by newlines (base mode).

Response tokens (native rule): the tokens whose characters start at or after the response's first
character. The paper's rule (``reference=True``, for drop-in compatibility): the prompt is the
first ``len(tokenizer.encode(text[:text.rfind(response)]))`` tokens.

The loss terms of an example are the predictions of its response tokens at positions
``j >= max(n_prompt, 1)`` (token 0 is never predicted).
"""
from __future__ import annotations

from dataclasses import dataclass

from layergrad.inputs.data import Example
from layergrad.errors import LayergradError

SYSTEM_PROMPT = "You are a helpful assistant."
PROMPT_MODES = ("base", "chat")


class PromptError(LayergradError, ValueError):
    pass


@dataclass(frozen=True)
class Encoded:
    """One example, tokenised."""

    input_ids: list[int]  # after truncation to max_length
    n_prompt: int  # tokens before the response (masked out of the loss)
    n_response: int  # loss terms: response tokens at positions >= max(n_prompt, 1)
    truncated: bool
    text: str
    response_start: int  # character offset of the response in text
    skip_reason: str | None = None  # set when there is nothing to score

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def _chat_prefix(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None) in (None, ""):
        raise PromptError(
            "chat mode needs a tokenizer with a chat template; this one has none (use --prompt-mode base)"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompt(tokenizer, user: str, system: str | None = SYSTEM_PROMPT) -> str:
    """Template text for a system + user turn, falling back to user only if the template rejects system."""
    if system is not None:
        try:
            return _chat_prefix(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": user}])
        except PromptError:
            raise
        except Exception:  # jinja2 TemplateError raised by templates that reject a system role
            pass
    return _chat_prefix(tokenizer, [{"role": "user", "content": user}])


def build_text(ex: Example, mode: str, tokenizer) -> tuple[str, int]:
    """``(text, response_start)`` for an example in a prompt mode."""
    if mode not in PROMPT_MODES:
        raise PromptError(f"unknown prompt mode {mode!r}; choose one of {', '.join(PROMPT_MODES)}")
    if ex.messages is not None:
        turns = [dict(m) for m in ex.messages]
        if mode == "chat":
            prefix = _chat_prefix(tokenizer, turns)
        else:
            prefix = "\n".join(m["content"] for m in turns) + "\n"
    elif mode == "chat":
        prefix = chat_prompt(tokenizer, ex.prompt or "")
    else:
        prefix = (ex.prompt or "") + "\n"
    return prefix + ex.response, len(prefix)


def resolve_mode(mode: str, tokenizer) -> str:
    """``auto``: ``chat`` when the tokenizer has a chat template, else ``base``; other modes as given."""
    if mode != "auto":
        return mode
    return "chat" if getattr(tokenizer, "chat_template", None) else "base"


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def encode(ex: Example, tokenizer, mode: str, max_length: int | None, *, reference: bool = False) -> Encoded:
    """Tokenise one example and find its response tokens; truncate to ``max_length``."""
    text, start = build_text(ex, mode, tokenizer)
    if reference:
        # The paper's rule, kept verbatim for drop-in compatibility.
        ids = tokenizer.encode(text)
        rstart = text.rfind(ex.response)
        n_prompt = len(tokenizer.encode(text[:rstart]))
        start = rstart
    else:
        # No doubled BOS: a chat template that already starts with the BOS text gets no second one.
        special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token) and _adds_bos(tokenizer))
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        n_prompt = len(ids)
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            if a >= start and b > a:
                n_prompt = k
                break
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids = ids[:max_length]
    n_response = max(0, len(ids) - max(n_prompt, 1))
    reason = None
    if n_response == 0:
        if truncated:
            reason = f"response truncated away by --max-length {max_length} (the prompt has {n_prompt} tokens)"
        else:
            reason = "the response has no tokens to score"
    return Encoded(ids, n_prompt, n_response, truncated, text, start, reason)
