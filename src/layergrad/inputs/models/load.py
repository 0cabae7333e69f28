"""``load_model``: what a model name or path is, and the model and tokenizer loaded from it, ready to measure."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from layergrad.inputs.models.adapters import (_adapter_fingerprint, _adapter_folder, _apply_adapter, _same_base,
                                              adapter_base, is_adapter_folder)
from layergrad.inputs.models.cache import _fingerprint
from layergrad.inputs.models.default import DEFAULT_MODEL, default_model_folder
from layergrad.inputs.models.dtypes import _checkpoint_dtype, _load_dtype, resolve_dtype
from layergrad.inputs.models.errors import _EXPECTED, ModelError
from layergrad.inputs.models.hub import is_hub_id, offline_while_unreachable, parse_model_ref, resolve_hub_model
from layergrad.inputs.models.loaders import _load_folder, _load_gguf, progress_bars
from layergrad.inputs.models.quantized import refuse_quantized

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_GGUF_MAGIC = b"GGUF"


@dataclass
class LoadedModel:
    """A model ready to measure, and what the run manifest records about it."""

    model: "PreTrainedModel"  # in eval mode
    tokenizer: "PreTrainedTokenizerBase"  # as its files define it; pad_token_id may be None
    source: str  # what the user asked for (a path or "default")
    path: str  # the folder or .gguf file actually loaded
    fingerprint: str  # sha256 hex: of a .gguf file; of a folder's config.json + weight files' sizes, first/last MiB
    dtype: str  # parameter dtype, e.g. "float32"
    repo_id: str | None = None  # a hub model: its repo id ("org/name"); None for local files
    revision: str | None = None  # a hub model: the commit hash its revision resolved to
    adapter: str | None = None  # a PEFT adapter: its folder or hub id as given
    adapter_fingerprint: str | None = None  # sha256 of adapter_config.json + its weight files (as for folders)
    adapter_params: bool = False  # True: the adapter's own matrices are measured (the model is a PeftModel)


def _resolve(name_or_path: str | os.PathLike) -> tuple[Path, bool]:
    """The folder or GGUF file to load, and whether it is a GGUF; ModelError if it is neither."""
    if str(name_or_path) == DEFAULT_MODEL:
        return default_model_folder(), False
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist; {_EXPECTED}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds GGUF files, pass one of them: {', '.join(ggufs)}" if ggufs else ""
            raise ModelError(f"model folder {str(path)!r} has no config.json; {_EXPECTED}{hint}")
        return path, False
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"model file {str(path)!r} is not a .gguf file; {_EXPECTED}")
    with open(path, "rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise ModelError(f"model file {str(path)!r} is not a GGUF file (no GGUF magic bytes)")
    return path, True


def _on_cpu(device: str, device_map: object) -> bool:
    if device_map is None:
        return torch.device(device).type == "cpu"
    if isinstance(device_map, dict):
        return all(str(d) == "cpu" for d in device_map.values())
    return str(device_map) == "cpu" or not torch.cuda.is_available()


def _config_json(folder: Path) -> dict:
    """A folder's config.json as a dict; ``{}`` when unreadable (loading it then says why)."""
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    progress: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    adapter: str | None = None,
    adapter_params: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode.

    A hub id (``org/name``, ``org/name@REV``; ``revision``, ``cache_dir`` as in transformers) is
    resolved through the Hugging Face cache (see the module docstring); anything else is local files.

    ``progress=False`` silences transformers' progress bars (loading weights, de-quantising a
    GGUF file) while loading; their setting is restored afterwards.

    ``dtype="auto"`` loads fp32 on CPU (fp64 checkpoints stay fp64) and keeps the
    checkpoint's dtype on an accelerator. ``device_map`` (e.g. ``"auto"``) is handed to
    accelerate and takes precedence over ``device``; otherwise the model is moved to ``device``.

    A hub that cannot be reached is found out at once (:func:`~.hub.hub_unreachable`): the model then comes
    from the cache, or the error says what to do, without huggingface_hub's retries.
    """
    uses_hub = any(x is not None and str(x) != DEFAULT_MODEL and is_hub_id(str(x)) for x in (name_or_path, adapter))
    with offline_while_unreachable() if uses_hub else contextlib.nullcontext():
        return _load(name_or_path, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                     attn_implementation=attn_implementation, progress=progress, revision=revision, cache_dir=cache_dir,
                     adapter=adapter, adapter_params=adapter_params)


def _load(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    progress: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    adapter: str | None = None,
    adapter_params: bool = False,
) -> LoadedModel:
    requested = resolve_dtype(dtype)  # fail on a bad name before any slow work
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: {e}") from e
    if device_map is None and target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
    adapter_dir = None
    if adapter is None and is_adapter_folder(name_or_path):  # --model ADAPTER_DIR: its config names the base
        adapter = str(name_or_path)
        name_or_path = None
    if adapter is not None:
        adapter_dir = _adapter_folder(adapter, cache_dir)
        base = adapter_base(adapter_dir)
        if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
            if base is None:
                raise ModelError(f"the adapter {adapter!r} names no base model (base_model_name_or_path); pass --model")
            name_or_path = base
        elif base and not _same_base(base, str(name_or_path)):
            raise ModelError(f"the adapter {adapter!r} was made for {base!r}, not for --model {str(name_or_path)!r}; "
                             f"pass --model {base} (or omit --model)")
    elif adapter_params:
        raise ModelError("--adapter-params needs an adapter (--adapter DIR, or --model ADAPTER_DIR)")
    hub = None
    if str(name_or_path) != DEFAULT_MODEL and is_hub_id(str(name_or_path)):
        repo, rev = parse_model_ref(str(name_or_path), revision)
        path, commit = resolve_hub_model(repo, rev, cache_dir)
        hub, is_gguf = {"repo": repo, "revision": commit, "cache_dir": cache_dir}, False
    elif revision is not None:
        raise ModelError(f"--revision {revision!r} applies to hub ids only, and {str(name_or_path)!r} is a local path")
    else:
        with progress_bars(progress):  # the embedded model's one-time conversion de-quantises a GGUF file
            path, is_gguf = _resolve(name_or_path)
    if not is_gguf:  # before loading: bitsandbytes & co need not be installed to be refused
        refuse_quantized(config=_config_json(path), what=f"model {str(name_or_path)!r}")
    on_cpu = _on_cpu(device, device_map)
    checkpoint = None if is_gguf else _checkpoint_dtype(path)
    load_dtype = _load_dtype(requested, checkpoint, on_cpu)
    loader = _load_gguf if is_gguf else _load_folder
    with progress_bars(progress):
        model, tokenizer = loader(
            path,
            dtype=load_dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            **({"hub": hub} if hub else {}),
        )
    if adapter_dir is not None:
        model = _apply_adapter(model, adapter_dir, adapter, str(name_or_path), params=adapter_params)
    refuse_quantized(model, what=f"model {str(name_or_path)!r}")
    if device_map is None:
        model.to(target)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=str(name_or_path),
        path=str(path),
        fingerprint=_fingerprint(path),
        dtype=str(model.dtype).removeprefix("torch."),
        repo_id=hub["repo"] if hub else None,
        revision=hub["revision"] if hub else None,
        adapter=adapter,
        adapter_fingerprint=_adapter_fingerprint(adapter_dir) if adapter_dir is not None else None,
        adapter_params=bool(adapter_dir is not None and adapter_params),
    )


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False):
    """The tokenizer alone, found as :func:`load_model` finds a model: ``"default"`` (the embedded model's,
    converted once), a hub id ``org/name[@REV]`` (through the Hugging Face cache), a .gguf file, or a folder
    (a model folder, or one that holds only tokenizer files). Raises :class:`ModelError` naming it."""
    from transformers import AutoTokenizer

    from layergrad.inputs.models.hub import hub_offline
    from layergrad.inputs.models.loaders import _load_errors

    name = str(name_or_path)
    if name != DEFAULT_MODEL and is_hub_id(name):
        repo, rev = parse_model_ref(name, revision)
        _, commit = resolve_hub_model(repo, rev, cache_dir, filename="tokenizer_config.json")
        source, kwargs = repo, {"revision": commit, "cache_dir": cache_dir, "local_files_only": hub_offline()}
    elif name == DEFAULT_MODEL:
        source, kwargs = str(default_model_folder()), {"local_files_only": True}
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelError(f"tokenizer {name!r}: no such folder or file; expected a hub id org/name[@REV], a model or "
                             'tokenizer folder, a .gguf file, or "default" (the embedded model\'s)')
        source, kwargs = (str(path.parent), {"gguf_file": path.name}) if path.is_file() else (str(path), {})
        if path.is_file() and path.suffix.lower() != ".gguf":
            raise ModelError(f"tokenizer {name!r} is a file but not a .gguf file; pass the folder that holds the tokenizer files")
        kwargs["local_files_only"] = True
    with _load_errors(f"a tokenizer from {name!r}"):
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
