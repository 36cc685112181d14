"""Parse one Higress access-log line into a :class:`Request` (spec: input-format.md).

Every quirk of the real producers is handled here and nowhere else: ai_log as a string
or an object, numbers as strings, details as strings or objects, ``timestamp`` instead
of ``start_time``, a line broken by an unescaped ``"`` in another field (the ai_log is
salvaged), NUL runs left by copytruncate, BOMs and CRLF. A line that cannot be used
raises :class:`BadLine` with a kind; the caller counts it and goes on. The outer line
is checked for forged keys and salvaged in ``forgery.py``; the ai_log's own fields are
validated in ``ai_log.py``.
"""

from __future__ import annotations

import json

from . import history as _history
from .ai_log import _build, repeated_keys
from .forgery import _decode_outer, _genuine_fields, _is_trusted, _salvage
from .history import decode_ai_log, remember, restore, shorten
from ..values import MAX_DEPTH, too_deep
from .nesting import (DECIDING_KEYS, HUGE_WARNING as HUGE, MAX_CONTAINERS, WARNING as NESTED,
                      decode_members, deep_members)
from .request import BadLine, Request, _decode, decode_noting_repeats

BOM = b"\xef\xbb\xbf"


def parse_line(raw: bytes, read_time: str) -> Request | str:
    """Parse one line (without its newline).

    Returns a :class:`Request`, or ``"blank"`` / ``"non_ai"`` for lines that are skipped
    silently; raises :class:`BadLine` for lines that are counted as bad.
    ``read_time`` is the event time used, and flagged, when the line carries none.
    """
    if len(raw) < HISTORY_MIN_BYTES:
        return _parse(raw, read_time, False)
    # The messages this request repeats from its session's previous one, in the same
    # bytes, are neither unescaped nor decoded again (history.py); the result is the
    # whole line's, or the whole line is parsed.
    short = shorten(raw)
    if short is not None:
        try:
            req = _parse(short[0], read_time)
        except BadLine:
            req = None
        if isinstance(req, Request) and _ODD.isdisjoint(req.warnings) \
                and restore(short, req.ai):
            return req
    req = _parse(raw, read_time)
    if isinstance(req, Request):
        remember(raw, req.ai)
    return req


# Lines parsed whole whatever their history: their outer fields were read another way,
# or a field is kept as its text (the shortened line's text is not the line's).
_ODD = frozenset(("salvaged", "forged", "bad_utf8", "duplicate_key", NESTED))


def _decode_whole(text: str, warnings: list[str]) -> object:
    """The ai_log decoded whole; a key it holds twice is checked (ai_log.repeated_keys)."""
    ai, repeated = decode_noting_repeats(text)
    if repeated is not None:
        repeated_keys(ai, repeated, warnings)
    return ai


# A shorter line is parsed whole, its history neither looked up nor kept (history.py):
# what it could repeat costs less to decode than the bookkeeping of reusing it. Measured
# on the bench logs (parse per line): short sessions 89 -> 61 us (their lines are
# 2-6 KB), the small, long and large shapes unchanged (their long histories are in
# longer lines). Which path a line takes decides the speed, never the value.
HISTORY_MIN_BYTES = 8 * 1024


def _parse(raw: bytes, read_time: str, history: bool = True) -> Request | str:
    if raw and raw[0] in (0, 0xEF, 0x20, 0x09, 0x0D) or raw.endswith(b"\r"):
        raw = _clean_edges(raw)
    if not raw:
        return "blank"
    warnings: list[str] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes come from a raw header (a User-Agent): the plugin's ai_log is
        # valid UTF-8 (Go replaces bad bytes with U+FFFD). Keep them apart, so the paid
        # round survives when they are not in the ai_log (checked in _build).
        text = raw.decode("utf-8", "surrogateescape")
        warnings.append("bad_utf8")
    try:
        outer = _decode(text)
    except (ValueError, RecursionError) as e:
        # Nested too deeply for json: only a raw header can be (the ai_log is a string),
        # so the line is read by place as one a header broke is.
        notes: list[str] = []
        salvaged = _salvage(text, notes)
        if salvaged is None:
            if isinstance(e, RecursionError):
                raise BadLine("bad_json", "nested too deeply") from None
            if str(e).startswith("Invalid control character"):
                raise BadLine("raw_control_char", str(e)[:120]) from None
            raise BadLine("bad_json", str(e)[:120]) from None
        outer = salvaged
        warnings.append("salvaged")
        if str(e).startswith("Invalid control character"):
            warnings.append("raw_control_char")
        warnings += notes
    else:
        if not isinstance(outer, dict):
            raise BadLine("not_object", f"a JSON {type(outer).__name__}, not an object")
        if not _is_trusted(raw, outer):
            # The exact path: decode again keeping every key, and choose by place.
            outer = _genuine_fields(_decode_outer(text), warnings, text)
    ai = outer.get("ai_log")
    if ai is None or ai == "-" or ai == "":
        return "forged_non_ai" if "forged" in warnings else "non_ai"
    if "bad_utf8" in warnings:
        outer = _without_bad_bytes(outer)
    nested: tuple = ()
    if isinstance(ai, str):
        ai_text, noted = ai, len(warnings)
        huge = len(ai_text) > 2 * MAX_CONTAINERS and _openers(ai_text) > MAX_CONTAINERS
        try:
            if huge:   # never decoded whole: its content is kept as text (nesting.py)
                raise RecursionError
            # The history this request re-logs is not decoded again (history.py); the
            # messages it took from there were checked with an earlier line.
            ai = (history and decode_ai_log(ai_text)) or _decode_whole(ai_text, warnings)
            if type(ai) is dict and (history or _openers(ai_text) > MAX_DEPTH) \
                    and deep_members(ai, _history.reused if history else 0):
                raise RecursionError   # content deeper than the readers go
        except RecursionError:
            del warnings[noted:]   # what the whole decode noted is noted again
            ai, nested = _decode_nested(ai_text, warnings, huge)
        except ValueError as e:
            if str(e).startswith("Invalid control character"):
                raise BadLine("raw_control_char", "in the ai_log: " + str(e)[:100]) from None
            raise BadLine("bad_ai_log", str(e)[:120]) from None
    elif isinstance(ai, dict):
        ai = _object_ai_log(text, ai, warnings)
        if deep_members(ai):
            ai, nested = _nested_object(ai, warnings)
    if not isinstance(ai, dict):
        raise BadLine("bad_ai_log", f"ai_log is a JSON {type(ai).__name__}, not an object")
    req = _build(outer, ai, read_time, warnings)
    if nested:
        req.nested_as_text = nested
    return req


def _openers(text: str) -> int:
    """How many ``[`` and ``{`` the text holds: no value in it nests deeper. Two counts
    in C cost a short line (parsed without history, under 8 KiB) a third of walking its
    values (callgrind), and most short lines hold fewer than MAX_DEPTH."""
    return text.count("[") + text.count("{")


def _decode_nested(text: str, warnings: list[str], huge: bool = False) -> tuple[dict, tuple]:
    """An ai_log holding a value nested deeper than MAX_DEPTH (nesting.py): decoded
    member by member, each too-deep content field kept as its text. The history caches
    let go of the session: its decoded messages are not this line's."""
    try:
        ai, nested, repeated = decode_members(text, huge)
    except RecursionError:   # a value the member scan could not finish: not JSON
        raise BadLine("bad_ai_log", "nested too deeply and not valid JSON") from None
    except ValueError as e:
        if str(e).startswith("Invalid control character"):
            raise BadLine("raw_control_char", "in the ai_log: " + str(e)[:100]) from None
        raise BadLine("bad_ai_log", "nested too deeply: " + str(e)[:100]) from None
    if repeated is not None:
        repeated_keys(ai, repeated, warnings)
    sid = ai.get("session_id")
    if type(sid) is str:
        _history.CACHE.drop(sid)
    if nested:
        warnings.append(HUGE if huge else NESTED)
    return ai, nested


def _nested_object(ai: dict, warnings: list[str]) -> tuple[dict, tuple]:
    """The same for an ai_log written as an object (older producers): the too-deep
    fields as JSON text again (the line's own text is not at hand)."""
    out, nested = dict(ai), []
    for key, value in ai.items():
        if not too_deep(value):
            continue
        if key in DECIDING_KEYS:
            raise BadLine("bad_ai_log", f"{key} is nested more than {MAX_DEPTH} levels deep")
        try:
            out[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except RecursionError:
            raise BadLine("bad_ai_log", f"{key} is nested too deeply") from None
        nested.append(key)
    warnings.append(NESTED)
    return out, tuple(nested)


def _object_ai_log(text: str, ai: dict, warnings: list[str]) -> dict:
    """An ai_log written as a JSON object, not a string (older producers, the skill's
    examples): the line's decode kept the last of a repeated key silently, so it is
    decoded again noting repeats and checked exactly as an ai_log string is
    (ai_log.repeated_keys): differing copies of a billing key make the line bad, equal
    ones are flagged. Only such lines pay for the second decode."""
    whole, repeated = decode_noting_repeats(text)
    if repeated is None:
        return ai
    # The genuine ai_log (forgery.py chose it by place): json's, or another copy.
    candidates = [whole.get("ai_log")] if isinstance(whole, dict) else []
    candidates += [v for obj, pairs in repeated if obj is whole
                   for k, v in pairs if k == "ai_log"]
    for found in candidates:
        if isinstance(found, dict) and found == ai:
            repeated_keys(found, repeated, warnings)
            return found
    return ai


def _without_bad_bytes(outer: dict) -> dict:
    """The outer fields of a line holding invalid UTF-8: the ai_log must be free of it
    (else the line is bad_utf8), other strings get U+FFFD for each bad byte."""
    ai = outer.get("ai_log")
    if _has_bad_bytes(ai):
        raise BadLine("bad_utf8", "invalid UTF-8 inside the ai_log")
    clean = {}
    for k, v in outer.items():
        if isinstance(k, str) and _has_bad_bytes(k):
            continue
        if k != "ai_log" and isinstance(v, str) and _has_bad_bytes(v):
            v = v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        clean[k] = v
    return clean


def _has_bad_bytes(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False


def _clean_edges(raw: bytes) -> bytes:
    raw = raw.rstrip(b"\r")
    # copytruncate with a writer lacking O_APPEND leaves a sparse run of NULs before
    # the next real line: it is padding, not a bad line.
    raw = raw.lstrip(b"\x00")
    if raw.startswith(BOM):
        raw = raw[3:]
    return raw.strip(b" \t\r")

