"""One training example (:class:`Example`), the names of its record fields (:class:`Fields`), and the parsing
of one record as Alpaca, chat or plain text (every problem reported, none raised)."""
from __future__ import annotations

from dataclasses import dataclass, field

from layergrad.inputs.data.problems import _kind


@dataclass(frozen=True)
class Example:
    """One training example, ready to be scored.

    ``prompt`` is the text before the response for Alpaca records (``None`` for chat
    records, whose prompt is ``messages``); ``response`` is the supervised target.
    ``record`` and ``raw`` keep the input as it was, so selected examples can be
    written back in the input's own format (:func:`write_records`).
    """

    id: str  # stable id: the record's own id (as str), else content_id(record)
    index: int  # 0-based record index in its file
    source: str  # file path as given
    group: str  # group label: the `group` argument, else the file's stem
    prompt: str | None  # Alpaca: instruction (+ "\n" + input); None for chat and plain-text records
    response: str  # Alpaca: output; chat: content of the last (assistant) turn; plain text: the text
    # chat: the turns before the response, each {"role", "content"}; None for Alpaca
    messages: tuple[dict, ...] | None = field(default=None, compare=False)
    record: dict = field(default_factory=dict, compare=False)  # the record as parsed
    raw: str | None = field(default=None, compare=False)  # JSONL: the exact line, no newline

    @property
    def is_chat(self) -> bool:
        """True for a chat (``messages``) record."""
        return self.messages is not None

    @property
    def is_text(self) -> bool:
        """True for a plain-text record (no prompt: every token is scored)."""
        return self.messages is None and self.prompt is None


@dataclass(frozen=True)
class Fields:
    """Names of the record fields, for data that calls them something else."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    id: str = "id"
    messages: str = "messages"
    text: str = "text"

    def __post_init__(self):
        for name in ("instruction", "input", "output", "id", "messages", "text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Fields.{name} must be a non-empty field name, got {value!r}")


def _present(record: dict, name: str) -> bool:
    return record.get(name) is not None


def _missing(record: dict, name: str) -> str:
    keys = ", ".join(repr(k) for k in list(record)[:8])
    return f"missing (the record has {('keys ' + keys) if keys else 'no keys'})"


def _parse_alpaca(record: dict, fields: Fields, problem) -> tuple[str, str] | None:
    """(prompt, response) of an Alpaca record, or None after reporting its problems."""
    ok = True
    for name in (fields.instruction, fields.output):
        if not _present(record, name):
            problem(name, _missing(record, name))
            ok = False
        elif not isinstance(record[name], str):
            problem(name, f"must be a string, found {_kind(record[name])}")
            ok = False
    if ok and not record[fields.output].strip():
        problem(fields.output, "must be a non-empty string (the response is empty)")
        ok = False
    if _present(record, fields.input) and not isinstance(record[fields.input], str):
        problem(fields.input, f"must be a string, found {_kind(record[fields.input])}")
        ok = False
    if not ok:
        return None
    prompt = record[fields.instruction]
    inp = record.get(fields.input) or ""
    if inp != "":  # the paper's rule: exactly "instruction\ninput" when input is non-empty
        prompt = prompt + "\n" + inp
    return prompt, record[fields.output]


def _parse_chat(record: dict, fields: Fields, problem) -> tuple[tuple[dict, ...], str] | None:
    """(prompt turns, response) of a chat record, or None after reporting its problems."""
    name = fields.messages
    turns = record[name]
    if not isinstance(turns, list):
        problem(name, f"must be a list of {{'role', 'content'}} turns, found {_kind(turns)}")
        return None
    ok = True
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            problem(f"{name}[{k}]", f"turn must be an object, found {_kind(turn)}")
            ok = False
            continue
        for key in ("role", "content"):
            if not isinstance(turn.get(key), str):
                what = "missing" if turn.get(key) is None else f"found {_kind(turn[key])}"
                problem(f"{name}[{k}].{key}", f"must be a string ({what})")
                ok = False
    if not ok:
        return None
    roles = [t["role"] for t in turns]
    if "assistant" not in roles:
        found = ", ".join(dict.fromkeys(roles)) or "none, the list is empty"
        problem(name, f"no assistant turn to use as the response (roles: {found})")
        return None
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last != len(turns) - 1:
        after = ", ".join(roles[last + 1:])
        problem(name, f"turns after the last assistant turn ({after}) would be ignored; "
                "end the conversation with the response")
        return None
    response = turns[last]["content"]
    if not response.strip():
        problem(f"{name}[{last}].content", "must be a non-empty string (the response is empty)")
        return None
    prompt = tuple({"role": t["role"], "content": t["content"]} for t in turns[:last])
    return prompt, response


def _parse_text(record: dict, fields: Fields, problem) -> str | None:
    """The text of a plain-text record, or None after reporting its problems."""
    value = record[fields.text]
    if not isinstance(value, str):
        problem(fields.text, f"must be a string, found {_kind(value)}")
        return None
    if not value.strip():
        problem(fields.text, "must be a non-empty string (the text is empty)")
        return None
    return value


def _parse_record(record: dict, fields: Fields, problem) -> tuple | None:
    """(prompt, messages, response) of a record, or None after reporting its problems."""
    if _present(record, fields.messages):
        chat = _parse_chat(record, fields, problem)
        return (None, *chat) if chat else None
    if _present(record, fields.text) and not (_present(record, fields.instruction) or _present(record, fields.output)):
        text = _parse_text(record, fields, problem)
        return (None, None, text) if text is not None else None
    alpaca = _parse_alpaca(record, fields, problem)
    return (alpaca[0], None, alpaca[1]) if alpaca else None
