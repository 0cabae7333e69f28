"""The manifest of a run (``manifest.json``): what produced its numbers, and which of that is its identity.

:data:`IDENTITY_KEYS` are what determine a run's numbers: a resume (or a merge) whose manifest
differs in any of them is refused, naming each difference.
"""
from __future__ import annotations

import time

from layergrad import __version__
from layergrad.vocab import DEFAULT_SYSTEM_PROMPT
from layergrad.store.schema import SCHEMA_VERSION

IDENTITY_KEYS = (
    "schema_version",  # what the rows mean (store/schema.py)
    "model_fingerprint",
    "model_revision",  # a hub model's resolved commit (None for local files): another revision is another run
    "adapter_fingerprint",  # a PEFT adapter's (None without one)
    "adapter_params",  # None without an adapter; True: its lora_A/lora_B measured; False: merged weights
    "prompt_mode",
    "system_prompt",  # --system-prompt as asked for (chat mode's system turn; base mode has no system text)
    "turns",  # which assistant turns are response tokens (--turns)
    "max_length",
    "modules",
    "data_fingerprint",
    "dtype",
    "stats_dtype",
    "spectrum_k",
    "elementwise",
    "cosine",  # a run with and without cosine rows would mix examples that have them and ones that don't
    "ifd",
    "loss_rule",
    "token_shares",  # a run with and without shares parts would mix examples that have them and ones that don't
)

#: What an identity key means in a manifest written before the key existed (a function of that manifest,
#: or a value). A chat-mode run stored before the system prompt was recorded gave Alpaca records the
#: default system prompt but ``messages`` records the template's: no value of today matches it.
IDENTITY_DEFAULTS = {
    "token_shares": False,
    "turns": "last",
    "system_prompt": lambda m: DEFAULT_SYSTEM_PROMPT if str(m.get("prompt_mode", "")).endswith("base")
    else "unrecorded (a run before --system-prompt: Alpaca records the default, messages records the template's)",
}


def identity_value(manifest: dict, key: str):
    """``manifest[key]``, or what its absence means (:data:`IDENTITY_DEFAULTS`) for a manifest older than the key."""
    if key in manifest:
        return manifest[key]
    default = IDENTITY_DEFAULTS.get(key)
    return default(manifest) if callable(default) else default


def build_manifest(cfg, loaded, mode: str, targets: list, *, data_fingerprint: str, loss_rule: str,
                   ifd_rule: str | None) -> dict:
    """The manifest of a run of ``cfg`` (:class:`~layergrad.config.RunConfig`) on ``loaded``
    (:class:`~layergrad.inputs.models.LoadedModel`), prompt mode ``mode``, measuring ``targets``."""
    import torch
    import transformers

    model_cfg = loaded.model.config
    text_cfg = model_cfg.get_text_config() if hasattr(model_cfg, "get_text_config") else model_cfg
    return {
        "schema_version": SCHEMA_VERSION,
        "layergrad_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": cfg.model,
        "model_path": loaded.path,
        "model_fingerprint": loaded.fingerprint,
        "model_repo": getattr(loaded, "repo_id", None),  # a hub model's id, else None
        "model_revision": getattr(loaded, "revision", None),  # its resolved commit hash, else None
        "adapter": getattr(loaded, "adapter", None),  # a PEFT adapter's folder or hub id, else None
        "adapter_fingerprint": getattr(loaded, "adapter_fingerprint", None),
        "adapter_params": getattr(loaded, "adapter_params", False) if getattr(loaded, "adapter", None) else None,
        "model_type": getattr(model_cfg, "model_type", None),
        "n_layers": int(getattr(text_cfg, "num_hidden_layers", 0) or (max(t.layer for t in targets) + 1)),
        "dtype": loaded.dtype,
        "stats_dtype": cfg.stats_dtype,
        "prompt_mode": ("reference-" if cfg.reference else "") + mode,
        "system_prompt": cfg.system_prompt,  # as asked for; base mode has no system text
        "turns": cfg.turns,
        "max_length": cfg.max_length,
        "modules": cfg.modules,
        "module_names": [t.name for t in targets],
        "data": [str(p) for p in cfg.data],
        "data_fingerprint": data_fingerprint,
        "group": cfg.group,
        # with data/group, what selects the examples (so `layergrad merge` can list missing ones)
        "fields": cfg.fields,
        "limit": cfg.limit,
        "record_slice": cfg.record_slice,
        "skip_invalid": cfg.skip_invalid,
        "spectrum_k": cfg.spectrum_k,
        "elementwise": cfg.elementwise,
        "cosine": cfg.cosine,
        "ifd": cfg.ifd or False,  # the IFD definition's name (false: off, as runs stored before names were)
        "ifd_rule": ifd_rule,
        "loss_rule": loss_rule,
        "token_shares": cfg.token_shares,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
