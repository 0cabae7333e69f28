"""The judge's answers on disk, keyed by (model, prompt): a rerun, or another directory sharing the
file, asks nothing it has asked before.

One SQLite file (``OUT/judge-cache.sqlite`` unless ``--judge-cache``); every answer is committed as
it arrives, so a killed run keeps every answer it paid for. Only answers are kept (the message's
content, refusal and finish reason), never errors: a failed request is asked again.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

__all__ = ["AnswerCache", "cache_key"]


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    """SHA-256 of the model name, the messages and the sampling parameters (canonical JSON)."""
    text = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT)")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, model: str, answer: dict) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, model, json.dumps(answer)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
