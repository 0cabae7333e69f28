"""Every word layergrad accepts or writes, one table per vocabulary, and one did-you-mean helper.

This module imports nothing heavy (no torch, no pandas) and nothing from the package, so the
command line, :mod:`layergrad.config` and the modules that define these words today all use it:
``store.schema.METRICS``, ``spectral.METRIC_NAMES``, ``models``' dtype table and the engine's
statistics dtypes derive from the tables here.
"""
from __future__ import annotations

import difflib
from typing import Iterable

#: Per-module metrics of a spectrum (store columns of modules.parquet; report and select use them).
METRICS: tuple[str, ...] = ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank")
#: The metrics a report shows when none are asked for.
DEFAULT_REPORT_METRICS: tuple[str, ...] = ("nuclear", "spectral", "frobenius", "top1_share", "effective_rank")

#: Status of an example in a store.
STATUSES: tuple[str, ...] = ("ok", "skipped", "failed", "invalid")

#: How the singular values are computed (``RunConfig.method``); ``auto`` picks per module.
METHODS: tuple[str, ...] = ("auto", "gram", "factored", "dense")

#: Whether the Gram path's eigenproblems are batched over examples and modules (``RunConfig.eig_batch``):
#: ``auto`` on CUDA, per example on a CPU. Exact either way, so not part of a run's identity.
EIG_BATCH: tuple[str, ...] = ("auto", "on", "off")

#: The arithmetic of the float32 statistics' path (``RunConfig.gram_precision``): ``float64`` (the default:
#: Gram matrices and eigensolver in float64, each value within ~1e-8 s_1) or ``float32-qr`` (opt-in, for
#: GPUs with weak FP64: distinct token rows merged exactly, then QR and SVD in float32; measured within
#: 4.6e-7 s_1 and 4.6e-7 relative on every statistic, BENCHMARKS.md). Changes the numbers: part of a run's identity.
GRAM_PRECISIONS: tuple[str, ...] = ("float64", "float32-qr")

#: Model dtype names -> canonical torch name (``"auto"``: fp32 on CPU, the checkpoint's dtype elsewhere).
DTYPES: dict[str, str] = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "float64": "float64",
    "fp64": "float64",
}

#: Precision of the statistics (``RunConfig.stats_dtype``) -> canonical torch name.
STATS_DTYPES: dict[str, str] = {"float32": "float32", "fp32": "float32", "float64": "float64", "fp64": "float64"}

#: How prompt and response become tokens (``RunConfig.prompt_mode``).
PROMPT_MODES: tuple[str, ...] = ("auto", "base", "chat")

#: Which assistant turns of a chat record are response tokens (``RunConfig.turns``).
TURNS: tuple[str, ...] = ("last", "all")

#: The system prompt of chat mode (``RunConfig.system_prompt``): the paper's; ``none`` and
#: ``template`` are the two words that are no text (:mod:`layergrad.inputs.prompting`).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SYSTEM_PROMPT_WORDS: tuple[str, ...] = ("none", "template")

#: Devices by name; ``cuda:N`` (N >= 0) is accepted too.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

#: IFD variants (``RunConfig.ifd``): ``True`` means the first one.
IFD_METHODS: tuple[str, ...] = ("cherry", "superfiltering")


def normalize_dtype_name(name: object) -> str:
    """``" Torch.BF16 "`` -> ``"bf16"``: the key to look up in :data:`DTYPES` / :data:`STATS_DTYPES`."""
    return str(name).strip().lower().removeprefix("torch.")


def closest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The choice most like ``word`` (difflib's ratio >= ``cutoff``), or ``None``."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6, template: str = "; did you mean {!r}?",
                 default: str = "") -> str:
    """``template`` filled with the closest choice, or ``default`` when none is close."""
    found = closest(word, choices, cutoff=cutoff)
    return template.format(found) if found is not None else default
