"""PEFT adapters: an adapter folder or hub id, the base model it names, its fingerprint, and applying it
(merged, or unmerged so that its own matrices are measured)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from layergrad.inputs.models.cache import _WEIGHT_SUFFIXES, _head_tail
from layergrad.inputs.models.errors import ModelError
from layergrad.inputs.models.hub import hub_offline, is_hub_id, parse_model_ref, resolve_hub_model

ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes into an adapter folder


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder's config names (``base_model_name_or_path``), or None."""
    try:
        base = json.loads((Path(folder) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"adapter folder {str(folder)!r}: cannot read {ADAPTER_CONFIG}: {e}") from e
    return base or None


def is_adapter_folder(path: str | os.PathLike) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def _adapter_folder(adapter: str, cache: str | os.PathLike | None) -> Path:
    """The local folder of an adapter given as a folder or a hub id (``org/name[@REV]``)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / ADAPTER_CONFIG).is_file():
            raise ModelError(f"adapter folder {adapter!r} has no {ADAPTER_CONFIG} (as peft's save_pretrained writes)")
        return path
    if is_hub_id(adapter):
        repo, rev = parse_model_ref(adapter)
        config, commit = resolve_hub_model(repo, rev, cache, filename=ADAPTER_CONFIG)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=commit, cache_dir=cache, local_files_only=hub_offline()))
    raise ModelError(f"adapter {adapter!r} does not exist; expected a PEFT adapter folder or a hub id org/name[@REV]")


def _same_base(base: str, model: str) -> bool:
    """Whether ``model`` can be the adapter's ``base``: the same hub id, or two folders with the same config
    (a base downloaded into a folder and the hub id are not compared: the shapes check that when peft loads)."""
    if is_hub_id(base) and is_hub_id(model):
        return parse_model_ref(model)[0] == parse_model_ref(base)[0]
    a, b = Path(base).expanduser(), Path(model).expanduser()
    if (a / "config.json").is_file() and (b / "config.json").is_file() and a.resolve() != b.resolve():
        strip = lambda p: {k: v for k, v in json.loads((p / "config.json").read_text()).items() if not k.startswith("_")}  # noqa: E731
        return strip(a) == strip(b)
    return True


def _adapter_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    h.update((folder / ADAPTER_CONFIG).read_bytes())
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        _head_tail(file, h)
    return h.hexdigest()


def _apply_adapter(model, folder: Path, adapter: str, model_source: str, *, params: bool):
    """``model`` with the adapter: merged (``merge_and_unload``: a plain model, the base's module names) or,
    with ``params``, the unmerged PeftModel whose ``lora_A``/``lora_B`` matrices are then measured."""
    from peft import PeftModel

    base = adapter_base(folder)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as e:  # noqa: BLE001 - shapes, missing target modules, a damaged file: the adapter does not fit
        raise ModelError(
            f"the adapter {adapter!r} does not fit the model {model_source!r}"
            f"{f' (the adapter was made for {base!r}: pass --model {base})' if base else ''}: "
            f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        ) from e
    peft_model.eval()
    return peft_model if params else peft_model.merge_and_unload()
