"""The archive of pruned sessions, ``.pruned.sqlite`` (retention.py writes it): each
pruned session's accounting (its rounds without their content, zlib-compressed JSON),
so that the derived index can be rebuilt with their totals and the monitor recognises a
pruned round the log brings back. Index rows of a pruned session carry a label that is
never a file name: ``.pruned/<entry id>/<file>``."""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from pathlib import Path
from typing import Iterable

from .sessions import CONTENT_KEYS

ARCHIVE_NAME = ".pruned.sqlite"
LABEL_PREFIX = ".pruned/"
# What a round keeps once pruned: everything except the conversation itself.
DROPPED_ROUND_KEYS = frozenset(CONTENT_KEYS) | {"messages_offset", "context_key",
                                                 "messages_truncated", "system_hash"}
DROPPED_DOC_KEYS = ("context_tip",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pruned (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL, session_id TEXT, pruned_at TEXT NOT NULL,
    last_round TEXT, rounds INTEGER NOT NULL, doc BLOB NOT NULL, done INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS pruned_file ON pruned (file);
"""


def label(entry_id: int, file_name: str) -> str:
    return f"{LABEL_PREFIX}{entry_id}/{file_name}"


def is_label(name: str) -> bool:
    return name.startswith(LABEL_PREFIX)


def accounting(doc: dict) -> dict:
    """The session without its conversation: what the index and deduplication need."""
    kept = {k: v for k, v in doc.items() if k not in DROPPED_DOC_KEYS and k != "rounds"}
    kept["rounds"] = [{k: v for k, v in r.items() if k not in DROPPED_ROUND_KEYS}
                      for r in doc.get("rounds") or []]
    return kept


def pack(doc: dict) -> bytes:
    return zlib.compress(json.dumps(doc, ensure_ascii=True, separators=(",", ":"),
                                    allow_nan=False).encode("ascii"), 6)


def unpack(blob: bytes) -> dict:
    return json.loads(zlib.decompress(blob))


class Archive:
    """``.pruned.sqlite``: opened only when it exists (or a prune creates it)."""

    def __init__(self, directory: Path, create: bool = False) -> None:
        self.path = directory / ARCHIVE_NAME
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)
        # Rollback journal with full sync: a committed entry survives a power cut, and
        # this file is written a few times a day at most.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)

    @classmethod
    def open_if_exists(cls, directory: Path) -> "Archive | None":
        try:
            return cls(directory)
        except FileNotFoundError:
            return None

    def keys_for(self, file_name: str) -> set[str]:
        """Idempotency keys of every pruned round of the session stored as ``file_name``."""
        keys: set[str] = set()
        for (blob,) in self.db.execute("SELECT doc FROM pruned WHERE file = ?", (file_name,)):
            keys.update(r["key"] for r in unpack(blob)["rounds"] if "key" in r)
        return keys

    def entries(self) -> Iterable[tuple[int, str, bool, dict]]:
        """(id, file, done, accounting document) of every entry."""
        for entry_id, name, done, blob in self.db.execute(
                "SELECT id, file, done, doc FROM pruned ORDER BY id"):
            yield entry_id, name, bool(done), unpack(blob)

    def close(self) -> None:
        self.db.close()


def load_label(directory: Path, name: str) -> dict | None:
    """The accounting document behind an index label (``.pruned/<id>/<file>``)."""
    try:
        entry_id = int(name[len(LABEL_PREFIX):].split("/", 1)[0])
    except ValueError:
        return None
    archive = Archive.open_if_exists(directory)
    if archive is None:
        return None
    try:
        row = archive.db.execute("SELECT doc FROM pruned WHERE id = ?", (entry_id,)).fetchone()
        return unpack(row[0]) if row else None
    finally:
        archive.close()


def index_rows(directory: Path) -> list[tuple[str, dict, int]]:
    """What a rebuilt index must hold beside the session files: every pruned session's
    accounting, except an entry still pending whose file is still there (its prune did
    not happen yet: the file is indexed, and the next lock holder finishes it)."""
    archive = Archive.open_if_exists(directory)
    if archive is None:
        return []
    try:
        return [(label(entry_id, name), doc, 0) for entry_id, name, done, doc in archive.entries()
                if done or not (directory / name).exists()]
    finally:
        archive.close()
