"""The LLM judge's prompts and the parsers of its answers: one versioned entry per score.

The prompts are those of the follow-up paper's released code (Li et al. 2025, "How Instruction and
Reasoning Data shape Post-Training: Data Quality through the Lens of Layer-wise Gradients",
arXiv:2504.10766; repository MingLiiii/Gradient_Unified, ``metrics/cal_instag.py``:
``INSTAG_TEMPLATE``, ``DIFF_TEMPLATE``, system prompt ``"You are a helpful assistant."``), where
``{instruction}`` is replaced by the record's instruction (``str.replace``, as there). The InsTag
template is InsTag's own tagging prompt (Lu et al. 2023, "#InsTag: Instruction Tagging for
Analyzing Supervised Fine-tuning of Large Language Models").

The parsers are those of ``metrics/process_instag.py`` and ``metrics/process_diff.py``:

* InsTag: the number of ``"tag":`` occurrences in the answer (a regex count, as released: answers
  whose JSON is invalid, e.g. LaTeX backslashes, still count). An answer with no occurrence is 0
  when it holds a JSON list (``[]``), else NaN with its reason (the released count would give 0).
* difficulty: the first integer at the start of the answer (``^\\s*(\\d+)``), as released; an
  answer that does not start with one is NaN with its reason (the released code leaves the field out).

Deviations from the released scripts, on purpose: temperature 0 (the released calls pass none, so
the API's default 1.0 applied), the instruction's ``input`` (if any) is appended after a newline,
and answers are cached per (prompt, model).

A prompt's ``version`` changes whenever its text or parser changes; it is part of a score
directory's identity and of the cache key.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["JUDGE_PROMPTS", "JudgePrompt", "Parsed", "SYSTEM_PROMPT", "parse_difficulty", "parse_instag"]

SYSTEM_PROMPT = "You are a helpful assistant."

INSTAG_TEMPLATE = """You are a tagging system that provides useful tags for instruction intentions to distinguish instructions for a helpful AI assistant. Below is an instruction:
[begin]
{instruction}
[end]
Please provide coarse-grained tags, such as "Spelling and Grammar Check" and "Cosplay", to identify the main intentions of the above instruction. Your answer should be a list that includes the titles of tags and a brief explanation of each tag. You can provide several tags as you wish.
Your response has to strictly follow this JSON format: [{"tag": str, "explanation": str},{"tag": str, "explanation": str},...]. Please respond in English."""

DIFF_TEMPLATE = """You are a difficulty estimation system that can rate the difficulty level of instruction intentions. Below is an instruction:
[begin]
{instruction}
[end]
The instruction can be tagged with a difficulty level from 1 to 10, where 1 is the easiest and 10 is the hardest. Please rate the difficulty level of the instruction. 
Please first output a single line containing the difficulty score. Then, provide a brief explanation of why you rated the instruction with that difficulty score."""


@dataclass(frozen=True)
class Parsed:
    """A judge's answer read as a score: ``value`` (NaN when it does not parse) and why not."""

    value: float
    reason: str | None = None


_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?```\s*$", re.S)


def parse_instag(answer: str) -> Parsed:
    """Number of intention tags: the ``"tag":`` occurrences (as released); NaN when there are none and
    the answer holds no JSON list either (an empty list ``[]`` is 0 tags)."""
    n = len(re.findall(r'"tag":', answer))
    if n:
        return Parsed(float(n))
    m = _FENCE.match(answer.strip())
    body = m.group(1) if m else answer.strip()
    start, end = body.find("["), body.rfind("]")
    try:
        items = json.loads(body[start:end + 1]) if 0 <= start < end else None
    except ValueError:
        items = None
    if isinstance(items, list):
        return Parsed(0.0)
    return Parsed(math.nan, 'no "tag" entry and no JSON list in the answer (expected [{"tag": ..., "explanation": ...}, ...])')


_FIRST_INT = re.compile(r"^\s*(\d+)")


def parse_difficulty(answer: str) -> Parsed:
    """The first integer at the start of the answer (the released ``^\\s*(\\d+)``)."""
    m = _FIRST_INT.match(answer)
    if m is None:
        return Parsed(math.nan, "the answer does not start with an integer (expected the difficulty 1-10 on its first line)")
    return Parsed(float(int(m.group(1))))


@dataclass(frozen=True)
class JudgePrompt:
    """One judged score: its prompt, its parser, and the version of both."""

    score: str  # the column name: instag | difficulty
    version: str
    system: str
    template: str  # with the placeholder {instruction}
    parse: Callable[[str], Parsed]
    max_tokens: int = 512

    def messages(self, instruction: str) -> list[dict]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.template.replace("{instruction}", instruction)}]

    @property
    def digest(self) -> str:
        """SHA-256 of the system prompt and template (recorded beside the version)."""
        return hashlib.sha256((self.system + "\x00" + self.template).encode()).hexdigest()


#: The judged scores, by name (``score --judge instag,difficulty``).
JUDGE_PROMPTS = {
    "instag": JudgePrompt("instag", "gradient-unified-instag/v1", SYSTEM_PROMPT, INSTAG_TEMPLATE, parse_instag),
    "difficulty": JudgePrompt("difficulty", "gradient-unified-diff/v1", SYSTEM_PROMPT, DIFF_TEMPLATE, parse_difficulty),
}
