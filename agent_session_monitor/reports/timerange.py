"""Time zones, ``--since`` and day windows for reports: the store keeps UTC, a report
shows the days of the zone it is asked for."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo

from ..errors import EXIT_USAGE, MonitorError
from ..fmt import plural
from .window import stamp


def parse_tz(text: str | None) -> tzinfo:
    """``UTC``, an IANA name (``Asia/Shanghai``) or a fixed offset (``+08:00``, ``-0530``)."""
    if not text or text.upper() in ("UTC", "Z"):
        return timezone.utc
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", text.strip())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        if int(m.group(3) or 0) > 59:
            raise MonitorError(f"time zone offset {text} has more than 59 minutes", EXIT_USAGE)
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


def duration(text: str) -> timedelta | None:
    """``90m``, ``24h``, ``7d``, ``2w`` as a duration; None for anything else (a date)."""
    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if not m:
        return None
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    try:
        return timedelta(**{unit: int(m.group(1))})
    except OverflowError:
        raise MonitorError(f"--since/--until {text!r} reaches before year 1", EXIT_USAGE) from None


def parse_since(text: str, tz: tzinfo = timezone.utc, now: datetime | None = None) -> str:
    """``--since``: an ISO date or time, or a duration back from now (``90m``, ``24h``,
    ``7d``). Returns a stored-time string (UTC) to compare with."""
    now = now or datetime.now(timezone.utc)
    back = duration(text)
    if back is not None:
        try:
            moment = now - back
        except OverflowError:
            raise MonitorError(f"--since/--until {text!r} reaches before year 1", EXIT_USAGE) from None
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise MonitorError(f"cannot read --since {text!r}: use a date (2026-02-01), a time "
                               "(2026-02-01T09:30) or a duration (90m, 24h, 7d)", EXIT_USAGE) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
    try:
        return stamp(moment)
    except (OverflowError, ValueError):
        raise MonitorError(f"--since/--until {text!r} is outside the calendar (years 1..9999 "
                           "in UTC)", EXIT_USAGE) from None


def day_window(days: int, tz: tzinfo, last_day: date | None = None) -> tuple[date, date, str, str]:
    """The ``days`` days ending ``last_day`` (default today in ``tz``): first and last
    day, and the UTC bounds [since, until) of their local midnights as stored-time
    strings, so that the index is read for that range only."""
    last = last_day or datetime.now(tz).date()
    try:
        first = last - timedelta(days=max(days, 1) - 1)
        return (first, last, local_midnight_utc(first, tz),
                local_midnight_utc(last + timedelta(days=1), tz))
    except (OverflowError, ValueError):
        raise MonitorError(f"{plural(days, 'day')} to {last} in {tz} reach past the calendar (years "
                           "1..9999 in UTC)", EXIT_USAGE) from None


def local_midnight_utc(day: date, tz: tzinfo) -> str:
    return stamp(datetime(day.year, day.month, day.day, tzinfo=tz))
