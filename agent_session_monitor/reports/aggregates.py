"""Sums over the index for reports, beneath StoreReader.aggregate: the whole-store passes
per model, consumer or session key, the per-local-day pass, totals of a window, unpriced
rounds, and which days to show. ``reader`` is a reader.StoreReader (not imported here:
it imports this module); these read only its ``db`` (and the model x consumer sums it
may have scanned).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import date, datetime, timedelta, tzinfo

from ..fmt import plural
from . import window
from .timerange import day_window, local_midnight_utc

SUMS = window.SUMS


def _usd(cost: float | None) -> float | None:
    """A sum of costs as reports show them (see _priced_or_none: picodollars)."""
    return None if cost is None else round(cost, 12)


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
    sums = _SESSION_SUMS
    sub = "CASE WHEN kind = 'subagent' THEN {} ELSE 0 END"
    sql = (f"SELECT {by}, COUNT(*), {', '.join(f'SUM({c})' for c in sums)}, "
           f"SUM({sub.format('COALESCE(cost, 0)')}), SUM({sub.format('rounds')}), "
           f"SUM({sub.format('1')}) FROM sessions GROUP BY {by}")
    rows = []
    for r in reader.db.execute(sql):
        row = {"key": r[0], "sessions": r[1], **dict(zip(sums, r[2:2 + len(sums)]))}
        row["cost"] = row["cost"] or 0.0
        rows.append(_subagent_part(row, r[2 + len(sums):]))
    rows.sort(key=lambda r: (-r["cost"], r["key"] is not None, r["key"] or ""))
    return [_priced_or_none(r) for r in rows]


def _subagent_part(row: dict, values) -> dict:
    """A key group's row with the part of it spent in sub-agent sessions (cost, rounds,
    sessions: the grouping query's last three columns); no such rounds cost $0."""
    row.update(zip(("subagent_cost", "subagent_rounds", "subagent_sessions"), values))
    if not row["subagent_rounds"]:
        row["subagent_cost"] = 0.0
    return row


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
