"""What parsing a line gives: a :class:`Request`, or a :class:`BadLine` with its kind;
and the strict JSON decoder every part of a line is read with (no NaN, no infinity).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from operator import attrgetter


class BadLine(Exception):
    """A line that is skipped; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class Request:
    """One AI request as logged, validated, before it becomes a stored round."""

    ai: dict
    session_id: str | None
    request_id: str | None
    timestamp: str
    time_source: str
    gateway: dict
    input_token: int
    output_token: int
    total_token: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    input_details: dict
    output_details: dict
    has_usage: bool
    warnings: list[str] = field(default_factory=list)
    # Fields kept as the JSON text they were logged as: nested too deeply (nesting.py).
    nested_as_text: tuple = ()

    def __reduce__(self) -> tuple:
        # Pickled for every line the parse worker sends (parse_ahead.py): as the
        # arguments of its constructor it unpickles in half the time of the default
        # (a dict of its slots, set one by one), 11 us less per line in the monitor.
        return Request, _FIELDS(self)


_FIELDS = attrgetter(*(f.name for f in fields(Request)))


def _reject_constant(name: str) -> None:
    # json accepts NaN and Infinity by default; Higress never writes them, and a NaN
    # token count would poison every total it touches.
    raise ValueError(f"non-standard constant {name}")


def _finite_float(text: str) -> float:
    # 1e999 parses as inf without any NaN/Infinity literal; the store refuses to write
    # non-finite numbers (they are not JSON), so such a line is bad input here.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# strict: a raw control character inside a JSON string (a NUL above all) is never
# written by Go's json.Marshal nor by Envoy for its own fields. In a header value (TEXT
# mode does not escape them) it breaks the line and the ai_log is salvaged; inside the
# ai_log it makes the line bad (raw_control_char), never a session id holding a NUL.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode = _DECODER.decode


def _note_repeats(pairs: list) -> dict:
    obj = dict(pairs)   # what json builds itself: first place, last value
    if len(obj) != len(pairs):
        _REPEATED.append((obj, pairs))
    return obj


_REPEATED: list = []
_NOTING_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                                   object_pairs_hook=_note_repeats)


def decode_noting_repeats(text: str) -> tuple[object, list | None]:
    """``_decode(text)``, and when some object in it holds a key more than once (json
    keeps the last silently) the list of every such object with its members, as
    ``(obj, pairs)`` (the top-level object among them when it is one), else None."""
    _REPEATED.clear()
    try:
        value = _NOTING_DECODER.decode(text)
        return value, (list(_REPEATED) or None)
    finally:
        _REPEATED.clear()


def _unique_pairs(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key occurs twice")
    return obj


# For parts of a text that another decode will read whole if a key repeats in them.
_UNIQUE_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                                   object_pairs_hook=_unique_pairs)
_decode_unique = _UNIQUE_DECODER.decode
