"""Reading the store for reports: the CLI and the web UI both answer from here.

Summaries and aggregates come from the derived index (never from every conversation);
one session's conversation comes from its one file. One aggregator serves every
grouping (model, day, consumer, session), the key being a parameter: its SQL is here, the
whole-store and per-day passes in aggregates.py; sub-agent roll-ups are in
subagent_costs.py, machine-output records in records.py.
"""

from __future__ import annotations

import difflib
import re
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from pathlib import Path

from ..errors import MonitorError
from ..store.durable import refuse_symlink
from ..store.index import (
    INDEX_NAME, INDEX_VERSION, SESSION_FIELDS, sql_text, connect, create_schema, delete_rows,
    load_entry, replace_rows,
)
from ..store.pruned_archive import LABEL_PREFIX, index_rows as pruned_rows
from ..store.names import UNSESSIONED_FILE, UNSESSIONED_ID, file_name_for, is_session_file
from ..store.sessions import UnreadableSession, read_document, unreadable_reason
from ..store import fulltext
from . import window
from .aggregates import (
    _by_day_bounds, _priced_or_none, _subagent_part, _whole_store_by, _whole_store_by_key,
    range_totals,
)
from .subagent_costs import SubagentCosts

SESSION_COLUMNS = SESSION_FIELDS
SUMS = window.SUMS
SORTS = {"updated": "updated_at DESC", "cost": "COALESCE(cost, 0) DESC",
         "tokens": "(input + output) DESC", "rounds": "rounds DESC",
         "created": "created_at DESC", "id": "session_id ASC"}
GROUPS = ("model", "day", "consumer", "session", "agent", "channel", "kind")
# Groupings by what the session's own key says (session_keys.py): columns of sessions.
KEY_GROUPS = ("agent", "channel", "kind")
SORTS["cost-with-subagents"] = "COALESCE(cost, 0) DESC"   # re-ordered in Python: sessions()


@dataclass
class StoreReader(SubagentCosts):
    """Read-only view of a session store. Opens the index; if there is none (an old
    store, or it was deleted) builds one in memory from the session files."""

    directory: Path
    db: sqlite3.Connection
    _model_consumer: dict | None = field(default=None, init=False, repr=False)
    _links: dict | None = field(default=None, init=False, repr=False)
    # (file, why) of session files an in-memory index had to leave out (corrupt).
    skipped: list = field(default_factory=list, init=False, repr=False)

    @classmethod
    def open(cls, directory: Path, progress: bool | None = None) -> "StoreReader":
        if not directory.is_dir():
            raise MonitorError(f"no session store at {directory}: run main.py first "
                               "(python3 main.py --log-path ... --output-dir DIR), or point "
                               "--data-dir at it")
        path = directory / INDEX_NAME
        refuse_symlink(path)   # another database's rows shown as this store's
        db = None
        if path.exists():
            try:
                db = connect(path, readonly=True)
                meta = dict(db.execute("SELECT key, value FROM meta"))
                # An index the monitor has not finished, or of another layout (an older
                # version of this tool), is not used: the files are indexed in memory.
                if meta.get("complete") != "1" or meta.get("version") != str(INDEX_VERSION):
                    db.close()
                    db = None
            except sqlite3.Error:
                db = None
        skipped: list[tuple[str, str]] = []
        reader = cls(directory, db or _memory_index(directory, progress, skipped))
        reader.skipped = skipped
        reader._overlay_pending()
        return reader

    def _overlay_pending(self) -> None:
        """A monitor killed between writing sessions and indexing them leaves them
        marked pending: read those few files, so answers match the files."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='pending'").fetchone()
        except sqlite3.Error:
            return
        names = json.loads(row[0]) if row else []
        if not names:
            return
        memory = sqlite3.connect(":memory:", check_same_thread=False)
        memory.execute(f"ATTACH DATABASE 'file:{self.directory / INDEX_NAME}?mode=ro' AS disk")
        memory.executescript("CREATE TABLE sessions AS SELECT * FROM disk.sessions; "
                             "CREATE TABLE usage AS SELECT * FROM disk.usage; "
                             "CREATE TABLE round_usage AS SELECT * FROM disk.round_usage; "
                             "CREATE TABLE spawns AS SELECT * FROM disk.spawns; "
                             "CREATE TABLE meta AS SELECT * FROM disk.meta;")
        if fulltext.present(self.db) and fulltext.create(memory):
            memory.execute(f"INSERT INTO {fulltext.TABLE} (rowid, text) "
                           f"SELECT rowid, text FROM disk.{fulltext.TABLE}")
            memory.execute(f"INSERT INTO {fulltext.ROUNDS} SELECT * FROM disk.{fulltext.ROUNDS}")
        memory.commit()   # the copy ran in an implicit transaction that holds disk
        memory.execute("DETACH DATABASE disk")
        for name in names:
            delete_rows(memory, name)
        replace_rows(memory, [e for e in (load_entry(self.directory, n) for n in names) if e])
        self.db.close()
        self.db = memory

    def close(self) -> None:
        self.db.close()

    # -- sessions ------------------------------------------------------------------

    def sessions(self, sort: str = "updated", limit: int | None = None, offset: int = 0,
                 model: str | None = None, consumer: str | None = None,
                 since: str | None = None, search: str | None = None) -> list[dict]:
        if sort == "cost-with-subagents":
            return self._sessions_with_subagents(limit, offset, model, consumer, since, search)
        where, params = self.filters(model, consumer, since, search)
        sql = (f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions{where} "
               f"ORDER BY {SORTS.get(sort, SORTS['updated'])}, file")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [_session_dict(r) for r in self.db.execute(sql, params)]

    def _sessions_with_subagents(self, limit, offset, model, consumer, since, search) -> list[dict]:
        """Sessions by their cost with sub-agents. Only sessions with descendants cost
        more than their own, so the top N by it are among the top N by own cost and
        those few: no need to read every session."""
        rolled = self.costs_with_subagents()
        top = self.sessions("cost", None if limit is None else limit + offset, 0, model,
                            consumer, since, search)
        where, params = self.filters(model, consumer, since, search)
        ids = sorted(rolled)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            clause = (" AND " if where else " WHERE ") + f"session_id IN ({','.join('?' * len(chunk))})"
            top.extend(_session_dict(r) for r in self.db.execute(
                f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions{where}{clause}",
                [*params, *chunk]))
        unique = {r["file"]: r for r in top}
        for r in unique.values():
            r["cost_with_subagents"], r["rounds_with_subagents"] = rolled.get(
                r["session_id"], (r["cost"], r["rounds"])) if not r["unsessioned"] else (r["cost"], r["rounds"])
        ordered = sorted(unique.values(), key=lambda r: (-(r["cost_with_subagents"] or 0), r["file"]))
        return ordered[offset:] if limit is None else ordered[offset:offset + limit]

    def count_sessions(self, model: str | None = None, consumer: str | None = None,
                       since: str | None = None, search: str | None = None) -> int:
        where, params = self.filters(model, consumer, since, search)
        return self.db.execute(f"SELECT COUNT(*) FROM sessions{where}", params).fetchone()[0]

    def filters(self, model, consumer, since, search) -> tuple[str, list]:
        """SQL (`` WHERE ...``) and its parameters for the session filters. ``model``
        matches a model family (:func:`model_family`); ``search`` matches session ids,
        model names and, with FTS5, what the conversations said."""
        consumer, search = sql_text(consumer), sql_text(search)
        # A pruned session's rows stay for the totals; its conversation is gone, so it
        # is not listed (retention.py).
        clauses, params = [f"substr(file, 1, {len(LABEL_PREFIX)}) != ?"], [LABEL_PREFIX]
        if model:
            names = self.models_like(model)
            marks = ",".join("?" * len(names)) or "NULL"
            clauses.append(f"sid IN (SELECT sid FROM usage WHERE model IN ({marks}))")
            params += names
        if consumer:
            clauses.append("sid IN (SELECT sid FROM usage WHERE consumer = ?)")
            params.append(consumer)
        if since:
            clauses.append("updated_at >= ?")
            params.append(since)
        if search:
            match = fulltext.where(search) if self.fulltext else None
            # Each model name, not the JSON text of the list: a '"' or ',' would match
            # every session, and a non-ASCII name is stored there as \u escapes.
            text = ("instr(lower(session_id), lower(?)) > 0 OR EXISTS (SELECT 1 FROM "
                    "json_each(models) WHERE instr(lower(value), lower(?)) > 0)")
            params += [search, search]
            if match:
                text += " OR " + match[0]
                params += match[1]
            clauses.append(f"({text})")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @property
    def fulltext(self) -> bool:
        """Whether this store's index searches conversation text (FTS5 present)."""
        try:
            return fulltext.present(self.db)
        except sqlite3.Error:
            return False

    def models_like(self, wanted: str) -> list[str]:
        """The model names in the store that :func:`model_family` matches to ``wanted``."""
        names = [r[0] for r in self.db.execute("SELECT DISTINCT model FROM usage "
                                                "WHERE model IS NOT NULL")]
        return [n for n in names if model_family(n, wanted)]

    def find(self, session_id: str) -> dict | None:
        """The summary of one session by its id (the unsessioned bucket by its label)."""
        if session_id == UNSESSIONED_ID:
            names = [UNSESSIONED_FILE, file_name_for(session_id)]
        else:
            names = [file_name_for(session_id)]
        for name in names:
            row = self.db.execute(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions "
                                  "WHERE file = ?", (name,)).fetchone()
            if row is not None:
                return _session_dict(row)
        return None

    def load_session(self, session_id: str) -> dict | None:
        """One whole session document, read from its one file (never a path built from
        anything but the sanitised name)."""
        summary = self.find(session_id)
        names = [summary["file"]] if summary else [file_name_for(session_id)]
        for name in names:
            if not is_session_file(name) or os.sep in name or name != os.path.basename(name):
                continue
            path = self.directory / name
            try:
                doc = read_document(path)
            except FileNotFoundError:
                if summary is not None:   # indexed, then deleted or moved by hand
                    raise UnreadableSession(session_id, path, "it is missing (deleted or "
                                            "moved after it was indexed)") from None
                continue
            except (OSError, ValueError) as e:
                # The file this id maps to is there but damaged: say so, naming it (its
                # id cannot be checked, but the name is this id's by construction).
                raise UnreadableSession(session_id, path, unreadable_reason(e)) from None
            if doc.get("session_id") == session_id:
                return doc
            if name == file_name_for(session_id):
                # Two ids never share a file name: this one's file holding another id
                # was damaged or edited (not "no such session").
                raise UnreadableSession(session_id, path, "it holds another session id "
                                        f"({doc.get('session_id')!r})")
        return None

    def close_matches(self, session_id: str, n: int = 5) -> list[str]:
        needle = sql_text(session_id).lower()
        ids = [r[0] for r in self.db.execute(
            "SELECT session_id FROM sessions WHERE instr(lower(session_id), ?) > 0 "
            "ORDER BY updated_at DESC LIMIT ?", (needle[:40], n))]
        if len(ids) < n:
            recent = [r[0] for r in self.db.execute(
                "SELECT session_id FROM sessions ORDER BY updated_at DESC LIMIT 5000")]
            for match in difflib.get_close_matches(session_id, recent, n=n, cutoff=0.6):
                if match not in ids:
                    ids.append(match)
        return ids[:n]

    # -- aggregates ----------------------------------------------------------------

    def aggregate(self, by: str, *, tz: tzinfo = timezone.utc, since: str | None = None,
                  until: str | None = None) -> list[dict]:
        """Usage summed per ``by`` (model, day, consumer or session), each round under its
        own model, day (of its own timestamp in ``tz``) and consumer.

        Rows carry: key, sessions, rounds, input, output, reasoning, cached,
        cache_write, b_<bucket> sums, cost (priced rounds), unpriced_rounds,
        tool_calls, and for days the models used.
        """
        if by not in GROUPS:
            raise ValueError(f"unknown grouping {by!r}")
        if by == "day":
            return _by_day_bounds(self, tz, since, until)
        if by in ("model", "consumer") and not since and not until:
            return _whole_store_by(self, by)
        if by in KEY_GROUPS and not since and not until:
            return _whole_store_by_key(self, by)
        src, params = window.source(since, until)
        key = {"model": "u.model", "consumer": "u.consumer", "session": "s.file",
               "agent": "s.agent", "channel": "s.channel", "kind": "s.kind"}[by]
        sums = ", ".join(f"SUM(u.{c})" for c in SUMS)
        # The part of each group spent in sub-agent sessions (by their own key).
        sub = (", SUM(CASE WHEN s.kind = 'subagent' THEN u.cost ELSE 0 END), "
               "SUM(CASE WHEN s.kind = 'subagent' THEN u.rounds ELSE 0 END), "
               "COUNT(DISTINCT CASE WHEN s.kind = 'subagent' THEN u.sid END)"
               if by in KEY_GROUPS else "")
        sql = (f"SELECT {key}, COUNT(DISTINCT u.sid), {sums}{sub} FROM {src} u "
               f"JOIN sessions s ON s.sid = u.sid "
               f"GROUP BY {key} ORDER BY SUM(u.cost) DESC, {key}")
        rows = []
        for r in self.db.execute(sql, params):
            row = {"key": r[0], "sessions": r[1], **dict(zip(SUMS, r[2:2 + len(SUMS)]))}
            if by in KEY_GROUPS:
                _subagent_part(row, r[2 + len(SUMS):])
            rows.append(_priced_or_none(row))
        return rows

    def scan_models_and_consumers(self) -> None:
        """Sum the whole store per (model, consumer) once, so that ``aggregate("model")``
        and ``aggregate("consumer")`` (the overview shows both) fold those few rows
        instead of scanning every usage row twice. Kept for this reader's lifetime (a
        request or a command)."""
        sums = ", ".join(f"SUM({c})" for c in SUMS)
        self._model_consumer = {(r[0], r[1]): r[2:] for r in self.db.execute(
            f"SELECT model, consumer, {sums} FROM usage GROUP BY model, consumer")}

    def totals(self, since: str | None = None, until: str | None = None) -> dict:
        """Totals of the rounds in [since, until), each session counted once."""
        return range_totals(self, since, until)

    def unpriced_models(self) -> list[tuple[str, int]]:
        return [(m or "(no model)", n) for m, n in self.db.execute(
            "SELECT model, SUM(unpriced_rounds) FROM usage WHERE unpriced_rounds > 0 "
            "GROUP BY model ORDER BY 2 DESC, 1")]


def _session_dict(row: tuple) -> dict:
    d = dict(zip(SESSION_COLUMNS, row))
    d["models"] = json.loads(d["models"])
    d["consumers"] = json.loads(d["consumers"])
    d["unsessioned"] = bool(d["unsessioned"])
    return d


def _memory_index(directory: Path, progress: bool | None,
                  skipped: list[tuple[str, str]] | None = None) -> sqlite3.Connection:
    """Index the session files into memory (a store without an index file); the files
    that cannot be read are added to ``skipped`` as (name, why)."""
    names = [n for n in os.listdir(directory) if is_session_file(n)]
    show = sys.stderr.isatty() if progress is None else progress
    db = sqlite3.connect(":memory:", check_same_thread=False)
    create_schema(db)
    for i, name in enumerate(names, 1):
        entry = load_entry(directory, name, skipped)
        if entry is not None:
            replace_rows(db, [entry])
        if show and (i % 500 == 0 or i == len(names)):
            sys.stderr.write(f"\rindexing {i:,}/{len(names):,} session files (no index yet; "
                             "main.py keeps one)")
            if i == len(names):
                sys.stderr.write("\n")
    replace_rows(db, pruned_rows(directory))   # pruned sessions' totals (retention.py)
    db.execute("INSERT INTO meta VALUES ('complete', '1')")
    return db


# The suffixes a provider adds to a model's name for a snapshot of it: a date
# (2024-07-18, 20250514, 0613), "latest", or Vertex's "@20240620".
_SNAPSHOT = re.compile(r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)|@\d{8}|@latest)")


def model_family(name: str, wanted: str) -> bool:
    """Whether the model ``name`` is ``wanted`` or a dated snapshot of it, case apart, with
    or without a provider prefix: ``gpt-4o-mini`` matches ``gpt-4o-mini-2024-07-18`` and
    ``openai/gpt-4o-mini``; ``claude-sonnet-4`` matches ``claude-sonnet-4-20250514``. A
    different model sharing a prefix does not: ``gpt-4o`` never matches ``gpt-4o-mini``
    and ``claude-sonnet-4`` never ``claude-sonnet-4-5``."""
    name, wanted = name.lower(), wanted.strip().lower()
    if "/" in name and "/" not in wanted:
        name = name.split("/", 1)[1]
    if name == wanted:
        return True
    return name.startswith(wanted) and _SNAPSHOT.fullmatch(name[len(wanted):]) is not None
