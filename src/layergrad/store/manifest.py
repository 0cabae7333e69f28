"""The manifest of a run (``manifest.json``): what produced its numbers, and which of that is its identity.

:data:`IDENTITY_KEYS` are what determine a run's numbers: a resume (or a merge) whose manifest
differs in any of them is refused, naming each difference in the user's terms (:func:`describe_difference`).
The data are not part of the identity: a run grows (``--limit 5``, then without it; more ``--data``
files; other ``--shard`` values) and :func:`extend_selection` records the union of what was selected.
An example is identified by its id; a record whose text changed under a stored id is refused by
:func:`layergrad.store.run.refuse_changed_records`.
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
    "dtype",
    "stats_dtype",
    "spectrum_k",
    "elementwise",
    "cosine",  # a run with and without cosine rows would mix examples that have them and ones that don't
    "cosine_layers",  # the same, for the cosines of every pair of layers
    "ifd",
    "loss_rule",
    "token_shares",  # a run with and without shares parts would mix examples that have them and ones that don't
    "gram_precision",  # float64 | float32-qr: the float32 statistics' arithmetic (different numbers, ~5e-7 relative)
    "truncate_response",  # --truncate-response K: every response cut after K tokens (None: no cut)
    "truncate_to",  # --truncate-to RUN_DIR, relative to this run's directory: cut to each partner's length (None: no cut)
)

#: What an identity key means in a manifest written before the key existed (a function of that manifest,
#: or a value). A chat-mode run stored before the system prompt was recorded gave Alpaca records the
#: default system prompt but ``messages`` records the template's: no value of today matches it.
IDENTITY_DEFAULTS = {
    "token_shares": False,
    "cosine_layers": False,  # every run before the option
    "gram_precision": "float64",  # every run before the option
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
                   ifd_rule: str | None, truncation: dict | None = None) -> dict:
    """The manifest of a run of ``cfg`` (:class:`~layergrad.config.RunConfig`) on ``loaded``
    (:class:`~layergrad.inputs.models.LoadedModel`), prompt mode ``mode``, measuring ``targets``;
    ``truncation``: what :func:`layergrad.run.truncate.apply` records of a ``--truncate-to`` partner run."""
    from layergrad.run.truncate import identity as truncate_identity

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
        "cosine_layers": cfg.cosine_layers,
        "ifd": cfg.ifd or False,  # the IFD definition's name (false: off, as runs stored before names were)
        "ifd_rule": ifd_rule,
        "loss_rule": loss_rule,
        "token_shares": cfg.token_shares,
        "gram_precision": cfg.gram_precision,
        "truncate_response": cfg.truncate_response,
        "truncate_to": truncate_identity(cfg),
        **(truncation or {}),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


#: identity key -> (the option a user sets, how a stored value reads)
_OPTION = {
    "schema_version": ("results schema version (the layergrad version that wrote the run)", None),
    "model_fingerprint": ("--model (the model's weights)", None),
    "prompt_mode": ("--prompt-mode", None),
    "max_length": ("--max-length", None),
    "modules": ("--modules", None),
    "dtype": ("--dtype (model dtype as loaded)", None),
    "stats_dtype": ("--stats-dtype", None),
    "spectrum_k": ("--spectrum-k", lambda v: "all" if v is None else str(v)),
    "elementwise": ("--elementwise", lambda v: "on" if v else "off"),
    "cosine": ("--cosine", lambda v: "on" if v else "off"),
    "cosine_layers": ("--cosine-layers", lambda v: "on" if v else "off"),
    "ifd": ("--ifd", lambda v: str(v) if v else "off"),
    "loss_rule": ("the loss definition (the layergrad version that wrote the run)", None),
    "limit": ("--limit", lambda v: "none" if v is None else str(v)),
    "gram_precision": ("--gram-precision", None),
    "truncate_response": ("--truncate-response", lambda v: "no cut" if v is None else str(v)),
    "truncate_to": ("--truncate-to (relative to the run directory)", lambda v: "no cut" if v is None else str(v)),
}


def option_value(key: str, value) -> str:
    show = _OPTION.get(key, (key, None))[1]
    return show(value) if show else ("none" if value is None else str(value))


def describe_difference(key: str, stored, now, old: dict | None = None, new: dict | None = None) -> str:
    """One line: the option that differs, stored vs now, in the user's terms (and the key's name)."""
    name = _OPTION.get(key, (key, None))[0]
    a, b = option_value(key, stored), option_value(key, now)
    if key == "model_fingerprint" and old is not None and new is not None:
        a, b = f"{old.get('model')} ({a})", f"{new.get('model')} ({b})"
    return f"{name}: {a} (stored) vs {b} (now)   [{key}: stored {stored!r}, now {now!r}]"


def extend_selection(old: dict, new: dict) -> tuple[dict, list[str]]:
    """The manifest of a run that was ``old`` and now also selects what ``new`` selects; notes of what grew.

    The identity keys are equal (checked before). ``data`` becomes the union of the files (in the
    order first seen), ``limit`` the larger (none beats any), and ``data_fingerprint`` that of the
    union, so that ``layergrad merge`` lists the examples still missing from the widest selection.
    """
    merged = dict(old)
    notes = []
    data = list(old.get("data") or [])
    added = [p for p in new.get("data") or [] if p not in data]
    if added:
        data += added
        notes.append(f"--data: adding {', '.join(added)} to the run's files ({', '.join(old.get('data') or [])})")
    a, b = old.get("limit"), new.get("limit")
    limit = None if a is None or b is None else max(a, b)
    if limit != a:
        notes.append(f"--limit: extending the run from {option_value('limit', a)} to {option_value('limit', limit)}")
    merged.update(data=data, limit=limit)
    for k in ("group", "fields", "record_slice", "skip_invalid"):
        if old.get(k) != new.get(k):  # the run holds both selections; the newest describes what to expect
            merged[k] = new.get(k)
    if (added or limit != a or any(old.get(k) != new.get(k) for k in ("group", "fields", "record_slice", "skip_invalid"))):
        merged["data_fingerprint"] = _fingerprint_of(merged) or new.get("data_fingerprint")
    return merged, notes


def _fingerprint_of(m: dict) -> str | None:
    from layergrad.config import RunConfig
    from layergrad.inputs.dataset import data_fingerprint

    try:
        return data_fingerprint(RunConfig(data=list(m.get("data") or []), out="", group=m.get("group"),
                                          fields=m.get("fields") or {}, limit=m.get("limit"),
                                          record_slice=m.get("record_slice"), skip_invalid=bool(m.get("skip_invalid"))))
    except (OSError, ValueError):
        return None
