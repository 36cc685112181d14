"""Burn rates: how fast tokens and dollars are going now, per active session and for the
day, with a projection to the end of the day. Answered from the index (the usage rows'
quarter-hour buckets, with their time index), so it is cheap enough for every redraw of
the live view and every overview request. Windows are exact (``window.py``): the recent
window is the last ``window_minutes`` up to ``now``, today is local midnight to ``now``.

Times are event times (the log's start_time), compared with the wall clock: the rates
of a log replayed from last month are zero unless ``now`` says otherwise (``cli.py burn
--at``).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone, tzinfo

from ..fmt import fmt_int, fmt_usd, safe_text, shorten
from . import window
from .timerange import day_window

TOKENS = "input + output"   # total (tokens.py): the index's normalised columns
WINDOW_MINUTES = 60
ACTIVE_MINUTES = 15


def stamp(moment: datetime) -> str:
    """A moment as the store writes times (UTC, milliseconds, Z)."""
    return window.stamp(moment)


def _sums(db: sqlite3.Connection, since: str, until: str) -> dict:
    src, params = window.source(since, until)
    row = db.execute(f"SELECT COALESCE(SUM({TOKENS}), 0), COALESCE(SUM(cost), 0), "
                     f"COALESCE(SUM(rounds), 0), COALESCE(SUM(unpriced_rounds), 0) "
                     f"FROM {src}", params).fetchone()
    return {"tokens": row[0], "cost_usd": row[1], "rounds": row[2], "unpriced_rounds": row[3]}


def burn(db: sqlite3.Connection, *, now: datetime | None = None, tz: tzinfo = timezone.utc,
         window_minutes: int = WINDOW_MINUTES, active_minutes: int = ACTIVE_MINUTES,
         limit: int = 10, latest_if_idle: bool = False) -> dict:
    """Recent rate, today so far and projected, and the active sessions' own rates.

    ``now`` defaults to the wall clock; with ``latest_if_idle``, a store with no round
    today answers as of its latest round (``note`` says so). Costs count priced rounds only; tokens count
    every round (``unpriced_rounds`` says how many could not be priced)."""
    if now is None and latest_if_idle:
        data = burn(db, tz=tz, window_minutes=window_minutes, active_minutes=active_minutes,
                    limit=limit)
        if data["recent"]["rounds"] or data["today"]["rounds"]:
            return data
        latest = db.execute("SELECT MAX(ts) FROM round_usage").fetchone()[0]
        if latest is None or latest >= data["at"]:
            return data
        # Nothing today (a replayed log, the bundled example): the rates as of the latest
        # round instead of a row of zeros, and say so.
        data = burn(db, now=window.parse_stamp(latest), tz=tz, window_minutes=window_minutes,
                    active_minutes=active_minutes, limit=limit)
        data["note"] = (f"nothing today: rates as of the latest round "
                        f"({latest[:16].replace('T', ' ')} UTC)")
        return data
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    # [start, end): every round up to and including ``now`` (times have milliseconds).
    start, end = stamp(now - timedelta(minutes=window_minutes)), stamp(now + timedelta(milliseconds=1))
    minutes = float(window_minutes)
    recent = _sums(db, start, end)
    recent.update(_rates(recent, minutes), minutes=round(minutes, 1))

    day = now.astimezone(tz).date()
    _, _, since, until = day_window(1, tz, day)
    today = _sums(db, since, min(until, end))
    day_start = datetime.fromisoformat(since.replace("Z", "+00:00"))
    day_end = datetime.fromisoformat(until.replace("Z", "+00:00"))
    elapsed = max((now - day_start).total_seconds() / 3600, 1 / 60)
    remaining = max((day_end - now).total_seconds() / 3600, 0.0)
    today.update(
        day=day.isoformat(), time_zone=str(tz), elapsed_hours=round(elapsed, 2),
        remaining_hours=round(remaining, 2),
        # At the recent rate: what the day ends at if the last hour's pace goes on.
        projected_cost_usd=today["cost_usd"] + recent["usd_per_hour"] * remaining,
        projected_tokens=round(today["tokens"] + recent["tokens_per_min"] * 60 * remaining),
        # At the day's average pace so far: steadier, slower to react.
        average_projection_usd=today["cost_usd"] / elapsed * (elapsed + remaining))

    sessions = _active(db, now, active_minutes, start, end, minutes)
    return {"at": stamp(now), "window_minutes": window_minutes, "active_minutes": active_minutes,
            "recent": recent, "today": today, "active_count": len(sessions),
            "active_sessions": sessions[:limit], "note": None}


def _rates(sums: dict, minutes: float) -> dict:
    return {"tokens_per_min": sums["tokens"] / minutes,
            "usd_per_hour": sums["cost_usd"] / minutes * 60}


def _active(db: sqlite3.Connection, now: datetime, active_minutes: int, start: str,
            end: str, minutes: float) -> list[dict]:
    """Sessions with a round in the last ``active_minutes``, fastest spender first; each
    rate is over the window, or since the session began if that is later."""
    rows = db.execute("SELECT sid, session_id, model, created_at, updated_at FROM sessions "
                      "WHERE updated_at >= ? AND updated_at <= ?",
                      (stamp(now - timedelta(minutes=active_minutes)), stamp(now))).fetchall()
    if not rows:
        return []
    sums = {}
    for i in range(0, len(rows), 500):   # SQLite's parameter limit
        chunk = [r[0] for r in rows[i:i + 500]]
        marks = ",".join("?" * len(chunk))
        src, params = window.source(start, end)
        for sid, tokens, cost, rounds, unpriced in db.execute(
                f"SELECT sid, SUM({TOKENS}), SUM(cost), SUM(rounds), SUM(unpriced_rounds) "
                f"FROM {src} WHERE sid IN ({marks}) GROUP BY sid", [*params, *chunk]):
            sums[sid] = {"tokens": tokens, "cost_usd": cost, "rounds": rounds,
                         "unpriced_rounds": unpriced}
    found = []
    for sid, session_id, model, created_at, updated_at in rows:
        s = sums.get(sid)
        if s is None:
            continue
        span = minutes
        try:
            began = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
            span = min(minutes, max((now - began).total_seconds() / 60, 1.0))
        except (AttributeError, ValueError):
            pass
        found.append({"session_id": session_id, "model": model, "updated_at": updated_at,
                      **s, **_rates(s, span)})
    found.sort(key=lambda r: (-r["usd_per_hour"], -r["tokens_per_min"], r["session_id"]))
    return found


def burn_line(data: dict) -> str:
    """One line for the live view and summaries."""
    recent, today = data["recent"], data["today"]
    return (f"Burn: {fmt_int(round(recent['tokens_per_min']))} tokens/min, "
            f"{fmt_usd(recent['usd_per_hour'])}/hour (last {data['window_minutes']} min); "
            f"today {fmt_usd(today['cost_usd'])}, projected {fmt_usd(today['projected_cost_usd'])} "
            f"by midnight {today['time_zone']}; {fmt_int(data['active_count'])} active "
            f"session{'s' if data['active_count'] != 1 else ''}")


def top_line(data: dict, width: int = 40) -> str:
    """The fastest active session, for the live view ('' when none)."""
    if not data["active_sessions"]:
        return ""
    s = data["active_sessions"][0]
    return (f"Fastest: {shorten(safe_text(s['session_id']), width)} "
            f"{fmt_usd(s['usd_per_hour'])}/hour, {fmt_int(round(s['tokens_per_min']))} tokens/min")
