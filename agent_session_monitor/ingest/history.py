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
are decoded by the same decoder as two objects and merged; a key written twice (which
the plugin never does) leaves the text to the whole decode, which notes it.
Where the text has no top-level ``"messages":[`` as Go writes it, or anything does not
decode, :func:`decode_ai_log` gives None and the caller decodes the text whole as
before, from where it always did, so errors and their messages are unchanged. Called
from where the caller would call ``_decode``, every value is scanned from at least as
deep a stack as the whole decode scans it from: a value too deeply nested for it is too
deeply nested here, and then decoded whole. Lines shorter than
``parse.HISTORY_MIN_BYTES`` skip all of this (too little to gain).

The messages reused are the very objects of the previous request's list: nothing
downstream changes a decoded message in place (the session links them, ondisk.py
copies before it rewrites), and the session's prefix check (document.common_prefix)
then compares them by identity, in time proportional to the messages, not their text.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from json.decoder import scanstring

from .request import _DECODER, _decode_unique

_scan = _DECODER.scan_once
_SESSION_KEY = '"session_id":"'
# Bytes of messages text kept (the decoded lists share their objects with the sessions).
CACHE_BYTES = 4 * 2**20


class _Irregular(ValueError):
    """Not the plain form: decode the whole text instead."""


class HistoryCache:
    """key -> (text, decoded list, size), least recently used first, bounded by the sum
    of the sizes. Here: session id -> (its latest request's messages text without the
    closing ``]``, that list); and (RAW) a session hint -> (the escaped bytes of those
    messages without the brackets, that list)."""

    def __init__(self, limit: int = CACHE_BYTES, size=sys.getsizeof) -> None:
        self.limit = limit
        self.size = 0
        self.measure = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        return self.items.get(key)

    def put(self, key, text, messages: list) -> None:
        self.drop(key)
        size = self.measure(text)
        if size > self.limit:
            return
        self.items[key] = (text, messages, size)
        self.size += size
        while self.size > self.limit:
            _k, (_text, _m, n) = self.items.popitem(last=False)
            self.size -= n

    def drop(self, key) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= old[2]

    def clear(self) -> None:
        self.items.clear()
        self.size = 0


CACHE = HistoryCache()
# Messages the last decode_ai_log took from the cache (the first ones of its list).
reused = 0


def decode_ai_log(text: str, cache: HistoryCache | None = CACHE) -> object:
    """``request._decode(text)``, with the re-logged history of a session taken from
    ``cache`` where the text repeats it; None when the text has no top-level messages
    list in the plain form or does not decode (the caller then decodes it whole, and
    reports its error). :data:`reused` is then how many of its first messages are the
    cached ones (checked with an earlier line: nesting.py)."""
    global reused
    reused = 0
    if cache is None:
        return None
    try:
        found = _split(text, cache)
    except (ValueError, StopIteration, IndexError, RecursionError):
        found = None   # _Irregular, or an error the whole decode reports in its words
    if found is None or found.get("messages") is None:
        reused = 0
    return found


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
        obj = _decode_unique(text[:at] + "}")
        if not obj or "messages" in obj:
            return None   # "{," (nothing before the comma) is not JSON: the whole decode says so
        start = at + len(_MEMBER) - 1
    messages, idx = _messages(text, start, cache)
    c = text[idx]
    if c == ",":
        if text[idx + 1] != '"':
            return None
        rest = _decode_unique("{" + text[idx + 1:])
        if "messages" in rest or not rest.keys().isdisjoint(obj):
            return None   # a key written twice: the whole decode notes it
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
    global reused
    entry = cache.get(_session_hint(text))
    if entry is not None:
        opening, previous, _size = entry
        end = start + len(opening)
        if previous and text.startswith(opening, start) and end < len(text):
            c = text[end]
            if c == "]":
                reused = len(previous)
                return list(previous), end + 1
            if c == ",":
                found = _rest(text, end + 1, list(previous))
                reused = len(previous)
                return found
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


# -- The same one level up: the history in the line's bytes ---------------------------
#
# The ai_log is a JSON string inside the line, so before the inner text can be decoded
# the whole of it is unescaped (the outer decode), history included: on large tool
# outputs that costs each line more than anything else. When the line's bytes hold,
# right after the ai_log's escaped ``\"messages\":[``, the very bytes of the previous
# request's messages, :func:`shorten` gives the line with those bytes replaced by one
# string element, a token random to this process, which the caller parses as usual;
# its result is the line's exactly when that token comes back as the first message (so
# the bytes replaced were the top-level messages of the ai_log, and nothing else in the
# line holds the token), with the previous request's messages in its place. Equal bytes
# at the same place unescape to equal text: the bytes kept end at an element's end and
# start after the ``[``, so no escape sequence is cut. How the producer escapes is not
# assumed: the bytes kept are the previous line's own, found by escaping the decoded
# text both ways Python can and comparing with the line (no match: nothing is kept).

TOKEN = "asm-history-" + os.urandom(16).hex()
_TOKEN_BYTES = TOKEN.encode()
_TOKEN_ELEMENT = b'\\"' + _TOKEN_BYTES + b'\\"'
_TOKEN_OPENING = '["' + TOKEN + '"'
_RAW_MEMBER = b'\\"messages\\":['
_RAW_SESSION = b'\\"session_id\\":\\"'
RAW_CACHE_BYTES = 4 * 2**20


RAW = HistoryCache(RAW_CACHE_BYTES, len)


class Shortened(tuple):
    """(line, messages its token stands for, hint, where the messages start, length of
    the bytes replaced)."""


def shorten(raw: bytes, cache: HistoryCache | None = RAW) -> Shortened | None:
    """The line with the messages it repeats from the session's previous request
    replaced by the token, or None (nothing known, or not the same bytes)."""
    if cache is None or not cache.items:
        return None
    at = raw.find(_RAW_MEMBER)
    if at < 0:
        return None
    hint = _raw_hint(raw)
    entry = cache.get(hint)
    if entry is None:
        return None
    data, messages, _size = entry
    start = at + len(_RAW_MEMBER)
    end = start + len(data)
    if not raw.startswith(data, start) or raw[end:end + 1] not in (b",", b"]") \
            or _TOKEN_BYTES in raw:
        return None
    return Shortened((raw[:start] + _TOKEN_ELEMENT + raw[end:], messages, hint, start,
                      len(data)))


def restore(short: Shortened, ai: dict) -> bool:
    """Put the messages back into the ai_log parsed from the shortened line; False when
    the token is not its first message (then the line is parsed as it is)."""
    messages = ai.get("messages")
    if type(messages) is not list or not messages or type(messages[0]) is not str \
            or messages[0] != TOKEN:
        return False
    line, previous, hint, start, replaced = short
    whole = previous + messages[1:]   # a new list: the cached one is never changed
    ai["messages"] = whole
    # What to compare the next request with: these bytes plus the new messages' own.
    entry = CACHE.get(ai.get("session_id")) if type(ai.get("session_id")) is str else None
    if entry is not None and entry[0].startswith(_TOKEN_OPENING) \
            and len(entry[1]) == len(messages) and entry[1][-1] is messages[-1]:
        added = _escaped(entry[0][len(_TOKEN_OPENING):], line,
                         start + len(_TOKEN_ELEMENT))
        current = RAW.get(hint)
        if added is not None and current is not None and current[1] is previous:
            RAW.put(hint, current[0] + added, list(whole))
            return True
    RAW.drop(hint)
    return True


def remember(raw: bytes, ai: dict) -> None:
    """After a line parsed whole: keep its messages' bytes for the next request of its
    session, when they are found (the inner decode kept their text, history.CACHE)."""
    messages, sid = ai.get("messages"), ai.get("session_id")
    if type(messages) is not list or not messages or type(sid) is not str:
        return
    entry = CACHE.get(sid)
    if entry is None or len(entry[1]) != len(messages) or entry[1][-1] is not messages[-1]:
        return
    at = raw.find(_RAW_MEMBER)
    if at < 0:
        return
    data = _escaped(entry[0][1:], raw, at + len(_RAW_MEMBER))
    if data is not None:
        RAW.put(_raw_hint(raw), data, list(messages))


def _escaped(text: str, raw: bytes, at: int) -> bytes | None:
    """The bytes of ``raw`` at ``at`` that are ``text`` escaped into a JSON string, when
    Python's escaping (ASCII-only, or not) gives them and a ``]`` follows; else None."""
    for ascii_only in (False, True):
        try:
            data = json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate: never in the line's bytes
            continue
        if raw.startswith(data, at) and raw[at + len(data):at + len(data) + 1] == b"]":
            return data
    return None


def _raw_hint(raw: bytes) -> bytes:
    at = raw.rfind(_RAW_SESSION)
    if at < 0:
        return b""
    start = at + len(_RAW_SESSION)
    end = raw.find(b'\\"', start)
    return raw[start:end if end >= 0 else start]
