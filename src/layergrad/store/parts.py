"""Atomic Parquet parts: a reader never sees half a file.

A part is written to a temporary name in the same folder, flushed and fsync'd,
then renamed into place (rename is atomic on POSIX). A crash leaves at most a
``.tmp`` file, which :func:`clean_temporaries` removes on resume.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either absent or complete."""
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(text: str, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_part(path: Path) -> pa.Table | None:
    """Read one part; ``None`` if it is unreadable (corrupt parts are skipped, not fatal)."""
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError):
        return None


def clean_temporaries(folder: Path) -> list[Path]:
    removed = []
    for p in Path(folder).glob(f"*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
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
