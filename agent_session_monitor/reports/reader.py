"""Reading the store for reports: the CLI and the web UI both answer from here.

Summaries and aggregates come from the derived index (never from every conversation);
one session's conversation comes from its one file. One aggregator serves every
grouping (model, day, consumer, session), the key being a parameter.
"""

from __future__ import annotations

import difflib
import re
import json
import math
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path

from ..errors import MonitorError
from ..store.durable import refuse_symlink
from ..fmt import plural
from ..store.index import (
    INDEX_NAME, INDEX_VERSION, SESSION_FIELDS, sql_text, connect, create_schema, delete_rows,
    load_entry, replace_rows,
)
from ..store.pruned_archive import LABEL_PREFIX, index_rows as pruned_rows
from ..store.names import UNSESSIONED_FILE, UNSESSIONED_ID, file_name_for, is_session_file
from ..session_keys import parse_session_key
from ..store.sessions import UnreadableSession, read_document, unreadable_reason
from ..store.subagents import resolve_parents, rollups
from ..store import fulltext
from . import window
from .timerange import day_window, local_midnight_utc

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
class StoreReader:
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
            match = fulltext.query(search) if self.fulltext else None
            # Each model name, not the JSON text of the list: a '"' or ',' would match
            # every session, and a non-ASCII name is stored there as \u escapes.
            text = ("instr(lower(session_id), lower(?)) > 0 OR EXISTS (SELECT 1 FROM "
                    "json_each(models) WHERE instr(lower(value), lower(?)) > 0)")
            params += [search, search]
            if match:
                text += f" OR sid IN (SELECT rowid FROM {fulltext.TABLE} WHERE {fulltext.TABLE} MATCH ?)"
                params.append(match)
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
                row.update(zip(("subagent_cost", "subagent_rounds", "subagent_sessions"),
                               r[2 + len(SUMS):]))
                if not row["subagent_rounds"]:
                    row["subagent_cost"] = 0.0
            rows.append(_priced_or_none(row))
        return rows

    # -- sub-agents ------------------------------------------------------------------

    def parent_links(self) -> dict[str, str]:
        """{child session id: parent session id}, resolved from every claim in the
        store (subagents.resolve_parents: first claim by event time, no cycles)."""
        if self._links is None:
            self._links = resolve_parents(self.db.execute(
                "SELECT s.session_id, p.child, p.claimed_at FROM spawns p "
                "JOIN sessions s ON s.sid = p.sid WHERE s.unsessioned = 0"))
        return self._links

    def _own(self, session_ids: list[str], since: str | None = None,
             until: str | None = None) -> dict[str, tuple]:
        """session id -> (own cost, rounds, unpriced rounds), of rounds in [since, until)."""
        found: dict[str, tuple] = {}
        src, params = window.source(since, until)
        for i in range(0, len(session_ids), 500):
            chunk = session_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for sid, cost, rounds, unpriced in self.db.execute(
                    f"SELECT s.session_id, SUM(u.cost), SUM(u.rounds), SUM(u.unpriced_rounds) "
                    f"FROM sessions s JOIN {src} u ON u.sid = s.sid WHERE s.unsessioned = 0 "
                    f"AND s.session_id IN ({marks}) GROUP BY s.session_id",
                    [*params, *chunk]):
                found[sid] = (None if rounds and unpriced == rounds else cost, rounds, unpriced)
        return found

    def rollup(self, session_id: str) -> dict | None:
        """One session's own cost, its parent, its children (each with own and rolled-up
        cost) and its cost with every descendant sub-agent; None when the session has no
        round in the store."""
        links = self.parent_links()
        tree = {session_id} | _descendants(links, session_id)
        own = self._own(sorted(tree))
        if session_id not in own:
            return None
        rolled = rollups(own, {c: p for c, p in links.items() if c in tree})
        mine = rolled[session_id]
        children = []
        for child in sorted((c for c, p in links.items() if p == session_id),
                            key=lambda c: (own.get(c, (None,))[0] is None, -(own.get(c, (0,))[0] or 0), c)):
            r = rolled.get(child)
            key = parse_session_key(child)
            children.append({"session_id": child, "agent": key.agent, "kind": key.kind,
                             "in_store": r is not None,
                             "cost_usd": _usd(r.cost) if r else None, "rounds": r.rounds if r else 0,
                             "unpriced_rounds": r.unpriced_rounds if r else 0,
                             "cost_with_subagents_usd": _usd(r.cost_with_subagents) if r else None,
                             "subagents": r.descendants if r else 0})
        return {"session_id": session_id, "parent": links.get(session_id),
                "cost_usd": _usd(mine.cost), "rounds": mine.rounds,
                "unpriced_rounds": mine.unpriced_rounds,
                "cost_with_subagents_usd": _usd(mine.cost_with_subagents),
                "rounds_with_subagents": mine.rounds_with_subagents,
                "unpriced_rounds_with_subagents": mine.unpriced_with_subagents,
                "subagents": mine.descendants, "children": children}

    def costs_with_subagents(self) -> dict[str, tuple]:
        """session id -> (cost with sub-agents, rounds with sub-agents) of every session
        that has descendants in the store (the others': their own)."""
        links = self.parent_links()
        if not links:
            return {}
        members = sorted(set(links) | set(links.values()))
        own = self._own(members)
        rolled = rollups(own, links)
        return {sid: (_usd(r.cost_with_subagents), r.rounds_with_subagents)
                for sid, r in rolled.items() if r.descendants}

    def spawned_by(self, by: str, since: str | None = None,
                   until: str | None = None) -> dict:
        """Per group of ``by`` (agent, channel or kind of the *root* session, the one
        that spawned the tree): (cost, rounds, sessions) of its linked descendant
        sub-agents' rounds in [since, until) that are not in that group already (a
        sub-agent of agent main is agent main's own). A view next to the groups' own
        figures, never added into them."""
        links = self.parent_links()
        if not links:
            return {}
        roots: dict[str, str] = {}
        for child in links:
            node, seen = child, set()
            while node in links and node not in seen:
                seen.add(node)
                node = links[node]
            roots[child] = node
        own = self._own(sorted(links), since, until)
        groups = {}
        column = {"agent": "agent", "channel": "channel", "kind": "kind"}[by]
        root_ids = sorted(set(roots.values()) | set(links))
        group_of: dict[str, object] = {}
        for i in range(0, len(root_ids), 500):
            chunk = root_ids[i:i + 500]
            for sid, value in self.db.execute(
                    f"SELECT session_id, {column} FROM sessions WHERE unsessioned = 0 AND "
                    f"session_id IN ({','.join('?' * len(chunk))})", chunk):
                group_of[sid] = value
        for child, (cost, rounds, unpriced) in own.items():
            root = roots[child]
            if root not in group_of or group_of.get(child) == group_of[root]:
                # The spawning session is not in the store, or the sub-agent counts in
                # the same group already (agent main's own sub-agents are agent main's).
                continue
            acc = groups.setdefault(group_of[root], [[], 0, 0, 0])
            if cost is not None:
                acc[0].append(cost)
            acc[1] += rounds
            acc[2] += unpriced
            acc[3] += 1
        return {k: {"cost": _usd(math.fsum(v[0])) if v[0] else (None if v[2] else 0.0),
                    "rounds": v[1], "unpriced_rounds": v[2], "sessions": v[3]}
                for k, v in groups.items()}

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


def _usd(cost: float | None) -> float | None:
    """A sum of costs as reports show them (see _priced_or_none: picodollars)."""
    return None if cost is None else round(cost, 12)


def _descendants(links: dict[str, str], session_id: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for c, p in links.items():
        children.setdefault(p, []).append(c)
    found: set[str] = set()
    stack = list(children.get(session_id, ()))
    while stack:
        node = stack.pop()
        if node not in found and node != session_id:
            found.add(node)
            stack.extend(children.get(node, ()))
    return found


def _priced_or_none(row: dict) -> dict:
    """A group whose every round is unpriced costs "unknown" (None), never $0."""
    if row["rounds"] and row["unpriced_rounds"] == row["rounds"]:
        row["cost"] = None
    elif row.get("cost") is not None:
        # Sums of float costs differ in the 17th digit with the order of addition (SQL
        # groups, days): a picodollar is far below any price, and reports stay stable.
        row["cost"] = round(row["cost"], 12)
    return row


def day_range(rows: list[dict], days: int, tz: tzinfo, today: date | None = None) -> list[dict]:
    """The last ``days`` days ending today (in ``tz``), days without traffic as zero rows."""
    today = today or datetime.now(tz).date()
    by_key = {r["key"]: r for r in rows}
    result = []
    for i in range(days - 1, -1, -1):
        day = (today - timedelta(days=i)).isoformat()
        result.append(by_key.get(day) or {"key": day, "sessions": 0, "models": [],
                                          **{c: 0 for c in SUMS}})
    return result


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


# -- report rows shared by the CLI, the export and the web API ------------------------

# Aggregate row field -> its name in machine output (explicit units, stable once released).
USAGE_FIELDS = (("sessions", "sessions"), ("rounds", "rounds"), ("input", "input_tokens"),
                ("output", "output_tokens"), ("reasoning", "reasoning_tokens"),
                ("cached", "cached_tokens"), ("cache_write", "cache_write_tokens"),
                ("cost", "cost_usd"), ("unpriced_rounds", "unpriced_rounds"),
                ("tool_calls", "tool_call_rounds"))


def usage_record(row: dict, key_name: str) -> dict:
    """An :meth:`StoreReader.aggregate` row (or totals) with explicit field names;
    ``cost_usd`` stays None when every round of the group is unpriced."""
    record = {key_name: row["key"]} if key_name else {}
    for field, name in USAGE_FIELDS:
        record[name] = row.get(field, 0) if field != "cost" else row.get("cost")
        if field == "cache_write":   # the normalised columns (tokens.py) end with the total
            record["total_tokens"] = (row.get("input") or 0) + (row.get("output") or 0)
    if "models" in row:
        record["models"] = row["models"]
    return record


def range_totals(reader: StoreReader, since: str | None = None, until: str | None = None) -> dict:
    """Totals of the rounds in [since, until) (stored-time strings; None = open), each
    session counted once however many models, days or consumers it spans. Without a
    range they come from the sessions table, which has no ``b_*`` bucket sums."""
    if since is None and until is None:
        # One row per session instead of every usage row.
        sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in _SESSION_SUMS)
        r = reader.db.execute(f"SELECT COUNT(*), {sums} FROM sessions").fetchone()
        return _priced_or_none({"sessions": r[0], **dict(zip(_SESSION_SUMS, r[1:]))})
    src, params = window.source(since, until)
    sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in SUMS)
    r = reader.db.execute(f"SELECT COUNT(DISTINCT sid), {sums} FROM {src}", params).fetchone()
    return _priced_or_none({"sessions": r[0], **dict(zip(SUMS, r[1:]))})


def unpriced_of_days(rows: list[dict]) -> list[tuple[str, int]]:
    """:func:`unpriced_between` from day rows (``aggregate("day")``), without a scan."""
    found: dict[str, int] = {}
    for row in rows:
        for model, n in (row.get("unpriced_by_model") or {}).items():
            found[model] = found.get(model, 0) + n
    return sorted(found.items(), key=lambda mn: (-mn[1], mn[0]))


def totals_of(reader: StoreReader, rows: list[dict], since: str | None,
              until: str | None) -> dict:
    """The totals of [since, until) from its rows grouped by model or by day (each round
    is in exactly one of them): their sums added up, and the sessions counted once from
    the bucket index alone. Saves a second scan of the window's usage rows."""
    if not rows:
        return range_totals(reader, since, until)
    totals = {c: sum(r[c] or 0 for r in rows) for c in SUMS if c != "cost"}
    totals["cost"] = math.fsum(r["cost"] or 0.0 for r in rows)
    src, params = window.source(since, until, columns="sid")
    totals["sessions"] = reader.db.execute(f"SELECT COUNT(DISTINCT sid) FROM {src}",
                                           params).fetchone()[0]
    return _priced_or_none(totals)


# Sums the sessions table also holds (it has no per-bucket token split).
_SESSION_SUMS = ("rounds", "input", "output", "reasoning", "cached", "cache_write", "cost",
                 "unpriced_rounds", "tool_calls")


def _whole_store_by(reader: StoreReader, by: str) -> list[dict]:
    """Model or consumer rows over the whole store in two cheap passes: the sums grouped
    in SQL, and the sessions counted from each session's short list of models or
    consumers (a COUNT(DISTINCT) over every usage row takes seconds at 100,000 sessions)."""
    rows: dict = {}
    cost_at = SUMS.index("cost")
    if reader._model_consumer is not None:   # both groupings wanted: one scan serves them
        groups = ((mc[0] if by == "model" else mc[1], sums)
                  for mc, sums in reader._model_consumer.items())
    else:
        columns = ", ".join(f"SUM({c})" for c in SUMS)
        groups = ((r[0], r[1:]) for r in reader.db.execute(
            f"SELECT {by}, {columns} FROM usage GROUP BY {by}"))
    for key, sums in groups:
        acc = rows.get(key)
        if acc is None:
            acc = rows[key] = {"key": key, **{c: 0 for c in SUMS}, "costs": []}
        for c, v in zip(SUMS, sums):
            acc[c] += v
        acc["costs"].append(sums[cost_at])
    for acc in rows.values():
        acc["cost"] = math.fsum(acc.pop("costs"))   # money: independent of group order
    for key, count in _sessions_per(reader, by, None in rows):
        if key in rows:
            rows[key]["sessions"] = count
    ordered = sorted(rows.values(), key=lambda r: (-r["cost"], r["key"] is not None, r["key"] or ""))
    return [_priced_or_none({"key": r["key"], "sessions": r.get("sessions", 0),
                             **{c: r[c] for c in SUMS}}) for r in ordered]


def _whole_store_by_key(reader: StoreReader, by: str) -> list[dict]:
    """Agent, channel or kind rows over the whole store from the sessions table (one
    row per session, its key's parts in columns) instead of every usage row: the same
    sums, read once per session. No per-bucket (b_*) sums: the sessions table has none."""
    sums = [c for c in _SESSION_SUMS]
    sub = "CASE WHEN kind = 'subagent' THEN {} ELSE 0 END"
    sql = (f"SELECT {by}, COUNT(*), {', '.join(f'SUM({c})' for c in sums)}, "
           f"SUM({sub.format('COALESCE(cost, 0)')}), SUM({sub.format('rounds')}), "
           f"SUM({sub.format('1')}) FROM sessions GROUP BY {by}")
    rows = []
    for r in reader.db.execute(sql):
        row = {"key": r[0], "sessions": r[1], **dict(zip(sums, r[2:2 + len(sums)]))}
        row["cost"] = row["cost"] or 0.0
        row.update(zip(("subagent_cost", "subagent_rounds", "subagent_sessions"),
                       r[2 + len(sums):]))
        if not row["subagent_rounds"]:
            row["subagent_cost"] = 0.0
        rows.append(row)
    rows.sort(key=lambda r: (-r["cost"], r["key"] is not None, r["key"] or ""))
    return [_priced_or_none(r) for r in rows]


def _sessions_per(reader: StoreReader, by: str, null_key: bool) -> list[tuple]:
    """(key, number of sessions) per model or consumer, over the whole store."""
    column = {"model": "models", "consumer": "consumers"}[by]
    try:
        # Each session lists its models and consumers: short JSON arrays read instead
        # of a COUNT(DISTINCT sid) sort over every usage row.
        counts = reader.db.execute(f"SELECT value, COUNT(*) FROM sessions, "
                                   f"json_each(sessions.{column}) GROUP BY value").fetchall()
    except sqlite3.OperationalError:   # an SQLite built without JSON functions
        return reader.db.execute(f"SELECT {by}, COUNT(DISTINCT sid) FROM usage "
                                 f"GROUP BY {by}").fetchall()
    if null_key:   # rounds without a model (or consumer) are not in those lists
        counts.append((None, reader.db.execute(f"SELECT COUNT(DISTINCT sid) FROM usage "
                                               f"WHERE {by} IS NULL").fetchone()[0]))
    return counts


def _by_day_bounds(reader: StoreReader, tz: tzinfo, since: str | None,
                   until: str | None) -> list[dict]:
    """Rows per local day of ``tz``: the window's sums grouped per quarter-hour (or edge
    round) and model in SQL (a few thousand rows a month), each put on its local day
    here; a quarter-hour holding a local midnight (an offset such as -09:04) is read
    round by round; and the sessions of each day counted over that day's exact bounds."""
    src, params = window.source(since, until)
    sums = ", ".join(f"SUM({c})" for c in SUMS)
    rows = reader.db.execute(f"SELECT at, model, {sums} FROM {src} GROUP BY at, model",
                             params).fetchall()
    split = sorted({r[0] for r in rows if len(r[0]) == 16 and window.straddles(r[0], tz)})
    if split:
        rows = [r for r in rows if r[0] not in split]
        for bucket in split:   # wholly inside the window: usage rows exist only for those
            rows += reader.db.execute(f"SELECT ts, model, {', '.join(SUMS)} FROM round_usage "
                                      "WHERE bucket = ?", (bucket,)).fetchall()
    days: dict[date, dict] = {}
    day_of: dict[str, date] = {}
    cost_at = 2 + SUMS.index("cost")
    unpriced_at = 2 + SUMS.index("unpriced_rounds")
    for r in rows:
        day = day_of.get(r[0])
        if day is None:
            day = day_of[r[0]] = window.local_date(r[0], tz)
        acc = days.get(day)
        if acc is None:
            acc = days[day] = {"key": day.isoformat(), **{c: 0 for c in SUMS}, "models": {},
                               "costs": [], "unpriced_by_model": {}}
        for c, v in zip(SUMS, r[2:]):
            acc[c] += v
        acc["costs"].append(r[cost_at])
        name = r[1] or "(no model)"
        acc["models"][name] = acc["models"].get(name, 0) + r[2]
        if r[unpriced_at]:
            acc["unpriced_by_model"][name] = acc["unpriced_by_model"].get(name, 0) + r[unpriced_at]
    result = []
    for day in sorted(days):
        acc = days[day]
        lo, hi = _day_bounds(day, tz)
        lo = max(lo, since) if since and lo else (lo or since)
        hi = min(hi, until) if until and hi else (hi or until)
        day_src, day_params = window.source(lo, hi, columns="sid")
        acc["sessions"] = reader.db.execute(f"SELECT COUNT(DISTINCT sid) FROM {day_src}",
                                            day_params).fetchone()[0]
        acc["models"] = sorted(acc["models"], key=lambda m: (-acc["models"][m], m))
        acc["cost"] = math.fsum(acc["costs"])   # money: the sum must not depend on order
        result.append(_priced_or_none({"key": acc["key"], "sessions": acc["sessions"],
                                       **{c: acc[c] for c in SUMS}, "models": acc["models"],
                                       "unpriced_by_model": acc["unpriced_by_model"]}))
    return result


def _day_bounds(day: date, tz: tzinfo) -> tuple[str | None, str | None]:
    """A local day's UTC bounds as stored-time strings (None where the calendar ends)."""
    try:
        lo = local_midnight_utc(day, tz)
    except (OverflowError, ValueError):
        lo = None
    try:
        hi = local_midnight_utc(day + timedelta(days=1), tz)
    except (OverflowError, ValueError):
        hi = None
    return lo, hi


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


def latest_round(reader: StoreReader) -> str | None:
    """The time of the newest round in the store (None when it is empty)."""
    return reader.db.execute("SELECT MAX(ts) FROM round_usage").fetchone()[0]


def has_rounds(reader: StoreReader, since: str | None, until: str | None) -> bool:
    src, params = window.source(since, until)
    return reader.db.execute(f"SELECT 1 FROM {src} LIMIT 1", params).fetchone() is not None


def recent_days(reader: StoreReader, days: int, tz: tzinfo,
                end: date | None = None) -> tuple[date, date, str, str, str]:
    """The ``days`` days ending ``end`` (default today in ``tz``): first and last day,
    their UTC bounds, and a note. Without ``end``, a window holding no round while the
    store has older ones (a log replayed from last month, the bundled example) ends on
    the day of the latest round instead, and the note says so; else the note is ''."""
    first, last, since, until = day_window(days, tz, end)
    if end is None:
        latest = latest_round(reader)
        if latest is not None and latest < since and not has_rounds(reader, since, until):
            shown = last
            first, last, since, until = day_window(days, tz, window.local_date(latest, tz))
            return first, last, since, until, (
                f"no rounds in the {plural(days, 'day')} to {shown}: showing the "
                f"{plural(days, 'day')} to the latest round ({latest[:16].replace('T', ' ')} UTC)")
    return first, last, since, until, ""


def unpriced_between(reader: StoreReader, since: str | None = None,
                     until: str | None = None) -> list[tuple[str, int]]:
    """Like :meth:`StoreReader.unpriced_models`, for the rounds in [since, until)."""
    src, params = window.source(since, until)
    return [(m or "(no model)", n) for m, n in reader.db.execute(
        f"SELECT model, SUM(unpriced_rounds) FROM {src} WHERE unpriced_rounds > 0 "
        "GROUP BY model ORDER BY 2 DESC, 1", params)]


def session_record(summary: dict) -> dict:
    """A :meth:`StoreReader.sessions` row with explicit field names (machine output)."""
    return {"session_id": summary["session_id"], "created_at": summary["created_at"],
            "updated_at": summary["updated_at"], "model": summary["model"],
            "models": summary["models"], "consumers": summary["consumers"],
            "rounds": summary["rounds"], "input_tokens": summary["input"],
            "output_tokens": summary["output"], "reasoning_tokens": summary["reasoning"],
            "cached_tokens": summary["cached"], "cache_write_tokens": summary["cache_write"],
            "total_tokens": (summary["input"] or 0) + (summary["output"] or 0),
            "cost_usd": summary["cost"], "unpriced_rounds": summary["unpriced_rounds"],
            "tool_call_rounds": summary["tool_calls"], "agent": summary.get("agent"),
            "channel": summary.get("channel"), "kind": summary.get("kind"),
            **({"cost_with_subagents_usd": summary["cost_with_subagents"]}
               if "cost_with_subagents" in summary else {})}


def key_group_rows(reader: StoreReader, by: str, since: str | None = None,
                   until: str | None = None) -> list[dict]:
    """:meth:`StoreReader.aggregate` rows per agent, channel or kind (of each session's
    own key: every round counted once, under its own session), each with two views of
    sub-agents:

    - ``subagent_cost`` / ``subagent_rounds`` / ``subagent_sessions``: the part of the
      row spent in sessions whose key is a sub-agent's (part of the row's cost);
    - ``spawned_cost`` / ``spawned_rounds`` / ``spawned_sessions``: what the sub-agent
      trees spawned by this group's sessions spent (linked children, grandchildren...)
      in sessions of another group (a sub-agent names no channel; a spawn can target
      another agent): not part of the row's cost, ``cost_with_subagents`` adds them.
    """
    rows = reader.aggregate(by, since=since, until=until)
    spawned = reader.spawned_by(by, since, until)
    seen = set()
    for row in rows:
        seen.add(row["key"])
        extra = spawned.get(row["key"]) or {"cost": 0.0, "rounds": 0, "unpriced_rounds": 0,
                                            "sessions": 0}
        _add_spawned(row, extra)
    for key, extra in spawned.items():
        if key not in seen:   # the spawning sessions had no round in the range
            row = {"key": key, "sessions": 0, **{c: 0 for c in SUMS}, "cost": 0.0,
                   "subagent_cost": 0.0, "subagent_rounds": 0, "subagent_sessions": 0}
            _add_spawned(row, extra)
            rows.append(row)
    return rows


def _add_spawned(row: dict, extra: dict) -> None:
    row["spawned_cost"] = extra["cost"]
    row["spawned_rounds"] = extra["rounds"]
    row["spawned_sessions"] = extra["sessions"]
    row["spawned_unpriced_rounds"] = extra["unpriced_rounds"]
    costs = [c for c in (row["cost"], extra["cost"]) if c is not None]
    row["cost_with_subagents"] = _usd(math.fsum(costs)) if costs else None


# Extra fields of key_group_rows() -> their names in machine output.
KEY_GROUP_FIELDS = (("subagent_cost", "subagent_cost_usd"), ("subagent_rounds", "subagent_rounds"),
                    ("subagent_sessions", "subagent_sessions"),
                    ("spawned_cost", "spawned_subagent_cost_usd"),
                    ("spawned_rounds", "spawned_subagent_rounds"),
                    ("spawned_sessions", "spawned_subagent_sessions"),
                    ("cost_with_subagents", "cost_with_subagents_usd"))


def key_group_record(row: dict, key_name: str) -> dict:
    """A :func:`key_group_rows` row with explicit field names (machine output)."""
    record = usage_record(row, key_name)
    for field_name, name in KEY_GROUP_FIELDS:
        record[name] = row.get(field_name)
    return record
