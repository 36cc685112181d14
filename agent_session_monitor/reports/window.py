"""Exact time windows over the index.

The index sums usage per UTC quarter-hour (cheap to scan) and keeps each round's sums at
its exact time too (``round_usage``). A window [since, until) is answered from the
quarter-hours lying wholly inside it plus, at each edge that is not on a quarter-hour,
the rounds between the edge and the nearest quarter-hour: exact to the millisecond the
log records, and still a scan of pre-aggregated rows for a month-long window.

:func:`source` gives that window as one SQL subquery with the columns of ``usage``
plus ``at``: the quarter-hour (``2026-02-01T09:30``) of a pre-aggregated row, or the
exact time (``2026-02-01T09:37:12.000Z``) of an edge round.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

from ..store.index import BUCKET_FIELDS

SUMS = ("rounds", "input", "output", "reasoning", "cached", "cache_write",
        *(f"b_{f}" for f in BUCKET_FIELDS), "cost", "unpriced_rounds", "tool_calls")
QUARTER = timedelta(minutes=15)
_COLUMNS = "sid, bucket, model, consumer, {at} AS at, " + ", ".join(SUMS)


def parse_stamp(text: str) -> datetime:
    """A stored time (``YYYY-MM-DDTHH:MM:SS.mmmZ``) or a quarter-hour bucket
    (``YYYY-MM-DDTHH:MM``) as an aware UTC datetime."""
    if len(text) == 16:
        return datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                        int(text[14:16]), tzinfo=timezone.utc)
    return datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                    int(text[14:16]), int(text[17:19]), int(text[20:23]) * 1000,
                    tzinfo=timezone.utc)


def stamp(moment: datetime) -> str:
    """A moment as the store writes times (UTC, milliseconds, Z). Written by hand:
    ``strftime('%Y')`` does not pad years before 1000 on every platform."""
    m = moment.astimezone(timezone.utc)
    return (f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:"
            f"{m.second:02d}.{m.microsecond // 1000:03d}Z")


def bucket_of(moment: datetime) -> str:
    """The quarter-hour bucket containing ``moment`` (UTC)."""
    m = moment.astimezone(timezone.utc)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute // 15 * 15:02d}"


def _floor(moment: datetime) -> datetime:
    return moment.replace(minute=moment.minute // 15 * 15, second=0, microsecond=0)


def _ceil(moment: datetime) -> datetime | None:
    """The first quarter-hour at or after ``moment`` (None past year 9999)."""
    floor = _floor(moment)
    if floor == moment:
        return floor
    try:
        return floor + QUARTER
    except OverflowError:
        return None


def source(since: str | None = None, until: str | None = None,
           columns: str | None = None) -> tuple[str, list]:
    """``(subquery, params)``: the usage of exactly the rounds in [since, until) (stored
    time strings; None leaves that end open), for ``FROM {subquery} u``. ``columns``
    (``"sid"``) selects fewer: a count of sessions then reads the bucket index alone."""
    whole = columns or _COLUMNS.format(at="bucket")
    if since is None and until is None:
        return f"(SELECT {whole} FROM usage)", []
    lo = parse_stamp(since) if since else None
    hi = parse_stamp(until) if until else None
    if lo is not None and hi is not None and lo >= hi:
        return f"(SELECT {whole} FROM usage WHERE 0)", []
    lo_q = _ceil(lo) if lo is not None else None
    hi_q = _floor(hi) if hi is not None else None
    parts: list[str] = []
    params: list = []
    exact = columns or _COLUMNS.format(at="ts")
    if (lo is not None and lo_q is None) or (lo_q is not None and hi_q is not None
                                             and lo_q >= hi_q):
        # No whole quarter-hour inside: every round is read exactly.
        clauses, values = [], []
        if since:
            clauses.append("ts >= ?")
            values.append(since)
        if until:
            clauses.append("ts < ?")
            values.append(until)
        return f"(SELECT {exact} FROM round_usage WHERE {' AND '.join(clauses)})", values
    # The whole quarter-hours [lo_q, hi_q) from the pre-aggregated rows...
    clauses, values = [], []
    if lo_q is not None:
        clauses.append("bucket >= ?")
        values.append(bucket_of(lo_q))
    if hi_q is not None:
        clauses.append("bucket < ?")
        values.append(bucket_of(hi_q))
    parts.append(f"SELECT {whole} FROM usage WHERE {' AND '.join(clauses)}")
    params += values
    # ... and the rounds of the partial quarter-hours at either edge.
    if lo is not None and lo < lo_q:
        parts.append(f"SELECT {exact} FROM round_usage WHERE ts >= ? AND ts < ?")
        params += [since, stamp(lo_q)]
    if hi is not None and hi_q < hi:
        parts.append(f"SELECT {exact} FROM round_usage WHERE ts >= ? AND ts < ?")
        params += [stamp(hi_q), until]
    return "(" + " UNION ALL ".join(parts) + ")", params


def straddles(bucket: str, tz: tzinfo) -> bool:
    """Whether a quarter-hour holds a local midnight of ``tz`` inside it (an offset that
    is not a multiple of 15 minutes, such as -09:04 or a historical LMT): its rounds
    then belong to two days and are read one by one."""
    start = parse_stamp(bucket)
    try:
        end = start + QUARTER - timedelta(milliseconds=1)
    except OverflowError:
        end = start.replace(minute=start.minute + 14, second=59, microsecond=999000)
    try:
        return start.astimezone(tz).date() != end.astimezone(tz).date()
    except (OverflowError, ValueError):
        return False


def local_date(at: str, tz: tzinfo):
    """The local day of ``tz`` of a bucket or an exact time (UTC's for a moment that no
    other zone can show: year 1 or 9999 near the edge of the calendar)."""
    moment = parse_stamp(at)
    try:
        return moment.astimezone(tz).date()
    except (OverflowError, ValueError):
        return moment.date()
