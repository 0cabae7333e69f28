"""Atomic Parquet parts: a reader never sees half a file.

A part is written to a temporary name in the same folder, flushed and fsync'd,
then renamed into place (rename is atomic on POSIX). A crash leaves at most a
``.tmp`` file, which :func:`clean_temporaries` removes on resume. A failed write
(disk full, no permission) removes its temporary file and raises
:class:`StoreWriteError`, which names the path and the cause.

Checksums: :func:`write_atomic` returns the SHA-256 of the bytes it wrote (the store records
those of a part's modules and cosine files in its examples file, the commit marker) and writes
Parquet page CRCs, which :func:`read_part` verifies; :func:`file_checksum` hashes a file again.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import TMP_SUFFIX, atomic_write, fsync_dir
from ..errors import LayergradError



class StoreWriteError(LayergradError, OSError):
    """Results could not be written (``errno`` as the OS said); what was committed before is intact."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        code = _errno.errorcode.get(self.errno, str(self.errno)) if self.errno else "unknown"
        if self.errno in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
            todo = "free some space"
        elif self.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
            todo = "make it writable"
        else:
            todo = "fix the cause"
        return (
            f"cannot write {self.path}: {self.strerror} ({code}). Results committed before are intact; "
            f"{todo}, then rerun the same command to resume."
        )


@contextlib.contextmanager
def _writing(path: Path):
    """An ``OSError`` while writing ``path`` becomes a :class:`StoreWriteError` naming it."""
    try:
        yield
    except StoreWriteError:
        raise
    except OSError as e:
        raise StoreWriteError(path, e) from e


def _tmp_of(path: Path) -> Path:
    return path.with_name(path.name + f".{os.getpid()}{TMP_SUFFIX}")  # this process's: cleaned up on resume


CHECKSUM = "sha256"


def write_atomic(table: pa.Table, path: Path) -> str:
    """Write ``table`` to ``path`` so that ``path`` is either absent or complete; the SHA-256 of its bytes."""
    path = Path(path)
    with _writing(path):
        buf = pa.BufferOutputStream()  # the bytes are hashed as written, not read back
        pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        data = buf.getvalue()
        with atomic_write(path, "wb", tmp=_tmp_of(path)) as fh:
            fh.write(data)
    return hashlib.sha256(data).hexdigest()


def file_checksum(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(text: str, path: Path) -> None:
    path = Path(path)
    with _writing(path), atomic_write(path, "w", encoding="utf-8", tmp=_tmp_of(path)) as fh:
        fh.write(text)


def read_part(path: Path) -> pa.Table | None:
    """Read one part; ``None`` if it is unreadable (corrupt parts are skipped, not fatal)."""
    try:
        return pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError):
        return None


def part_problem(path: Path) -> str | None:
    """Why a part file cannot be used (missing, or no valid Parquet footer: cut short), else ``None``.

    Reads the footer only, so it is cheap for large parts.
    """
    try:
        pq.read_metadata(path)
    except FileNotFoundError:
        return "missing"
    except (pa.ArrowException, OSError, ValueError) as e:
        return f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def clean_temporaries(folder: Path) -> list[Path]:
    removed = []
    for p in Path(folder).glob(f"*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


_fsync_dir = fsync_dir  # the old name
