"""The inner ai_log of a line decoded without decoding again the history it re-logs.

An agent logs its session's whole message list with every request, so a plain decode
costs each line as much as the whole conversation so far: on a long session nearly all
of a line's decoding is messages already decoded from the previous request. Equal text
decodes to equal values (one decoder, the same hooks), so :func:`decode_ai_log` keeps
the ``messages`` text and list of the latest request per session id and, when a line's
``messages`` text begins with that text character for character, reuses the decoded
messages for it and decodes only what follows. Which entry is tried is only a guess (the
``session_id`` found from the end of the text): it decides the speed, never the value.

The result equals ``request._decode(text)``: the members before and after ``messages``
are decoded by the same decoder as two objects and merged as it merges duplicate keys.
Where the text has no top-level ``"messages":[`` as Go writes it, or anything does not
decode, :func:`decode_ai_log` gives None and the caller decodes the text whole as
before, from where it always did, so errors and their messages are unchanged. Called
from where the caller would call ``_decode``, every value is scanned from at least as
deep a stack as the whole decode scans it from: a value too deeply nested for it is too
deeply nested here, and then decoded whole.

The messages reused are the very objects of the previous request's list: nothing
downstream changes a decoded message in place (the session links them, ondisk.py
copies before it rewrites), and the session's prefix check (document.common_prefix)
then compares them by identity, in time proportional to the messages, not their text.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from json.decoder import scanstring

from .request import _DECODER, _decode

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
    ``cache`` where the text repeats it; None when the text has no top-level messages
    list in the plain form or does not decode (the caller then decodes it whole, and
    reports its error)."""
    if cache is None:
        return None
    try:
        return _split(text, cache)
    except (ValueError, StopIteration, IndexError, RecursionError):
        return None   # _Irregular, or an error the whole decode reports in its words


def _split(text: str, cache: HistoryCache) -> dict | None:
    """The object as three parts: the members before ``"messages"`` (decoded as one
    object: that decode succeeds only if the key found is a top-level one, since one
    closing brace cannot close a nested object), the messages list, the members after
    it (one object again), merged as json merges duplicate keys (first place, last
    value)."""
    if text.startswith(_FIRST):
        obj: dict = {}
        start = len(_FIRST) - 1
    else:
        at = text.find(_MEMBER)
        if at < 0:
            return None
        obj = _decode(text[:at] + "}")
        if not obj:
            return None   # "{," (nothing before the comma) is not JSON: the whole decode says so
        start = at + len(_MEMBER) - 1
    messages, idx = _messages(text, start, cache)
    c = text[idx]
    if c == ",":
        if text[idx + 1] != '"':
            return None
        rest = _decode("{" + text[idx + 1:])
    elif c == "}" and idx + 1 == len(text):
        rest = None
    else:
        return None
    obj["messages"] = messages
    if rest:
        obj.update(rest)
    sid = obj.get("session_id")
    if type(sid) is str and obj["messages"] is messages:
        cache.put(sid, text[start:idx - 1], list(messages))   # its own list: callers keep theirs
    return obj


# The messages member as Go writes it, first or after another member.
_FIRST = '{"messages":['
_MEMBER = ',"messages":['


def _messages(text: str, start: int, cache: HistoryCache) -> tuple[list, int]:
    """The list at ``start`` and the index after it: the cached list of the session's
    previous request where this text begins with its text, plus what follows. Scanned
    from as deep a stack as a whole decode scans it (decode, raw_decode, the object)."""
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
    return _scan(text, start)


def _rest(text: str, idx: int, items: list) -> tuple[list, int]:
    """The remaining elements of a list whose first ones are ``items``; ``idx`` is just
    after a comma."""
    while True:
        value, idx = _scan(text, idx)
        items.append(value)
        c = text[idx]
        idx += 1
        if c == ",":
            continue
        if c == "]":
            return items, idx
        raise _Irregular


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
