"""Reading the store for reports: the CLI and the web UI both answer from here.

Summaries and aggregates come from the derived index (never from every conversation);
one session's conversation comes from its one file. One aggregator serves every
grouping (model, day, consumer, session), the key being a parameter.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sqlite3
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path

from .errors import EXIT_USAGE, MonitorError
from .index import (BUCKET_FIELDS, INDEX_NAME, connect, create_schema, delete_rows, load_entry,
                    quarter_hour, replace_rows)
from .names import UNSESSIONED_FILE, UNSESSIONED_ID, file_name_for, is_session_file
from .store import read_document

SESSION_COLUMNS = ("file", "session_id", "unsessioned", "created_at", "updated_at", "rounds",
                   "input", "output", "reasoning", "cached", "cache_write", "cost",
                   "unpriced_rounds", "model", "models", "consumers", "tool_calls", "size")
SUMS = ("rounds", "input", "output", "reasoning", "cached", "cache_write",
        *(f"b_{f}" for f in BUCKET_FIELDS), "cost", "unpriced_rounds", "tool_calls")
SORTS = {"updated": "updated_at DESC", "cost": "COALESCE(cost, 0) DESC",
         "tokens": "(input + output) DESC", "rounds": "rounds DESC",
         "created": "created_at DESC", "id": "session_id ASC"}
GROUPS = ("model", "day", "consumer", "session")


def parse_tz(text: str | None) -> tzinfo:
    """``UTC``, an IANA name (``Asia/Shanghai``) or a fixed offset (``+08:00``, ``-0530``)."""
    if not text or text.upper() in ("UTC", "Z"):
        return timezone.utc
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", text.strip())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0))
        if delta > timedelta(hours=14):
            raise MonitorError(f"time zone offset {text} is out of range (-14:00..+14:00)", EXIT_USAGE)
        return timezone(sign * delta)
    try:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise MonitorError(f"unknown time zone {text!r}: use UTC, an IANA name such as "
                           "Asia/Shanghai, or an offset such as +08:00", EXIT_USAGE) from None


def parse_since(text: str, tz: tzinfo = timezone.utc, now: datetime | None = None) -> str:
    """``--since``: an ISO date or time, or a duration back from now (``90m``, ``24h``,
    ``7d``). Returns a stored-time string (UTC) to compare with."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        moment = now - timedelta(**{unit: int(m.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise MonitorError(f"cannot read --since {text!r}: use a date (2026-02-01), a time "
                               "(2026-02-01T09:30) or a duration (90m, 24h, 7d)", EXIT_USAGE) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class StoreReader:
    """Read-only view of a session store. Opens the index; if there is none (an old
    store, or it was deleted) builds one in memory from the session files."""

    directory: Path
    db: sqlite3.Connection

    @classmethod
    def open(cls, directory: Path, progress: bool | None = None) -> "StoreReader":
        if not directory.is_dir():
            raise MonitorError(f"no session store at {directory}: run main.py first "
                               "(python3 main.py --log-path ... --output-dir DIR), or point "
                               "--data-dir at it")
        path = directory / INDEX_NAME
        db = None
        if path.exists():
            try:
                db = connect(path, readonly=True)
                complete = db.execute("SELECT value FROM meta WHERE key='complete'").fetchone()
                if not complete:
                    db.close()
                    db = None
            except sqlite3.Error:
                db = None
        reader = cls(directory, db or _memory_index(directory, progress))
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
                             "CREATE TABLE meta AS SELECT * FROM disk.meta;")
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
        where, params = self._filters(model, consumer, since, search)
        sql = (f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions{where} "
               f"ORDER BY {SORTS.get(sort, SORTS['updated'])}, file")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [_session_dict(r) for r in self.db.execute(sql, params)]

    def count_sessions(self, model: str | None = None, consumer: str | None = None,
                       since: str | None = None, search: str | None = None) -> int:
        where, params = self._filters(model, consumer, since, search)
        return self.db.execute(f"SELECT COUNT(*) FROM sessions{where}", params).fetchone()[0]

    @staticmethod
    def _filters(model, consumer, since, search) -> tuple[str, list]:
        clauses, params = [], []
        if model:
            clauses.append("file IN (SELECT file FROM usage WHERE model = ?)")
            params.append(model)
        if consumer:
            clauses.append("file IN (SELECT file FROM usage WHERE consumer = ?)")
            params.append(consumer)
        if since:
            clauses.append("updated_at >= ?")
            params.append(since)
        if search:
            clauses.append("(instr(lower(session_id), lower(?)) > 0 OR instr(lower(models), lower(?)) > 0)")
            params += [search, search]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

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
            try:
                doc = read_document(self.directory / name)
            except (OSError, ValueError):
                continue
            if doc.get("session_id") == session_id:
                return doc
        return None

    def close_matches(self, session_id: str, n: int = 5) -> list[str]:
        needle = session_id.lower()
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
        where, params = [], []
        if since:
            where.append("bucket >= ?")
            params.append(quarter_hour(since))
        if until:
            where.append("bucket < ?")
            params.append(quarter_hour(until))
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        sums = ", ".join(f"SUM({c})" for c in SUMS)
        if by in ("model", "consumer", "session"):
            column = {"model": "model", "consumer": "consumer", "session": "file"}[by]
            sql = (f"SELECT {column}, COUNT(DISTINCT file), {sums} FROM usage{clause} "
                   f"GROUP BY {column} ORDER BY SUM(cost) DESC, {column}")
            return [_priced_or_none({"key": r[0], "sessions": r[1], **dict(zip(SUMS, r[2:]))})
                    for r in self.db.execute(sql, params)]
        return self._by_day(clause, params, tz)

    def _by_day(self, clause: str, params: list, tz: tzinfo) -> list[dict]:
        days: dict[date, dict] = {}
        sql = (f"SELECT bucket, file, model, {', '.join(f'SUM({c})' for c in SUMS)} FROM usage"
               f"{clause} GROUP BY bucket, file, model")
        for r in self.db.execute(sql, params):
            day = local_day(r[0], tz)
            acc = days.get(day)
            if acc is None:
                acc = days[day] = {"key": day.isoformat(), **{c: 0 for c in SUMS},
                                   "files": set(), "models": {}}
            for c, v in zip(SUMS, r[3:]):
                acc[c] += v
            acc["files"].add(r[1])
            acc["models"][r[2] or "(no model)"] = acc["models"].get(r[2] or "(no model)", 0) + r[3]
        rows = []
        for day in sorted(days):
            acc = days[day]
            acc["sessions"] = len(acc.pop("files"))
            acc["models"] = sorted(acc["models"], key=lambda m: -acc["models"][m])
            rows.append(_priced_or_none(acc))
        return rows

    def totals(self) -> dict:
        sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in SUMS)
        r = self.db.execute(f"SELECT COUNT(DISTINCT file), {sums} FROM usage").fetchone()
        return _priced_or_none({
            "sessions": self.db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0],
            **dict(zip(SUMS, r[1:]))})

    def unpriced_models(self) -> list[tuple[str, int]]:
        return [(m or "(no model)", n) for m, n in self.db.execute(
            "SELECT model, SUM(unpriced_rounds) FROM usage WHERE unpriced_rounds > 0 "
            "GROUP BY model ORDER BY 2 DESC, 1")]


def _priced_or_none(row: dict) -> dict:
    """A group whose every round is unpriced costs "unknown" (None), never $0."""
    if row["rounds"] and row["unpriced_rounds"] == row["rounds"]:
        row["cost"] = None
    return row


def local_day(bucket: str, tz: tzinfo) -> date:
    moment = datetime.strptime(bucket, "%Y-%m-%dT%H:%M").replace(tzinfo=timezone.utc)
    return moment.astimezone(tz).date()


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


def _memory_index(directory: Path, progress: bool | None) -> sqlite3.Connection:
    """Index the session files into memory (a store without an index file)."""
    names = [n for n in os.listdir(directory) if is_session_file(n)]
    show = sys.stderr.isatty() if progress is None else progress
    db = sqlite3.connect(":memory:", check_same_thread=False)
    create_schema(db)
    for i, name in enumerate(names, 1):
        entry = load_entry(directory, name)
        if entry is not None:
            replace_rows(db, [entry])
        if show and (i % 500 == 0 or i == len(names)):
            sys.stderr.write(f"\rindexing {i:,}/{len(names):,} session files (no index yet; "
                             "main.py keeps one)")
            if i == len(names):
                sys.stderr.write("\n")
    db.execute("INSERT INTO meta VALUES ('complete', '1')")
    return db
