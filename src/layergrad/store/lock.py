"""One writer per name per run directory: operating-system locks (``filelock``), never PID files.

Files, under ``DIR/locks/``::

    writer-<name>.lock     # held for a whole run by the writer <name> (r0, r<rank>, s<i>of<n>, import, ...)
    writer-<name>.holder   # who holds it: host, pid, start time, command (JSON; for the message only)
    manifest.lock          # held for a moment while the manifest is created, checked or extended

Shards of one run (``--shard 0/4``, ``--shard 1/4``, torchrun ranks) have different writer names
and write together; a second copy of the same writer is refused with :class:`RunLocked`, which
names the holder. ``wait=True`` (``layergrad experiment``) waits for the holder to finish instead.

The locks are ``flock`` locks taken through :class:`filelock.FileLock`. The kernel (or, on NFS,
the server's lock manager) releases them when the holding process ends, however it ends: a lock
left by a killed process is free at once, and the ``.holder`` file it leaves is only information.
``flock`` works across nodes on NFSv4 and NFSv3 with ``lockd`` (Linux emulates it with POSIX
byte-range locks there), GPFS/Spectrum Scale, and Lustre mounted with ``-o flock``. Where the file
system refuses it (Lustre ``noflock``, some FUSE mounts), ``filelock`` falls back to its soft lock:
the lock file exists while it is held (``O_CREAT|O_EXCL``), and one left by a dead process on the
same host is taken over; one left by another host that died must be removed by hand (the message
says which file). Set ``LAYERGRAD_LOCKS=off`` to skip locking altogether (then the convention is
the old one: start one writer of each name at a time).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import LayergradError

LOCKS = "locks"
ENV_LOCKS = "LAYERGRAD_LOCKS"
MANIFEST_WAIT_S = 600.0  # manifest changes take milliseconds; a holder past this is stuck


class RunLocked(LayergradError):
    """Another process is writing into this run directory under the same writer name."""


def _off() -> bool:
    return os.environ.get(ENV_LOCKS, "").strip().lower() in ("off", "0", "no", "false")


def _filelock(path: Path):
    from filelock import FileLock

    # is_singleton=False, thread_local=False: each WriterLock owns its file descriptor
    return FileLock(str(path), thread_local=False)


def _holder_text(path: Path) -> str:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return (f"host {h.get('host')}, PID {h.get('pid')}, started {h.get('started')}"
                + (f" ({h.get('command')})" if h.get("command") else ""))
    except (OSError, ValueError, AttributeError):
        return "a process that left no holder record"


class WriterLock:
    """The lock of writer ``name`` in run directory ``root``: :meth:`acquire`, then :meth:`release`."""

    def __init__(self, root: str | Path, name: str):
        self.root = Path(root)
        self.name = name
        self.dir = self.root / LOCKS
        self.path = self.dir / f"writer-{name}.lock"
        self.holder = self.dir / f"writer-{name}.holder"
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self, wait: bool = False, log=None) -> None:
        if self._lock is not None or _off():
            return
        from filelock import Timeout

        self.dir.mkdir(parents=True, exist_ok=True)
        lock = _filelock(self.path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            who = _holder_text(self.holder)
            if not wait:
                raise RunLocked(
                    f"{self.root} is being written by another `layergrad` process as writer {self.name!r}: {who}. "
                    f"Wait for it to finish (rerun then to resume), stop it, or write elsewhere (another --out, "
                    f"or --shard i/N to split the work between processes). Lock: {self.path}"
                ) from None
            if log:
                log(f"layergrad: {self.root} is being written by {who}; waiting for it to finish")
            lock.acquire()
        self._lock = lock
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        try:
            self.holder.write_text(json.dumps(record), encoding="utf-8")
        except OSError:
            pass  # information only

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.holder.unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()
        self._lock = None


class ManifestLock:
    """Held while the manifest is created, checked or extended (every writer of the directory shares it)."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / LOCKS / "manifest.lock"
        self._lock = None

    def __enter__(self):
        if _off():
            return self
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _filelock(self.path)
        try:
            self._lock.acquire(timeout=MANIFEST_WAIT_S)
        except Timeout:
            raise RunLocked(f"{self.path} has been held for over {MANIFEST_WAIT_S:.0f} s by another process; "
                            "if no layergrad process uses this directory, remove that file") from None
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.release()
            self._lock = None
