"""The text a model is trained on, and which of its tokens are the response.

Modes:

* ``base``: ``prompt + "\\n" + response`` (the paper's text for base models). No system text.
* ``chat``: the tokenizer's chat template applied to a system turn (see *System prompt*) and the
  user's prompt with the generation prompt, followed directly by the response (no end-of-turn
  token), as the paper does for instruction-tuned models.

Records that already hold chat ``messages`` use those turns as the prompt (chat mode), or their
contents joined by newlines (base mode). Plain-text records (only a ``text`` field) are the text
alone in either mode: no template, no system text, every token a response token.

System prompt (``run --system-prompt TEXT|none|template``, :data:`SYSTEM_PROMPT` by default), one
rule for every record without a system turn of its own, Alpaca and ``messages`` alike:

* ``TEXT``: a system turn with that text (default: the paper's ``"You are a helpful assistant."``);
* ``template``: no system turn is given, so the chat template writes its own default, if it has one
  (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
* ``none``: no system text. No system turn is given; where the template would then write its own
  default system turn (detected by rendering with and without an empty system turn), an empty
  system turn is given instead, the only way to keep that default out.

A record's own system turn always wins. A template that rejects a system role (detected by trying)
gets no system turn. Before this rule, ``messages`` records without a system turn got the template's
default (today's ``template``); they now get the same system turn as Alpaca records.

Turns (``run --turns last|all``, ``messages`` records only for ``all``):

* ``last``: the response is the last (assistant) turn: one contiguous suffix of the text.
* ``all``: every assistant turn's content is response text and everything else is masked (the
  usual assistant-only SFT loss, TRL's ``assistant_only_loss``). An earlier assistant turn's content
  starts where the template's rendering of the turns before it (with the generation prompt) ends
  and runs for ``len(content)`` characters; the text must render every earlier turn that way
  (checked; a template that rewrites earlier assistant turns is refused). Its end-of-turn token is
  not a loss term, as the last turn has none (base mode: the contents joined by newlines, the
  newline not a loss term).

Response tokens (native rule): the tokens whose characters start inside a response span
(``start <= a < end``, ``a < b``: the BOS with offsets (0, 0) is never one); for the last turn the
span runs to the end of the text. The paper's rule (``reference=True``, for drop-in compatibility):
the prompt is the first ``len(tokenizer.encode(text[:text.rfind(response)]))`` tokens.

The loss terms of an example are its response tokens at positions ``j >= 1`` (token 0 is never
predicted): :attr:`Encoded.loss_spans`.
"""
from __future__ import annotations

from dataclasses import dataclass

from layergrad.inputs.data import Example
from layergrad.errors import LayergradError
from layergrad.vocab import DEFAULT_SYSTEM_PROMPT as SYSTEM_PROMPT
from layergrad.vocab import TURNS

PROMPT_MODES = ("base", "chat")
#: Why IFD is undefined for a plain-text record (it has no prompt).
TEXT_IFD_REASON = ("plain-text record: no prompt, so IFD (how much the prompt helps predict the response) "
                   "is undefined")


class PromptError(LayergradError, ValueError):
    pass


@dataclass(frozen=True)
class Cut:
    """What ``run --truncate-response`` / ``--truncate-to`` did to one example (:mod:`layergrad.run.truncate`)."""

    at: int | None  # the K asked for this example (None: no usable --truncate-to partner, see skip_reason)
    full: int  # loss terms before the cut (after --max-length)
    partner: str | None = None  # --truncate-to: the id of the partner example in the other run


@dataclass(frozen=True)
class Encoded:
    """One example, tokenised."""

    input_ids: list[int]  # after truncation to max_length
    n_prompt: int  # tokens before the first response token
    n_response: int  # loss terms: response tokens at positions >= 1
    truncated: bool
    text: str
    response_start: int  # character offset of the (last) response in text
    skip_reason: str | None = None  # set when there is nothing to score
    # token spans [a, b) of the loss terms, in order, after truncation; None: the suffix max(n_prompt, 1)..T
    spans: tuple[tuple[int, int], ...] | None = None
    ifd_reason: str | None = None  # why IFD is undefined for this example (None: one response after a prompt)
    cut: Cut | None = None  # set under --truncate-response/--truncate-to (input_ids and spans are then the cut ones)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def loss_spans(self) -> tuple[tuple[int, int], ...]:
        """Token spans ``[a, b)`` of the loss terms (1 <= a < b <= T)."""
        if self.spans is not None:
            return self.spans
        a = max(self.n_prompt, 1)
        return ((a, self.n_tokens),) if a < self.n_tokens else ()

    def loss_targets(self) -> list[int]:
        """The positions ``j`` of the loss terms (token ``j`` predicted from position ``j - 1``)."""
        return [j for a, b in self.loss_spans for j in range(a, b)]


@dataclass(frozen=True)
class Rendered:
    """An example's text and the character spans ``[start, end)`` of its response text, in order."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def start(self) -> int:
        """Where the last response starts (the one suffix of ``--turns last``)."""
        return self.spans[-1][0]


def _chat_prefix(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None) in (None, ""):
        raise PromptError(
            "chat mode needs a tokenizer with a chat template; this one has none (use --prompt-mode base)"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _try_prefix(tokenizer, messages: list[dict]) -> str | None:
    """The template's text, or None when the template rejects these turns (a system role, say)."""
    try:
        return _chat_prefix(tokenizer, messages)
    except PromptError:
        raise
    except Exception:  # jinja2 TemplateError raised by templates that reject a system role
        return None


def writes_default_system(tokenizer) -> bool:
    """Whether the chat template writes a system turn of its own when none is given (SmolLM2, Qwen2.5).

    Renders one user turn with no system turn (``A``) and after an empty one (``E``): what ``A`` has
    before their common tail, less a leading BOS text, is the template's own system turn.
    """
    user = [{"role": "user", "content": "\x00u"}]
    alone = _chat_prefix(tokenizer, user)
    empty = _try_prefix(tokenizer, [{"role": "system", "content": ""}, *user])
    if empty is None:
        return False  # no system role at all
    n = 0
    while n < min(len(alone), len(empty)) and alone[-1 - n] == empty[-1 - n]:
        n += 1
    head = alone[: len(alone) - n]
    bos = getattr(tokenizer, "bos_token", None)
    if bos and head.startswith(bos):
        head = head[len(bos):]
    return bool(head.strip())


def system_turns(tokenizer, system: str, turns: list[dict]) -> list[dict]:
    """``turns`` with the system turn of ``--system-prompt system`` put first (the module docstring's rule)."""
    if any(t["role"] == "system" for t in turns) or system == "template":
        return turns
    if system == "none":
        if not writes_default_system(tokenizer):
            return turns
        content = ""
    else:
        content = system
    with_system = [{"role": "system", "content": content}, *turns]
    return with_system if _try_prefix(tokenizer, with_system) is not None else turns


def chat_prompt(tokenizer, user: str, system: str | None = SYSTEM_PROMPT) -> str:
    """Template text for a system + user turn, falling back to user only if the template rejects system."""
    return _chat_prefix(tokenizer, system_turns(tokenizer, "template" if system is None else system,
                                                [{"role": "user", "content": user}]))


def _where(ex: Example, k: int) -> str:
    return f"{ex.source}: record {ex.index}, field 'messages[{k}]'"


def render(ex: Example, mode: str, tokenizer, *, system: str = SYSTEM_PROMPT, turns: str = "last") -> Rendered:
    """The text of an example and the character spans of its response text (see the module docstring)."""
    if mode not in PROMPT_MODES:
        raise PromptError(f"unknown prompt mode {mode!r}; choose one of {', '.join(PROMPT_MODES)}")
    if turns not in TURNS:
        raise PromptError(f"unknown --turns {turns!r}; choose one of {', '.join(TURNS)}")
    if turns == "all" and not ex.is_chat:
        raise PromptError(f"{ex.source}: record {ex.index}: --turns all needs chat 'messages' records (turns to "
                          f"score); this is {'a plain-text' if ex.is_text else 'an Alpaca'} record: use --turns last")
    if ex.is_text:
        return Rendered(ex.response, ((0, len(ex.response)),))
    if ex.messages is None:
        if mode == "chat":
            prefix = _chat_prefix(tokenizer, system_turns(tokenizer, system, [{"role": "user", "content": ex.prompt or ""}]))
        else:
            prefix = (ex.prompt or "") + "\n"
        return Rendered(prefix + ex.response, ((len(prefix), len(prefix) + len(ex.response)),))
    msgs = [dict(m) for m in ex.messages]
    spans = []
    if mode == "chat":
        msgs = system_turns(tokenizer, system, msgs)
        text = _chat_prefix(tokenizer, msgs) + ex.response
        if turns == "all":
            shift = len(msgs) - len(ex.messages)  # a system turn put first
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                where = _where(ex, k - shift)
                try:
                    start = len(_chat_prefix(tokenizer, msgs[:k]))
                except PromptError:
                    raise
                except Exception as e:  # noqa: BLE001 - the template's own error (an assistant turn first, ...)
                    raise PromptError(f"{where}: the chat template cannot render the turns before this assistant "
                                      f"turn ({type(e).__name__}: {e}); --turns all needs them: use --turns last") from None
                if text[start:start + len(m["content"])] != m["content"]:
                    raise PromptError(f"{where}: the chat template does not write this assistant turn's content right "
                                      "after the turns before it (it rewrites earlier turns), so --turns all cannot "
                                      "find its tokens; use --turns last")
                spans.append((start, start + len(m["content"])))
    else:
        prefix, pos = "", 0
        for m in msgs:
            if turns == "all" and m["role"] == "assistant":
                spans.append((pos, pos + len(m["content"])))
            prefix += m["content"] + "\n"
            pos = len(prefix)
        text = prefix + ex.response
    start = len(text) - len(ex.response)
    return Rendered(text, (*spans, (start, len(text))))


def build_text(ex: Example, mode: str, tokenizer, *, system: str = SYSTEM_PROMPT) -> tuple[str, int]:
    """``(text, response_start)`` for an example in a prompt mode (``--turns last``)."""
    r = render(ex, mode, tokenizer, system=system)
    return r.text, r.start


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


def _token_spans(offsets, spans) -> list[tuple[int, int]]:
    """Token spans ``[i, j)`` of the tokens whose characters start inside each character span."""
    out = []
    for s, e in spans:
        ks = [k for k, (a, b) in enumerate(offsets) if s <= a < e and b > a]
        if ks:
            out.append((ks[0], ks[-1] + 1))
    return out


def encode(ex: Example, tokenizer, mode: str, max_length: int | None, *, reference: bool = False,
           system: str = SYSTEM_PROMPT, turns: str = "last") -> Encoded:
    """Tokenise one example and find its response tokens; truncate to ``max_length``."""
    if reference and turns == "all":
        raise PromptError("--turns all cannot use the paper's tokenisation rule (drop-in mode): it knows one response")
    rendered = render(ex, mode, tokenizer, system=system, turns=turns)
    text, start = rendered.text, rendered.start
    spans = None
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
        offsets = list(enc["offset_mapping"])
        n_prompt = len(ids)
        for k, (a, b) in enumerate(offsets):
            if a >= start and b > a:
                n_prompt = k
                break
        if ex.is_text:
            n_prompt = 0  # every token is a response token (the first has nothing to be predicted from)
        elif len(rendered.spans) > 1:
            spans = _token_spans(offsets, rendered.spans[:-1]) + [(n_prompt, len(ids))]
            n_prompt = spans[0][0]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids = ids[:max_length]
    if spans is not None:
        spans = tuple((max(a, 1), min(b, len(ids))) for a, b in spans if min(b, len(ids)) > max(a, 1))
        n_response = sum(b - a for a, b in spans)
    else:
        n_response = max(0, len(ids) - max(n_prompt, 1))
    reason = None
    if n_response == 0:
        if truncated:
            reason = f"response truncated away by --max-length {max_length} (the prompt has {n_prompt} tokens)"
        else:
            reason = "the response has no tokens to score"
    ifd_reason = None
    if ex.is_text:
        ifd_reason = TEXT_IFD_REASON
    elif spans is not None and len(spans) != 1:
        ifd_reason = (f"--turns all scores {len(spans)} assistant turns; IFD compares one response with and without "
                      "its prompt (run with --turns last for IFD on the last turn)")
    elif spans is not None and spans[0][1] != len(ids):
        ifd_reason = "--turns all: the scored turn is not the end of the text; IFD needs one response at the end"
    return Encoded(ids, n_prompt, n_response, truncated, text, start, reason, spans, ifd_reason)
