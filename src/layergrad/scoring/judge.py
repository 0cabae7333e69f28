"""InsTag and difficulty by an LLM judge through any OpenAI-compatible chat-completions server.

The official ``openai`` client (``base_url`` = ``--judge-url``, e.g. ``http://127.0.0.1:8000/v1`` for
vLLM, SGLang, TGI or ``transformers serve``; the API key from the environment variable
``--judge-api-key-env``, ``OPENAI_API_KEY`` by default) sends each prompt of :mod:`.prompts` with
temperature 0. Requests run ``concurrency`` at a time (a thread pool); the client retries timeouts,
connection errors, HTTP 408/409/429 and 5xx with exponential back-off (``max_retries``; it honours
``Retry-After``). Every answer is cached (:mod:`.cache`) before it is used.

Outcomes per example and score:

* an answer: parsed by the prompt's parser; one that does not parse is NaN with the raw text and
  the reason (``<score>_raw``, ``<score>_reason``), never dropped or guessed;
* a refusal (``message.refusal``, no content, or ``finish_reason == "content_filter"``): NaN, reason
  ``refused``, the refusal text as raw;
* a response the client cannot read (malformed JSON, no choices) or a request the server rejects
  (HTTP 400/422, e.g. a prompt too long for its context): NaN with the reason; not cached;
* the server unreachable, the key rejected (401/403), the model unknown (404), or 429/5xx still
  after every retry: :class:`JudgeUnavailable` (the command exits 2); what was committed and
  every cached answer is kept, and the same command resumes.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import pyarrow as pa

from layergrad.errors import LayergradError

from .cache import AnswerCache, cache_key
from .prompts import JUDGE_PROMPTS, JudgePrompt

__all__ = ["JudgeConfig", "JudgeError", "JudgeScorer", "JudgeUnavailable", "instruction_of"]

TEMPERATURE = 0.0


class JudgeError(LayergradError, ValueError):
    """Bad judge options (no API key, unknown score name)."""


class JudgeUnavailable(LayergradError, RuntimeError):
    """The judge cannot answer at all (unreachable, key rejected, unknown model, persistent errors)."""


@dataclass(frozen=True)
class JudgeConfig:
    url: str
    model: str
    scores: tuple[str, ...] = ("instag", "difficulty")
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    cache: str | None = None  # default: OUT/judge-cache.sqlite

    def check(self) -> list[str]:
        problems = []
        for s in self.scores:
            if s not in JUDGE_PROMPTS:
                problems.append(f"--judge: unknown score {s!r}; choose from {', '.join(JUDGE_PROMPTS)}")
        if not os.environ.get(self.api_key_env):
            problems.append(f"--judge-url needs an API key in the environment variable {self.api_key_env} (unset or "
                            f"empty now): export {self.api_key_env}=... (any non-empty value for a local server that "
                            "checks none), or name another variable with --judge-api-key-env")
        if self.concurrency < 1:
            problems.append("--judge-concurrency must be at least 1")
        return problems


def columns_for(score: str) -> list[pa.Field]:
    return [
        pa.field(score, pa.float64()),  # the judged score (NaN: <score>_reason)
        pa.field(f"{score}_raw", pa.string()),  # the judge's answer as given (or its refusal)
        pa.field(f"{score}_reason", pa.string()),  # why the score is NaN (null when defined)
    ]


def instruction_of(ex) -> str | None:
    """What the judge rates: the Alpaca prompt (instruction, + "\\n" + input), or a chat record's last user turn."""
    if ex.is_chat:
        users = [m["content"] for m in ex.messages if m.get("role") == "user"]
        return users[-1] if users else None
    return ex.prompt


class JudgeScorer:
    name = "judge"

    def __init__(self, cfg: JudgeConfig, cache_path):
        from openai import OpenAI

        problems = cfg.check()
        if problems:
            raise JudgeError("\n".join(problems))
        self.cfg = cfg
        self.prompts: list[JudgePrompt] = [JUDGE_PROMPTS[s] for s in cfg.scores]
        self.columns = [f for p in self.prompts for f in columns_for(p.score)]
        self.client = OpenAI(base_url=cfg.url, api_key=os.environ[cfg.api_key_env], timeout=cfg.timeout,
                             max_retries=cfg.max_retries)
        self.cache = AnswerCache(cache_path)
        self.asked = 0  # requests that reached the server and answered (not cache hits)

    def provenance(self) -> dict:
        return {p.score: {"score": p.score, "judge_model": self.cfg.model, "judge_url": self.cfg.url,
                          "prompt_version": p.version, "prompt_sha256": p.digest, "temperature": TEMPERATURE,
                          "max_tokens": p.max_tokens} for p in self.prompts}

    def identity(self) -> dict:
        return {p.score: {"judge_model": self.cfg.model, "prompt_version": p.version, "temperature": TEMPERATURE}
                for p in self.prompts}

    def score(self, examples, progress=None) -> list[dict]:
        out = [dict() for _ in examples]
        jobs = []
        for k, ex in enumerate(examples):
            text = instruction_of(ex)
            for p in self.prompts:
                if text is None:
                    out[k].update({p.score: math.nan, f"{p.score}_raw": None,
                                   f"{p.score}_reason": "no instruction to judge (a plain-text record)"})
                else:
                    jobs.append((k, p, text))
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = {pool.submit(self._ask, p, text): (k, p) for k, p, text in jobs}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                wait(pending)  # answers still arriving are cached before we stop
                raise failed[0].exception()
        for f, (k, p) in futures.items():
            value, raw, reason = f.result()
            out[k].update({p.score: value, f"{p.score}_raw": raw, f"{p.score}_reason": reason})
        if progress is not None:
            progress(len(examples))
        return out

    # ---- one request ------------------------------------------------------------------------
    def _ask(self, p: JudgePrompt, instruction: str) -> tuple[float, str | None, str | None]:
        import openai

        messages = p.messages(instruction)
        params = {"temperature": TEMPERATURE, "max_tokens": p.max_tokens}
        key = cache_key(self.cfg.model, messages, params)
        answer = self.cache.get(key)
        if answer is None:
            where = f"the judge {self.cfg.model!r} at {self.cfg.url}"
            try:
                resp = self.client.chat.completions.create(model=self.cfg.model, messages=messages, **params)
                choice = resp.choices[0]
                msg = choice.message
                answer = {"content": msg.content, "refusal": getattr(msg, "refusal", None),
                          "finish_reason": choice.finish_reason}
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise JudgeUnavailable(f"{where} rejected the API key from ${self.cfg.api_key_env} "
                                       f"(HTTP {e.status_code}): set the right key. Scores committed so far are kept; "
                                       "rerun the same command to resume") from None
            except openai.NotFoundError as e:
                raise JudgeUnavailable(f"{where} answered 404 ({_short(e)}): check --judge-model (a model the server "
                                       "serves) and --judge-url (the base URL ending in /v1). Scores committed so far "
                                       "are kept") from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                return math.nan, None, f"the judge rejected the request (HTTP {e.status_code}: {_short(e)})"
            except openai.APIStatusError as e:  # 429 / 5xx after every retry
                raise JudgeUnavailable(f"{where} still answered HTTP {e.status_code} after {self.cfg.max_retries} "
                                       f"retries ({_short(e)}): wait or lower --judge-concurrency, then rerun the same "
                                       "command to resume (scores committed and answers cached so far are kept)") from None
            except openai.APIConnectionError as e:  # connection refused, DNS, timeouts (after retries)
                what = "timed out" if isinstance(e, openai.APITimeoutError) else "cannot be reached"
                raise JudgeUnavailable(f"{where} {what} after {self.cfg.max_retries} retries ({_short(e)}): start the "
                                       "server or fix --judge-url (--judge-timeout for slow servers); scores committed "
                                       "so far are kept, rerun the same command to resume") from None
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError) as e:
                return math.nan, None, f"malformed response from the judge ({type(e).__name__}: {_short(e)})"
            self.cache.put(key, self.cfg.model, answer)
            self.asked += 1
        return _read(p, answer)


def _read(p: JudgePrompt, answer: dict) -> tuple[float, str | None, str | None]:
    content, refusal = answer.get("content"), answer.get("refusal")
    if refusal or content is None or answer.get("finish_reason") == "content_filter":
        return math.nan, refusal or content, f"refused by the judge (finish_reason {answer.get('finish_reason')!r})"
    parsed = p.parse(content)
    return parsed.value, content, parsed.reason


def _short(e: Exception, n: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[:n] + "..."
