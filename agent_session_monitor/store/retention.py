"""Retention: ``main.py --keep DURATION`` removes the session files whose last round is
older than DURATION, and keeps what they cost.

A store kept forever fills a disk, but a FinOps user still needs last quarter's bill. So
a pruned session leaves two things behind:

- its rows in the index, under a label that is never a file name
  (``.pruned/<archive id>/<file>``): per-day, per-model and per-consumer totals, the
  overview and ``/metrics`` over the pruned period do not change (listings and ``show``
  no longer offer the session: its conversation is gone, its full-text row too);
- its *accounting* in the archive ``.pruned.sqlite``: every round without its content
  (times, model, consumer, tokens, cost, idempotency key), zlib-compressed JSON. The
  index is derived data and is rebuilt from the session files plus this archive; and the
  round keys make a pruned round that the log brings back (a re-read, a restored
  rotation) a duplicate, never a second charge and never a resurrected session.

Crash safety (SIGKILL at any point converges): per batch, (1) the archive entries are
committed as *pending*, (2) the index rows are relabelled in one transaction, (3) the
files are unlinked and the directory fsynced, (4) the entries are marked done. Whoever
next holds the store's lock (the monitor at start, or the next prune) first finishes
every pending entry with the same idempotent steps. Until then readers see the session
either whole (file and row) or pruned (row relabelled): never both, never neither.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import fulltext
from .durable import fsync_path
from .index import replace_rows, sql_text
from .names import is_session_file
from .pruned_archive import Archive, pack, accounting, label
from .sessions import read_document

BATCH = 500
MAX_KEEP = timedelta(days=366_000)   # ~1,000 years; 999999d reaches before year 1


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12w``, ``36h``, ``45m``: how long to keep sessions after their last round."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text or "")
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90d, 12w, 36h (more than 0)")
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    keep = timedelta(**{unit: int(m.group(1))})
    if keep > MAX_KEEP:   # "now - keep" must be a date (OverflowError before year 1)
        raise ValueError(f"{text!r} is too long a duration: at most {MAX_KEEP.days}d")
    return keep


@dataclass
class PruneResult:
    sessions: int = 0
    rounds: int = 0
    bytes_freed: int = 0
    cost: list = field(default_factory=list)
    recovered: int = 0
    names: list = field(default_factory=list)


def recover(directory: Path, index_db: sqlite3.Connection) -> int:
    """Finish every pending entry (a prune that was killed). Call with the lock held and
    the index repaired, before anything writes sessions. Returns how many."""
    archive = Archive.open_if_exists(directory)
    if archive is None:
        return 0
    try:
        pending = [(i, name, doc) for i, name, done, doc in archive.entries() if not done]
        if pending:
            _finish(directory, index_db, archive, pending)
        return len(pending)
    finally:
        archive.close()


def _finish(directory: Path, index_db: sqlite3.Connection, archive: Archive,
            entries: list[tuple[int, str, dict]]) -> int:
    """Steps 2 to 4 for committed entries; each idempotent. Returns the bytes freed."""
    _relabel(index_db, entries)
    freed = _unlink(directory, entries)
    _mark_done(archive, entries)
    return freed


def _relabel(index_db: sqlite3.Connection, entries: list[tuple[int, str, dict]]) -> None:
    """(2) The index rows become the pruned label's, in one transaction."""
    with index_db:
        for entry_id, name, doc in entries:
            target = label(entry_id, name)
            if index_db.execute("SELECT 1 FROM sessions WHERE file = ?", (target,)).fetchone():
                continue
            moved = index_db.execute("UPDATE sessions SET file = ? WHERE file = ?",
                                     (target, name)).rowcount
            if not moved:   # the index was rebuilt meanwhile without the file
                replace_rows(index_db, [(target, doc, 0)])
            elif fulltext.present(index_db):
                # The conversation goes with the file: its searchable text too.
                fulltext.delete(index_db, "SELECT sid FROM sessions WHERE file = ?", (target,))


def _unlink(directory: Path, entries: list[tuple[int, str, dict]]) -> int:
    """(3) The files go, durably (directory fsync)."""
    freed = 0
    for _entry_id, name, _doc in entries:
        path = directory / name
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    fsync_path(directory)
    return freed


def _mark_done(archive: Archive, entries: list[tuple[int, str, dict]]) -> None:
    """(4) Only now may a rebuilt index count the entry while a file of that name
    exists (the session came back with new rounds)."""
    with archive.db:
        archive.db.executemany("UPDATE pruned SET done = 1 WHERE id = ?",
                               [(entry_id,) for entry_id, _n, _d in entries])


def prune(directory: Path, index_db: sqlite3.Connection, keep: timedelta, *,
          now: datetime | None = None) -> PruneResult:
    """Remove the session files whose last round is older than ``now - keep``, keeping
    their totals (see the module docstring). Call with the store's lock held."""
    result = PruneResult(recovered=recover(directory, index_db))
    cutoff = ((now or datetime.now(timezone.utc)) - keep).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    names = [r[0] for r in index_db.execute(
        "SELECT file FROM sessions WHERE updated_at < ? ORDER BY updated_at", (cutoff,))
        if is_session_file(r[0]) and r[0] == os.path.basename(r[0])]
    if not names:
        return result
    archive = Archive(directory, create=True)
    try:
        pruned_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for start in range(0, len(names), BATCH):
            batch = []
            for name in names[start:start + BATCH]:
                try:
                    doc = read_document(directory / name)
                except (OSError, ValueError):
                    continue   # gone or unreadable: not this prune's to decide
                if not doc["rounds"] or (doc.get("updated_at") or "") >= cutoff:
                    continue   # the file is the truth: it had a newer round
                batch.append((name, doc))
            if not batch:
                continue
            with archive.db:   # (1) pending entries, durable before anything is removed
                entries = []
                for name, doc in batch:
                    kept = accounting(doc)
                    cur = archive.db.execute(
                        "INSERT INTO pruned (file, session_id, pruned_at, last_round, rounds, "
                        "doc, done) VALUES (?, ?, ?, ?, ?, ?, 0)",
                        (name, sql_text(doc.get("session_id") or ""), pruned_at, doc.get("updated_at"),
                         len(doc["rounds"]), pack(kept)))
                    entries.append((cur.lastrowid, name, kept))
            result.bytes_freed += _finish(directory, index_db, archive, entries)
            result.sessions += len(batch)
            result.names += [name for name, _doc in batch]
            result.rounds += sum(len(doc["rounds"]) for _n, doc in batch)
            result.cost += [r["cost_usd"] for _n, doc in batch for r in doc["rounds"]
                            if r.get("cost_usd") is not None]
    finally:
        archive.close()
    return result
