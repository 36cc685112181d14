"""The inner ai_log of a line decoded without decoding again the history it re-logs.

An agent logs its session's whole message list with every request, so a plain decode
costs each line as much as the whole conversation so far: on a long session nearly all
of a line's decoding is messages already decoded from the previous request. Equal text
decodes to equal values (one decoder, the same hooks), so :func:`decode_ai_log` keeps
the ``messages`` text and list of the latest request per session id and, when a line's
``messages`` text begins with that text character for character, reuses the decoded
messages for it and decodes only what follows. Which entry is tried is only a guess (the
``session_id`` found from the end of the text): it decides the speed, never the value.

The result equals ``request._decode(text)``. The top-level object is read here only in
the form every producer writes (Go's json.Marshal: ``{"key":value,...}`` without
whitespace); for anything else (whitespace, an empty object, an error, a value nested
too deeply) :func:`decode_ai_log` gives None and the caller decodes the text whole as
before, from where it always did, so errors and their messages are unchanged. Called
from where the caller would call ``_decode``, the values are scanned from at least as
deep a stack as the whole decode scans them from (the ``_value`` frames): a value too
deeply nested for it is too deeply nested here, and then decoded whole.

The messages reused are the very objects of the previous request's list: nothing
downstream changes a decoded message in place (the session links them, ondisk.py
copies before it rewrites), and the session's prefix check (document.common_prefix)
then compares them by identity, in time proportional to the messages, not their text.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from json.decoder import scanstring

from .request import _DECODER

_scan = _DECODER.scan_once
_SESSION_KEY = '"session_id":"'
# Bytes of messages text kept (the decoded lists share their objects with the sessions).
CACHE_BYTES = 8 * 2**20


class _Irregular(ValueError):
    """Not the plain form: decode the whole text instead."""


class HistoryCache:
    """session id -> (messages text without its closing ``]``, decoded list), least
    recently used first, bounded by the texts' sizes in memory."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict = OrderedDict()

    def get(self, session_id: str):
        return self.items.get(session_id)

    def put(self, session_id: str, opening: str, messages: list) -> None:
        old = self.items.pop(session_id, None)
        if old is not None:
            self.size -= old[2]
        size = sys.getsizeof(opening)
        if size > self.limit:
            return
        self.items[session_id] = (opening, messages, size)
        self.size += size
        while self.size > self.limit:
            _sid, (_text, _m, n) = self.items.popitem(last=False)
            self.size -= n

    def clear(self) -> None:
        self.items.clear()
        self.size = 0


CACHE = HistoryCache()


def decode_ai_log(text: str, cache: HistoryCache | None = CACHE) -> object:
    """``request._decode(text)``, with the re-logged history of a session taken from
    ``cache`` where the text repeats it; None when the text is not in the plain form or
    does not decode (the caller then decodes it whole, and reports its error)."""
    if cache is None or not text.startswith('{"'):
        return None
    try:
        return _walk(text, cache)
    except (ValueError, StopIteration, IndexError, RecursionError):
        return None   # _Irregular, or an error the whole decode reports in its words


def _walk(text: str, cache: HistoryCache) -> dict | None:
    obj: dict = {}
    idx = 1
    opening = None
    while True:
        if text[idx] != '"':
            return None
        key, idx = scanstring(text, idx + 1, True)
        if text[idx] != ":":
            return None
        start = idx + 1
        if key == "messages" and text[start] == "[":
            value, idx = _messages(text, start, cache)
            opening = text[start:idx - 1] if type(value) is list else None
        else:
            value, idx = _value(text, start)
            if key == "messages":
                opening = None
        obj[key] = value
        c = text[idx]
        idx += 1
        if c == ",":
            continue
        if c == "}":
            break
        return None
    if idx != len(text):
        return None
    sid = obj.get("session_id")
    if opening is not None and type(sid) is str:
        cache.put(sid, opening, list(obj["messages"]))   # its own list: callers keep theirs
    return obj


def _messages(text: str, start: int, cache: HistoryCache) -> tuple[list, int]:
    """The list at ``start`` and the index after it: the cached list of the session's
    previous request where this text begins with its text, plus what follows."""
    entry = cache.get(_session_hint(text))
    if entry is not None:
        opening, previous, _size = entry
        end = start + len(opening)
        if previous and text.startswith(opening, start) and end < len(text):
            c = text[end]
            if c == "]":
                return list(previous), end + 1
            if c == ",":
                return _rest(text, end + 1, list(previous))
    return _value(text, start)


def _rest(text: str, idx: int, items: list) -> tuple[list, int]:
    """The remaining elements of a list whose first ones are ``items``; ``idx`` is just
    after a comma."""
    while True:
        value, idx = _value(text, idx)
        items.append(value)
        c = text[idx]
        idx += 1
        if c == ",":
            continue
        if c == "]":
            return items, idx
        raise _Irregular


def _value(text: str, idx: int) -> tuple[object, int]:
    # A frame of its own: values are scanned from as deep a stack as a whole decode's.
    return _scan(text, idx)


def _session_hint(text: str) -> str | None:
    """The session id the text probably carries (the last ``"session_id":"`` in it: the
    producers sort keys, so it follows the messages). Only a guess: it picks which
    cached text is compared, it decides nothing."""
    at = text.rfind(_SESSION_KEY)
    if at < 0:
        return None
    try:
        return scanstring(text, at + len(_SESSION_KEY), True)[0]
    except ValueError:
        return None
