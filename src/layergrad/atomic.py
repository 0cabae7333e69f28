"""One way to write a file so that a reader never sees half of it: a temporary file beside it, renamed into place.

Dependency-free (the store's Parquet parts, its manifest, ``layergrad select``'s output and the
model cache's memo files all use it). A failure of any kind removes the temporary file and
re-raises; the target is then as it was before (absent, or the old complete file).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None, tmp: Path | None = None, fsync: bool = True):
    """Yield a file open (``mode``) on a temporary file beside ``path``; when the block ends without an
    error it is flushed (and fsync'd with ``fsync``) and renamed to ``path``.

    ``tmp``: the temporary file's name (the store names its own ``NAME.PID.tmp``, so that a rank
    cleans up its own); default a fresh ``.NAME.XXXXXX.tmp`` with the usual permissions (umask).
    """
    path = Path(path)
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes a private file; give it the usual mode
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp = Path(tmp)
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def fsync_dir(folder) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
