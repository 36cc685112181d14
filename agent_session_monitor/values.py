"""What a stored value may be: the one text form of a time (UTC, milliseconds, ``Z``),
the range of times a zone can show, the bound on a token count and on nesting. Shared by
the parser, which makes values so, and the store, which checks that what it loads still
is."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# A token count no provider reports: a trillion tokens in one request, five orders of
# magnitude above any context window. Above it a count is bad input (out_of_range):
# sums of such counts would overflow SQLite's integers and JavaScript's exact ones.
MAX_TOKENS = 2**40
# Event times a time zone can show and calendar arithmetic can shift: before 1970 no
# gateway wrote a log, and year 9999 overflows once shifted east of UTC.
MIN_TIME, MAX_TIME = "1970-01-01T00:00:00.000Z", "9000-01-01T00:00:00.000Z"


# ASCII digits only: ``\d`` alone also matches other scripts' digits (U+FF10...).
_CANONICAL = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                        r"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z", re.ASCII)
# Every other form read: ISO-8601's extended date, optionally a time (hours, minutes,
# seconds, a fraction of up to nine digits after "." or ","), optionally a zone. Nothing
# else, not a character more: datetime.fromisoformat alone (3.11) reads any separator and
# ignores a NUL or a control character before the zone, so "09:00:00\x00Z" passed for a
# time unflagged (and 3.10 reads fewer forms than 3.11: one grammar for both).
_ISO_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)"
                       r"(?:[Tt ](\d\d)(?::(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?)?)?"
                       r"(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?)?", re.ASCII)


def canonical_time(value: str) -> tuple[str, bool] | None:
    """``value`` as UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (sortable as text), and whether it
    was naive (no offset: taken as UTC and flagged). None if it is not a time."""
    if _CANONICAL.fullmatch(value):
        # Envoy's %START_TIME% form already: the common case, kept as is (text compares
        # as time in this form).
        return (value, False) if MIN_TIME <= value < MAX_TIME else None
    m = _ISO_TIME.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, utc, sign, off_h, off_m = m.groups()
    naive = utc is None and sign is None
    try:
        zone = timezone.utc
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), int((fraction or "").ljust(6, "0")[:6]), zone)
        moment = moment.astimezone(timezone.utc)   # year 1 at +14:00 overflows here
    except (ValueError, OverflowError):
        return None
    stored = format_time(moment)
    return (stored, naive) if MIN_TIME <= stored < MAX_TIME else None


def format_time(moment: datetime) -> str:
    """The one text form of a stored time: UTC, milliseconds, ``Z`` (four-digit year:
    strftime writes year 1 as "1", which no parser reads back)."""
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z")


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))


# Levels a stored content value may nest (a list or object is one level; "x" none). Real
# agents' messages reach ~6 (content blocks in a tool result); readers walk a few frames
# per level from stacks up to ~100 deep, under the 1,000 CPython allows. Deeper content
# is kept as its JSON text (ingest/nesting.py).
MAX_DEPTH = 64


def too_deep(value: object, skip: int = 0, limit: int = MAX_DEPTH) -> bool:
    """Whether the list or object ``value`` nests more than ``limit`` levels; the first
    ``skip`` items of a list are not looked at (checked before). Level by level, never
    recursive."""
    if type(value) is dict:
        level = [v for v in value.values() if type(v) is list or type(v) is dict]
    elif type(value) is list:
        level = [v for v in (value[skip:] if skip else value)
                 if type(v) is list or type(v) is dict]
    else:
        return False
    depth = 1
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for v in level:
            for x in (v.values() if type(v) is dict else v):
                if type(x) is list or type(x) is dict:
                    below.append(x)
        level = below
    return False
