"""layergrad's cache folder and model fingerprints (a file's sha256, memoised in the cache; a folder's
config.json and weight files' sizes, first and last MiB)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from layergrad.atomic import atomic_write

log = logging.getLogger(__name__)

_MIB = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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
