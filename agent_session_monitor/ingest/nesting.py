"""Content nested deeper than anything downstream can walk (input-format.md, "Fields a
client controls").

A client writes ``messages``, ``question`` and ``system`` (the request's body, logged as
it came), and can nest them as deep as it likes; json's decoder gives up past ~985
levels (RecursionError), and the readers (``cli.py show``, the pages, the search index)
walk content recursively, some from ~200 levels. Before, such a line was bad_ai_log: the
client's own round was never billed, so nesting deep enough made rounds free.

Now a value nested more than :data:`MAX_DEPTH` levels in a field that decides nothing
(the content fields, and keys other plugins add) is kept as the JSON text it was logged
as, a string: the round is billed with the gateway's counts, the field is named in the
round's ``nested_as_text`` and the request carries the warning
``deeply_nested_messages``. A field that decides the bill, the session, the time or the
model (:data:`DECIDING_KEYS`) is written by the gateway as a scalar or a flat map: nested
that deep, the line is not the plugin's, and it stays bad_ai_log.

Two ways in: a line json decodes but whose content is too deep (checked on what each
line adds, values.too_deep), and one json cannot decode (:func:`decode_members`, which
decodes the ai_log's top-level members one by one and finds the end of a too-deep value
by its brackets, without recursion).
"""

from __future__ import annotations

import re
from json.decoder import scanstring

from ..values import MAX_DEPTH, too_deep
from .ai_log import BILLING_KEYS
from .request import _NOTING_DECODER, _REPEATED, BadLine

WARNING = "deeply_nested_messages"
# Content holding more lists and objects than this is kept as its JSON text too, without
# decoding it: decoded, each costs ~400 bytes (a 9 MB line of 1.26 million small objects
# peaked at 498 MB; at --max-line-bytes' 64 MiB, gigabytes). A real request holds a few
# thousand (messages, their content parts, tool calls).
MAX_CONTAINERS = 200_000
HUGE_WARNING = "huge_messages"

# ai_log keys the gateway writes and something is decided by: the bill (BILLING_KEYS),
# the event time, the model, the consumer, the round's metadata.
DECIDING_KEYS = BILLING_KEYS | frozenset((
    "start_time", "timestamp", "chat_round", "chat_id", "response_type", "api", "api_type",
    "consumer", "llm_first_token_duration", "llm_service_duration"))


def deep_members(ai: dict, skip_messages: int = 0) -> bool:
    """Whether some member of the decoded ai_log nests more than MAX_DEPTH levels (the
    first ``skip_messages`` messages were checked with an earlier line)."""
    for key, value in ai.items():
        if (type(value) is list or type(value) is dict) and \
                too_deep(value, skip_messages if key == "messages" else 0):
            return True
    return False


def decode_members(text: str, huge: bool = False) -> tuple[dict, tuple, list | None]:
    """The ai_log ``text`` decoded member by member: ``(object, keys kept as their JSON
    text, repeats)`` (repeats as request.decode_noting_repeats gives them). Raises
    ValueError when the text is not a JSON object (a too-deep value is checked for valid
    strings and matching brackets), BadLine for a deciding key nested too deeply. With
    ``huge`` (the text holds more than MAX_CONTAINERS brackets), a content member holding
    more is kept as its text without being decoded."""
    match = _WS
    idx = match(text, 0).end()
    if not text.startswith("{", idx):
        raise ValueError("Expecting an object")
    idx = match(text, idx + 1).end()
    pairs: list = []
    repeated: list = []
    kept: dict = {}
    if text.startswith("}", idx):
        idx += 1
    else:
        while True:
            if not text.startswith('"', idx):
                raise ValueError(f"Expecting property name enclosed in double quotes: char {idx}")
            key, idx = scanstring(text, idx + 1, True)
            idx = match(text, idx).end()
            if not text.startswith(":", idx):
                raise ValueError(f"Expecting ':' delimiter: char {idx}")
            start = idx = match(text, idx + 1).end()
            deep = False
            _REPEATED.clear()
            try:
                if huge and key not in DECIDING_KEYS and text.startswith(("[", "{"), idx) \
                        and _containers(text, start, end := skip_value(text, start)) \
                        > MAX_CONTAINERS:
                    idx, deep = end, True   # never decoded: its text is what is kept
                else:
                    value, idx = _NOTING_DECODER.scan_once(text, idx)
                    deep = too_deep(value)
            except StopIteration:
                raise ValueError(f"Expecting value: char {idx}") from None
            except RecursionError:
                idx = skip_value(text, start)
                deep = True
            if deep:
                if key in DECIDING_KEYS:
                    raise BadLine("bad_ai_log", f"{key} is nested more than {MAX_DEPTH} "
                                  "levels deep: the gateway writes it flat, so the line is "
                                  "not the plugin's; not billed")
                value = text[start:idx]
                kept[key] = True
            else:
                kept.pop(key, None)   # a later copy of a key is the one json keeps
                repeated += _REPEATED
            _REPEATED.clear()
            pairs.append((key, value))
            idx = match(text, idx).end()
            if text.startswith(",", idx):
                idx = match(text, idx + 1).end()
                continue
            if text.startswith("}", idx):
                idx += 1
                break
            raise ValueError(f"Expecting ',' delimiter: char {idx}")
    if match(text, idx).end() != len(text):
        raise ValueError(f"Extra data: char {idx}")
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated.append((obj, pairs))
    return obj, tuple(k for k in obj if k in kept), repeated or None


def _containers(text: str, start: int, end: int) -> int:
    """At most how many lists and objects text[start:end] holds (brackets in strings
    counted too: an upper bound, in C)."""
    return text.count("[", start, end) + text.count("{", start, end)


_WS = re.compile(r"[ \t\n\r]*").match
# The next run of opening brackets, of closing ones, or a string's opening quote.
_STRUCTURE = re.compile(r'[\[{]+|[\]}]+|"')
_CLOSER = bytes.maketrans(b"[{", b"]}")


def skip_value(text: str, idx: int) -> int:
    """The end of the list or object at ``idx``, found by its brackets outside strings
    (each string checked as json checks it; what lies between brackets otherwise is not:
    the text is kept, never decoded), without recursion. The brackets still open are a
    bytearray, a byte a level: 13 million levels of ``[1,`` held 1.3 GB as a list of
    runs. Linear in the text; ~1 us a level where something sits between brackets."""
    if not text.startswith(("[", "{"), idx):
        raise ValueError(f"Expecting value: char {idx}")
    stack = bytearray()
    pos = idx
    search = _STRUCTURE.search
    while True:
        m = search(text, pos)
        if m is None:
            raise ValueError("Unterminated list or object")
        run = m.group()
        pos = m.end()
        if run == '"':
            pos = scanstring(text, pos, True)[1]
            continue
        if run[0] in "[{":
            stack += run.encode("ascii")
            continue
        have = len(stack)
        k = min(have, len(run))
        if stack[have - k:][::-1].translate(_CLOSER) != run[:k].encode("ascii"):
            raise ValueError(f"Mismatched brackets: char {m.start()}")
        del stack[have - k:]
        if not stack:   # the rest of the run closes what holds the value
            return m.start() + k
