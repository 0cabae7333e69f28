"""The calls into transformers that load a folder, a hub snapshot or a GGUF file (local files only unless a
hub model is being downloaded), their errors as :class:`ModelError`, and their progress bars."""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import torch

from layergrad.inputs.models.errors import ModelError
from layergrad.inputs.models.hub import hub_offline

def _model_kwargs(dtype, device_map, trust_remote_code: bool, attn_implementation: str | None, hub: dict | None = None) -> dict:
    kwargs: dict = {"local_files_only": True, "trust_remote_code": trust_remote_code, "dtype": dtype, **(hub or {})}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


@contextmanager
def _load_errors(what: str):
    """Turn a failure inside transformers/gguf into a ModelError naming ``what``; OOM stays OOM."""
    try:
        yield
    except (ModelError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # a damaged file fails in struct, numpy, json, ...: all mean "cannot load"
        raise ModelError(f"could not load {what}: {type(e).__name__}: {e}") from e


def _load_gguf(path: Path, *, dtype, device_map, trust_remote_code: bool, attn_implementation: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"loading {str(path)!r} needs the gguf package: `pip install gguf` (or `make setup`)")
    folder, name = str(path.parent), path.name
    with _load_errors(f"the GGUF file {str(path)!r}"):
        tokenizer = AutoTokenizer.from_pretrained(
            folder, gguf_file=name, local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, **_model_kwargs(dtype, device_map, trust_remote_code, attn_implementation)
        )
    return model, tokenizer


def _load_folder(path: Path, *, dtype, device_map, trust_remote_code: bool, attn_implementation: str | None,
                 hub: dict | None = None):
    """A folder; or, with ``hub`` (``repo``, ``revision``: a commit, ``cache_dir``), that hub snapshot,
    through transformers so that it downloads what is missing (with its progress bars) unless offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = str(path), {}
    if hub is not None:
        source = hub["repo"]
        extra = {"revision": hub["revision"], "cache_dir": hub["cache_dir"], "local_files_only": hub_offline()}
    with _load_errors(f"a causal LM from {source!r}"):
        model = AutoModelForCausalLM.from_pretrained(
            source, **_model_kwargs(dtype, device_map, trust_remote_code, attn_implementation, extra)
        )
    with _load_errors(f"the tokenizer of {source!r} (its files must sit beside config.json)"):
        tokenizer = AutoTokenizer.from_pretrained(
            source, **{"local_files_only": True, "trust_remote_code": trust_remote_code, **extra})
    return model, tokenizer


@contextmanager
def progress_bars(enabled: bool):
    """transformers' progress bars on (as they are) or off within the block, restored after it."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
