"""Dtype names (``layergrad.vocab.DTYPES``) as torch dtypes; the dtype a checkpoint is stored in, and
the dtype a model is loaded in (``auto``: fp32 on CPU, fp64 kept; the checkpoint's elsewhere)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from layergrad import vocab
from layergrad.inputs.models.errors import ModelError

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
