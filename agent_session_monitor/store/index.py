"""The derived index: what readers answer from, so that ``list``, ``stats-*``, ``export``
and the web overview never parse every conversation.

An SQLite file (``.index.sqlite``, standard library) beside the session files, holding
one row per session, its usage aggregated per (UTC quarter-hour, model, consumer), and
the same sums per round at its exact time. Reports sum the quarter-hours that lie wholly
inside a window (today's zones have offsets in multiples of 15 minutes, so a day is whole
quarter-hours) and read the rounds only at the edges (``window.py``). Token columns hold
the normalised meaning of tokens.py (input includes the cache, output the reasoning, for
every provider). It is derived data: rebuildable from the session files
at any time (``main.py --rebuild-index``), and rebuilt when missing.

Crash safety: before the monitor rewrites session files it records their names as
*pending* in the index; after the rewrite it replaces their rows and clears the mark in
one transaction. A crash in between leaves the mark, and the next run (or a reader)
re-reads just those files.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Callable, Iterable

from . import fulltext
from ..pricing import tokens
from .names import is_session_file
from .pruned_archive import index_rows as pruned_rows
from ..session_keys import parse_session_key
from .subagents import doc_claims
from .sessions import read_document, unreadable_reason

INDEX_NAME = ".index.sqlite"
# 4: per-round edge table; 5: agent, channel, kind, spawns; 6: full text; 7: input /
# output / cached / cache_write / reasoning hold the normalised columns (tokens.py), not
# the logged counts; 8: full text per round (fulltext.py), so a pass writes only the new
# rounds' text. An index of another version is rebuilt.
INDEX_VERSION = 8
BUCKET_FIELDS = ("input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS sessions (
    sid INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, session_id TEXT NOT NULL,
    unsessioned INTEGER NOT NULL,
    created_at TEXT, updated_at TEXT, rounds INTEGER NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, reasoning INTEGER NOT NULL,
    cached INTEGER NOT NULL, cache_write INTEGER NOT NULL,
    cost REAL, unpriced_rounds INTEGER NOT NULL, model TEXT, models TEXT NOT NULL,
    consumers TEXT NOT NULL, tool_calls INTEGER NOT NULL, size INTEGER NOT NULL,
    agent TEXT, channel TEXT, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated_at);
CREATE INDEX IF NOT EXISTS sessions_id ON sessions (session_id);
CREATE TABLE IF NOT EXISTS usage (
    sid INTEGER NOT NULL, bucket TEXT NOT NULL, model TEXT, consumer TEXT,
    rounds INTEGER NOT NULL, input INTEGER NOT NULL, output INTEGER NOT NULL,
    reasoning INTEGER NOT NULL, cached INTEGER NOT NULL, cache_write INTEGER NOT NULL,
    {", ".join(f"b_{f} INTEGER NOT NULL" for f in BUCKET_FIELDS)},
    cost REAL NOT NULL, unpriced_rounds INTEGER NOT NULL, tool_calls INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS usage_sid ON usage (sid);
-- list --model: the models in the store, and the sessions of one, without a scan.
CREATE INDEX IF NOT EXISTS usage_model ON usage (model, sid);
-- The same sums per round, at its exact time: the edges of a window that does not fall
-- on quarter-hours (``--since 09:05``, a zone offset such as -09:04) are read from here.
CREATE TABLE IF NOT EXISTS round_usage (
    sid INTEGER NOT NULL, ts TEXT NOT NULL, bucket TEXT NOT NULL, model TEXT, consumer TEXT,
    rounds INTEGER NOT NULL, input INTEGER NOT NULL, output INTEGER NOT NULL,
    reasoning INTEGER NOT NULL, cached INTEGER NOT NULL, cache_write INTEGER NOT NULL,
    {", ".join(f"b_{f} INTEGER NOT NULL" for f in BUCKET_FIELDS)},
    cost REAL NOT NULL, unpriced_rounds INTEGER NOT NULL, tool_calls INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS round_usage_ts ON round_usage (ts);
CREATE INDEX IF NOT EXISTS round_usage_sid ON round_usage (sid);
-- Sub-agent claims (subagents.py): a parent session's tool results naming a child key.
CREATE TABLE IF NOT EXISTS spawns (sid INTEGER NOT NULL, child TEXT NOT NULL, claimed_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spawns_sid ON spawns (sid);
-- Covering for the per-day reads (models per day, sessions per day): they read the
-- index alone, never the wide rows.
CREATE INDEX IF NOT EXISTS usage_bucket ON usage (bucket, model, rounds, sid);
"""


def index_path(directory: Path) -> Path:
    return directory / INDEX_NAME


def quarter_hour(timestamp: str) -> str:
    """``2026-02-01T09:37:12.000Z`` -> ``2026-02-01T09:30`` (UTC)."""
    quarter = _QUARTERS.get(timestamp[14:16])
    if quarter is None:
        return f"{timestamp[:14]}{int(timestamp[14:16]) // 15 * 15:02d}"
    return timestamp[:14] + quarter


# Minute -> the minute its quarter-hour starts at (a lookup, not an int() per round).
_QUARTERS = {f"{m:02d}": f"{m // 15 * 15:02d}" for m in range(60)}


SESSION_FIELDS = ("file", "session_id", "unsessioned", "created_at", "updated_at", "rounds",
                  "input", "output", "reasoning", "cached", "cache_write", "cost",
                  "unpriced_rounds", "model", "models", "consumers", "tool_calls", "size",
                  "agent", "channel", "kind")


def sql_text(value: object) -> object:
    """A string SQLite can bind: a lone surrogate (valid in JSON, so in a client-set
    session id or model name) becomes U+FFFD; other values pass through."""
    if isinstance(value, str) and not value.isascii():   # isascii: O(1), no copy
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def session_row(file_name: str, doc: dict, size: int, per_round: list[tuple]) -> tuple:
    """The session's ``sessions`` row; its token and tool-call sums come from its
    ``round_usage`` rows (:func:`usage_rows`), not from its rounds again."""
    return _session_row(file_name, doc, size, per_round, 1)


def _session_row(file_name: str, doc: dict, size: int, per_round: list[tuple],
                 sid_columns: int) -> tuple:
    """:func:`session_row` from ``round_usage`` rows that start with ``sid_columns`` sid
    columns (1, or 0: rows prepared without their sid)."""
    key = parse_session_key(None if doc.get("unsessioned") else doc.get("session_id"))
    # round_usage columns after (sid, timestamp, bucket, model, consumer): the round
    # count, then input, output, reasoning, cached, cache write (round_sums); last, the
    # tool-call flag.
    first = 5 + sid_columns
    if len(per_round) == 1:
        # One round (most sessions of a busy gateway): its columns are the sums (ints).
        only = per_round[0]
        t, tool_calls = only[first:first + 5], only[-1]
    else:
        columns = list(zip(*per_round)) or [()] * (20 + sid_columns)
        t = [sum(columns[i]) for i in range(first, first + 5)]
        tool_calls = sum(columns[-1])
    return (
        file_name, sql_text(doc.get("session_id") or ""), 1 if doc.get("unsessioned") else 0,
        doc.get("created_at"), doc.get("updated_at"), len(per_round), *t,
        doc.get("total_cost_usd"),
        doc.get("unpriced_rounds") or 0, sql_text(doc.get("model")),
        _json_list(doc.get("models") or []), _json_list(doc.get("consumers") or []),
        tool_calls, size,
        sql_text(key.agent), sql_text(key.channel), key.kind,
    )


def _json_list(values: list) -> str:
    """``json.dumps(values)``, remembered for lists of text: a store's sessions share a
    few model lists (only text: 1 and true are equal keys, not equal JSON)."""
    if not isinstance(values, list) or not all(type(v) is str for v in values):
        return json.dumps(values)
    key = tuple(values)
    text = _JSON_LISTS.get(key)
    if text is None:
        if len(_JSON_LISTS) >= 4096:
            _JSON_LISTS.clear()
        text = _JSON_LISTS[key] = json.dumps(values)
    return text


_JSON_LISTS: dict[tuple, str] = {}


def round_sums(r: dict) -> list:
    """One round's contribution to every summed column of ``usage`` (after ``rounds``):
    the normalised token columns, buckets, cost (0 when unpriced), unpriced and tool-call
    flags."""
    buckets = r.get("buckets") or {}
    cost = r.get("cost_usd")
    t = tokens.of_round(r)
    get = buckets.get
    return [1, t["input"], t["output"], t["reasoning"], t["cached"], t["cache_write"],
            get("input") or 0, get("cache_read") or 0, get("cache_write") or 0,
            get("cache_write_1h") or 0, get("output") or 0, get("reasoning") or 0,
            0.0 if cost is None else cost, 1 if cost is None else 0,
            1 if r.get("has_tool_calls") else 0]


def usage_rows(sid: int, doc: dict) -> tuple[list[tuple], list[tuple]]:
    """The session's rows for ``usage`` (per quarter-hour, model, consumer) and for
    ``round_usage`` (per round)."""
    rows, per_round = _usage_rows(doc)
    return [(sid, *row) for row in rows], [(sid, *row) for row in per_round]


def _usage_rows(doc: dict) -> tuple[list[tuple], list[tuple]]:
    """:func:`usage_rows` without their leading sid (a commit adds it once it is known)."""
    groups: dict[tuple, list] = {}
    per_round = []
    cost_at = 6 + len(BUCKET_FIELDS)
    for r in doc.get("rounds") or []:
        timestamp = r["timestamp"]
        bucket = quarter_hour(timestamp)
        model, consumer = sql_text(r.get("model")), sql_text(r.get("consumer"))
        sums = round_sums(r)
        per_round.append((timestamp, bucket, model, consumer, *sums))
        group = groups.get((bucket, model, consumer))
        if group is None:
            groups[(bucket, model, consumer)] = [sums]
        else:
            group.append(sums)
    rows = []
    for (bucket, model, consumer), members in groups.items():
        if len(members) == 1:
            # One round's sums are its own: the cost as fsum gives it (a float; 0.0
            # for -0.0).
            sums = members[0]
            cost = sums[cost_at]
            if type(cost) is not float or cost == 0.0:
                sums = list(sums)
                sums[cost_at] = math.fsum((cost,))
            rows.append((bucket, model, consumer, *sums))
            continue
        # Column sums in round order, as a running total would give them (the counts
        # are ints).
        acc = [sum(c) for c in zip(*members)]
        # money: independent of the order of addition
        acc[cost_at] = math.fsum(sums[cost_at] for sums in members)
        rows.append((bucket, model, consumer, *acc))
    return rows, per_round


INSERT_SESSION = (f"INSERT INTO sessions (sid, {', '.join(SESSION_FIELDS)}) "
                  f"VALUES ({','.join('?' * (len(SESSION_FIELDS) + 1))})")
INSERT_USAGE = f"INSERT INTO usage VALUES ({','.join('?' * 19)})"
INSERT_ROUND = f"INSERT INTO round_usage VALUES ({','.join('?' * 20)})"


def replace_rows(db: sqlite3.Connection, docs: list[tuple[str, dict, int]]) -> None:
    """(file name, session document, file size) -> their rows, replacing old ones. A
    session keeps its integer id, which the usage rows carry (smaller than the name).
    The caller holds the transaction."""
    replace_prepared(db, prepare_rows(docs, fulltext.present(db), snapshot=False))


def prepare_rows(docs: list[tuple[str, dict, int]], with_text: bool,
                 snapshot: bool = True, texts: bool = False) -> list[tuple]:
    """The rows of these sessions, computed now (the documents may change afterwards,
    while another thread writes the rows): (file name, session row, then the usage,
    per-round and spawn rows without their leading sid, and the rounds to bring the
    full-text rows up to (fulltext.round_keys), or None). ``snapshot=False``: the rows
    are written before the documents can change (a synchronous commit), so the rounds'
    text fields need no copy. ``texts``: each round's text itself, made now, in place
    of its fields (the commit process lets each document go before the rows are
    written: the rounds' other fields, twice their text, are not kept for nothing)."""
    prepared = []
    for name, doc, size in docs:
        rows, rounds = _usage_rows(doc)
        prepared.append((name, _session_row(name, doc, size, rounds, 0), rows, rounds,
                         [(sql_text(child), at) for child, at in doc_claims(doc)],
                         fulltext.round_keys(doc, snapshot, texts) if with_text else None))
    return prepared


def rows_ahead(name: str, doc: dict, size: int, with_text: bool) -> tuple:
    """:func:`prepare_rows` of one session, its rounds' full-text already made (the
    text in place of each round: fulltext.sync_many takes either), for a checkpoint to
    come: computed while the monitor waits for its parse worker (ingest/monitor.py)."""
    return prepare_rows([(name, doc, size)], with_text, texts=True)[0]


def replace_prepared(db: sqlite3.Connection, prepared: list[tuple]) -> None:
    """Write the rows of these prepared sessions (the caller holds the transaction):
    one ``executemany`` per table, not a handful of single-row statements per session
    (181,000 of them for a catch-up of 25,000 short sessions). The rows, and the ids
    SQLite would have given them one by one, are the same (tests/test_index_batch.py)."""
    names = [p[0] for p in prepared]
    top = db.execute("SELECT max(sid) FROM sessions").fetchone()[0] or 0
    if len(set(names)) != len(names) or top >= _LAST_ID:
        # A name twice in one batch, or ids near the end of their range (SQLite then
        # picks them at random): row by row, as SQLite would.
        _replace_prepared_each(db, prepared)
        return
    found = _sids_of(db, names)
    old = [(sid,) for sid in found.values()]
    if old:
        db.executemany("DELETE FROM usage WHERE sid = ?", old)
        db.executemany("DELETE FROM round_usage WHERE sid = ?", old)
        db.executemany("DELETE FROM spawns WHERE sid = ?", old)
        db.executemany("DELETE FROM sessions WHERE sid = ?", old)
    sessions, usage, per_round, spawns, texts = [], [], [], [], []
    for name, row, usage_of, rounds_of, spawns_of, keyed in prepared:
        sid = found.get(name)
        if sid is None:
            # What SQLite gives a row inserted without an id: one more than the largest
            # in the table (a session replaced in place keeps its own, below ``top``).
            top += 1
            sid = top
        sessions.append((sid, *row))
        usage.extend((sid, *u) for u in usage_of)
        per_round.extend((sid, *r) for r in rounds_of)
        spawns.extend((sid, *c) for c in spawns_of)
        if keyed is not None:
            texts.append((sid, keyed))
    db.executemany(INSERT_SESSION, sessions)
    db.executemany(INSERT_USAGE, usage)
    db.executemany(INSERT_ROUND, per_round)
    if spawns:
        db.executemany("INSERT INTO spawns VALUES (?, ?, ?)", spawns)
    if texts:
        fulltext.sync_many(db, texts)


# Row ids from here on are near SQLite's largest (2**63 - 1), where it picks new ones at
# random: never in practice, handled row by row.
_LAST_ID = 2**62


def _sids_of(db: sqlite3.Connection, names: list[str]) -> dict[str, int]:
    """file name -> sid of those of ``names`` the index has, a few hundred per query."""
    found: dict[str, int] = {}
    for i in range(0, len(names), _NAMES_PER_QUERY):
        part = names[i:i + _NAMES_PER_QUERY]
        found.update(db.execute(f"SELECT file, sid FROM sessions WHERE file IN "
                                f"({','.join('?' * len(part))})", part))
    return found


_NAMES_PER_QUERY = 500   # below SQLite's oldest limit on bound values (999)


def _replace_prepared_each(db: sqlite3.Connection, prepared: list[tuple]) -> None:
    """:func:`replace_prepared` one session at a time."""
    usage, per_round, spawns, texts = [], [], [], []
    for name, row, usage_of, rounds_of, spawns_of, keyed in prepared:
        found = db.execute("SELECT sid FROM sessions WHERE file = ?", (name,)).fetchone()
        sid = found[0] if found else None
        if sid is not None:
            db.execute("DELETE FROM usage WHERE sid = ?", (sid,))
            db.execute("DELETE FROM round_usage WHERE sid = ?", (sid,))
            db.execute("DELETE FROM spawns WHERE sid = ?", (sid,))
            db.execute("DELETE FROM sessions WHERE sid = ?", (sid,))
        sid = db.execute(INSERT_SESSION, (sid, *row)).lastrowid
        usage.extend((sid, *u) for u in usage_of)
        per_round.extend((sid, *r) for r in rounds_of)
        spawns.extend((sid, *c) for c in spawns_of)
        if keyed is not None:
            texts.append((sid, keyed))
    db.executemany(INSERT_USAGE, usage)
    db.executemany(INSERT_ROUND, per_round)
    if spawns:
        db.executemany("INSERT INTO spawns VALUES (?, ?, ?)", spawns)
    for sid, keyed in texts:
        # Only the rounds the index has not seen: the sid is kept, so are their rows.
        fulltext.sync(db, sid, keyed)


def commit_prepared(db: sqlite3.Connection, prepared: list[tuple]) -> None:
    """Replace the rows of these prepared sessions and clear the pending mark in one
    transaction (on the monitor's connection, or a commit process's own)."""
    with db:
        replace_prepared(db, prepared)
        db.execute("DELETE FROM meta WHERE key = 'pending'")


def delete_rows(db: sqlite3.Connection, name: str) -> None:
    if fulltext.present(db):
        fulltext.delete(db, "SELECT sid FROM sessions WHERE file = ?", (name,))
    db.execute("DELETE FROM spawns WHERE sid IN (SELECT sid FROM sessions WHERE file = ?)", (name,))
    db.execute("DELETE FROM usage WHERE sid IN (SELECT sid FROM sessions WHERE file = ?)", (name,))
    db.execute("DELETE FROM round_usage WHERE sid IN (SELECT sid FROM sessions WHERE file = ?)",
               (name,))
    db.execute("DELETE FROM sessions WHERE file = ?", (name,))


def create_schema(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    fulltext.create(db)


# Index meta keys of --reprice (ingest/maintenance.py, web/metrics.py): the pricing
# epoch (how many repricings changed stored costs; /metrics labels the cost counters with
# it, so that a reprice starts new series instead of making a counter go down), and the
# epoch of a reprice in progress (the costs are then partly old, partly new: /metrics
# shows none). Also kept in .state.json's extra, so that an index rebuilt from nothing
# goes on from the same epoch.
PRICING_EPOCH = "pricing_epoch"
REPRICING = "repricing"


def epoch_value(value) -> int:
    """A pricing epoch read back (meta or state: text, or anything a hand edit left)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 0
    return n if 0 <= n < 2**53 else 0


class Index:
    """Read-write access for the monitor (the single writer)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = index_path(directory)
        fresh = not self.path.exists()
        if fresh:
            # A -wal/-shm left by an index deleted while a reader (the web UI) had it
            # open: SQLite would take them for the new file's ("disk I/O error", and
            # every run failed until the reader ended). Without their database they are
            # nothing (derived data).
            for suffix in ("-wal", "-shm", "-journal"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        self.db = connect(self.path)
        version = self._meta("version")
        if version is not None and version != str(INDEX_VERSION):
            # Derived data: an index of another layout is simply rebuilt.
            self.db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.db = connect(self.path)
            fresh = True
        if fresh:
            os.chmod(self.path, 0o600)
        create_schema(self.db)
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)   # the file this index is (replaced())
        self.needs_rebuild = fresh or self._meta("complete") != "1"
        self.skipped: list[tuple[str, str]] = []   # (file, why) the last rebuild left out
        self._set_meta("version", str(INDEX_VERSION))

    def meta(self, key: str) -> str | None:
        return self._meta(key)

    def set_meta(self, key: str, value: str | None) -> None:
        self._set_meta(key, value)

    def _meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def _set_meta(self, key: str, value: str | None) -> None:
        with self.db:
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def pending(self) -> list[str]:
        return json.loads(self._meta("pending") or "[]")

    def mark_pending(self, file_names: Iterable[str]) -> None:
        names = sorted(set(self.pending()) | set(file_names))
        self._set_meta("pending", json.dumps(names))

    def update(self, docs: list[tuple[str, dict, int]], ahead: dict | None = None) -> None:
        """Replace the rows of these sessions and clear their pending mark, atomically.
        ``ahead``: file name -> rows computed earlier (:func:`rows_ahead`) of sessions
        unchanged since, with the same size."""
        if not ahead:
            with self.db:
                self._replace(docs)
                self.db.execute("DELETE FROM meta WHERE key = 'pending'")
            return
        with_text = fulltext.present(self.db)
        commit_prepared(self.db, [ahead.get(name) or prepare_rows(
            [(name, doc, size)], with_text, snapshot=False)[0] for name, doc, size in docs])

    def prepare(self, docs: list[tuple[str, dict, int]]) -> list[tuple]:
        """:func:`prepare_rows` for this index (with full-text rows if it has FTS5)."""
        return prepare_rows(docs, fulltext.present(self.db))

    def update_prepared(self, prepared: list[tuple]) -> None:
        """:meth:`update` with rows from :func:`prepare_rows` (a background commit)."""
        commit_prepared(self.db, prepared)

    def reconnect(self) -> None:
        """A new connection after :meth:`close`. Around a fork (a commit process,
        ingest/commit_process.py) the monitor closes its connection first: SQLite's
        connections and its per-process lock bookkeeping must not exist on both sides
        of a fork; the child opens its own."""
        self.db = connect(self.path)

    def _replace(self, docs: list[tuple[str, dict, int]]) -> None:
        replace_rows(self.db, docs)

    def repair_pending(self) -> int:
        """Re-index sessions a crash left marked pending; returns how many."""
        names = self.pending()
        if names:
            docs = [loaded for loaded in (load_entry(self.directory, n) for n in names) if loaded]
            with self.db:
                for name in names:
                    delete_rows(self.db, name)
                self._replace(docs)
                self.db.execute("DELETE FROM meta WHERE key = 'pending'")
        return len(names)

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-read every session file (after a loss of the index, or a schema change)."""
        names = sorted(n for n in os.listdir(self.directory) if is_session_file(n))
        with self.db:
            self.db.execute("DELETE FROM sessions")
            self.db.execute("DELETE FROM usage")
            self.db.execute("DELETE FROM round_usage")
            if fulltext.present(self.db):
                fulltext.delete_all(self.db)
            self.db.execute("DELETE FROM spawns")
            batch: list[tuple[str, dict, int]] = []
            self.skipped = []
            for i, name in enumerate(names, 1):
                loaded = load_entry(self.directory, name, self.skipped)
                if loaded is not None:
                    batch.append(loaded)
                if len(batch) >= 500:
                    self._replace(batch)
                    batch = []
                if progress:
                    progress(i, len(names))
            self._replace(batch)
            # Pruned sessions have no file: their totals come from the archive.
            self._replace(pruned_rows(self.directory))
            self.db.execute("DELETE FROM meta WHERE key = 'pending'")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('complete', '1')")
        self.needs_rebuild = False
        return len(names) - len(self.skipped)

    def close(self) -> None:
        self.db.close()

    def replaced(self) -> bool:
        """Whether the index file was deleted or replaced since it was opened (a user
        told it is derived data deleted it): this connection then writes to a file no
        reader sees, and a commit process opening the path would start a partial one."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return (st.st_dev, st.st_ino) != self._ident


def load_entry(directory: Path, name: str,
               skipped: list[tuple[str, str]] | None = None) -> tuple[str, dict, int] | None:
    """(name, document, size) of a session file, or None if it cannot be read (with
    (name, why) added to ``skipped``)."""
    path = directory / name
    try:
        size = path.lstat().st_size
        return name, read_document(path), size
    except (OSError, ValueError) as e:
        if skipped is not None and not isinstance(e, FileNotFoundError):
            skipped.append((name, unreadable_reason(e)))
        return None


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        db = sqlite3.connect(path, check_same_thread=False)
        # WAL: readers (the web UI) never block the monitor and never see a half
        # transaction; NORMAL is durable at every checkpoint and never corrupts.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db
