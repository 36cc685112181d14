"""One session document in memory: add rounds once each, keep messages linear, summarise.

Messages are stored linearly (storage.md): each round keeps only the messages new since
the round it extends (``context_key``), plus ``messages_offset``, the number of that
round's context messages that precede them. The full request of any round is
``full(context_key round)[:messages_offset] + messages``. Every other field of a round
stays as logged (ondisk.py deduplicates inside ``messages`` when it writes the file).
"""

from __future__ import annotations

import marshal
import math
from operator import is_not

from ..pricing import tokens
from .ondisk import price_summary, same_json
from .names import UNSESSIONED_ID

# 2: every round carries the original skill's fields (ondisk.py); "tokens" totals.
SCHEMA = 2
# The key of every round this version stores: the hash of its whole line (parse_ahead.line_key).
LINE_KEY_PREFIX = "sha256:"
SUMMARY_TOKEN_FIELDS = (
    ("total_input_tokens", "input_tokens"),
    ("total_output_tokens", "output_tokens"),
    ("total_reasoning_tokens", "reasoning_tokens"),
    ("total_cached_tokens", "cached_tokens"),
    ("total_cache_write_tokens", "cache_write_tokens"),
)


def new_document(session_id: str | None) -> dict:
    doc = {
        "session_id": UNSESSIONED_ID if session_id is None else session_id,
        "created_at": None,
        "updated_at": None,
        "messages_count": 0,
        **{name: 0 for name, _ in SUMMARY_TOKEN_FIELDS},
        "tokens": dict.fromkeys(tokens.COLUMNS, 0),
        "total_cost_usd": None,
        "unpriced_rounds": 0,
        "unpriced_models": [],
        "priced_by": {},
        "provider_cost": None,
        "model": None,
        "models": [],
        "consumers": [],
        "schema": SCHEMA,
        "context_tip": None,
        "rounds": [],
    }
    if session_id is None:
        doc["unsessioned"] = True
    return doc


# A new document's key order. summarise assigns its values in place, and expand puts
# back at the end the keys a file leaves out (empty lists, a null provider cost, the
# price counts): without this, a session re-read from disk and extended would be written
# with its keys in another order than one that stayed in memory, and its bytes would
# depend on the cache (the same data, other bytes).
_DOCUMENT_ORDER = tuple(new_document(None))


def in_document_order(doc: dict) -> dict:
    """``doc`` with the keys a new document has in that document's order, then any other
    keys (older versions', hand edits') in their own order."""
    ordered = {name: doc[name] for name in _DOCUMENT_ORDER if name in doc}
    ordered.update(doc)
    return ordered


# Every key a stored round can have, in the order ingest/rounds.build_round writes them
# (an optional one only when it has a value), then what Session.add links (context_key,
# or messages_truncated). expand puts back at the end of a round the keys its file left
# out (messages_offset, source, total_tokens, buckets, context_key, ...): a round re-read
# and written again would otherwise have other bytes than one that stayed in memory.
# tests/test_hot_paths.py checks build_round against it.
ROUND_ORDER = (
    "round", "timestamp", "request_id", "key", "model", "input_tokens", "output_tokens",
    "reasoning_tokens", "cached_tokens", "cache_write_tokens", "total_tokens", "buckets",
    "cost_usd", "priced_as", "priced_by", "provider_cost_usd", "has_tool_calls",
    "response_type", "chat_round", "chat_id", "consumer", "api", "api_type",
    "llm_first_token_duration", "llm_service_duration", "messages", "messages_offset",
    "input_token_details", "output_token_details", "source", "question", "answer",
    "reasoning", "system", "tool_calls", "tool_calls_truncated", "question_truncated",
    "answer_truncated", "reasoning_truncated", "system_truncated", "nested_as_text",
    "gateway", "time_source",
    "warnings", "usage_missing", "extra", "context_key", "messages_truncated",
)


def in_round_order(rnd: dict) -> dict:
    """``rnd`` with the keys a built round has in :data:`ROUND_ORDER`, then any other keys
    (older versions', hand edits') in their own order."""
    ordered = {name: rnd[name] for name in ROUND_ORDER if name in rnd}
    if len(ordered) != len(rnd):
        ordered.update(rnd)
    return ordered


class Session:
    """A session document plus what makes adding to it cheap: the set of keys already
    applied, and the full context of the latest request (for prefix detection)."""

    __slots__ = ("doc", "file_name", "keys", "_tip_context", "dirty", "size", "linked",
                 "ready")

    def __init__(self, doc: dict, file_name: str, size: int = 0) -> None:
        self.doc = doc
        self.file_name = file_name
        self.keys = {key for r in doc["rounds"] for key in round_keys(r)}
        self._tip_context: list | None = None
        self.dirty = False
        self.size = size
        # (pass, key) of the round a parse-ahead pass linked last (monitor._rejoin):
        # kept here, not in a map of the monitor's, so it goes with the session when the
        # cache lets it go (a map of every session of a 100,000-session catch-up held
        # ~20 MB).
        self.linked: tuple | None = None
        # (rounds, last round, file bytes, index rows) when serialised ahead of its
        # checkpoint (SessionStore.prepare_idle); any round added makes it stale.
        self.ready: tuple | None = None

    def add(self, rnd: dict, messages: object, store_content: bool = True) -> int:
        """Add one round (not yet in the session); returns how many messages it stores.

        ``messages`` is the request's whole logged history: a list, a string when the
        plugin truncated it, or None when it was not logged.
        """
        stored = 0
        self.ready = None
        if store_content:
            stored = self._link_messages(rnd, messages)
        rounds = self.doc["rounds"]
        self.keys.update(round_keys(rnd))
        if not rounds or rounds[-1]["timestamp"] <= rnd["timestamp"]:
            rnd["round"] = len(rounds) + 1
            rounds.append(rnd)
        else:
            # A late line (another pod, a lagging writer): keep event-time order; equal
            # times keep arrival order so that a replay gives the same numbering.
            at = len(rounds) - 1
            while at > 0 and rounds[at - 1]["timestamp"] > rnd["timestamp"]:
                at -= 1   # late lines are usually only a little late: walk back
            rounds.insert(at, rnd)
            for i in range(at, len(rounds)):
                rounds[i]["round"] = i + 1
        self.dirty = True
        return stored

    def _link_messages(self, rnd: dict, messages: object) -> int:
        if isinstance(messages, str):
            # Cut by the plugin's value_length_limit, or nested too deeply and kept as
            # its JSON text (nested_as_text): kept as given, flagged, and it cannot
            # extend a chain; the next round starts a new one.
            rnd["messages"] = messages
            if "messages" not in rnd.get("nested_as_text", ()):
                rnd["messages_truncated"] = True
            self._set_tip(rnd["key"], [])
            return 1
        if not isinstance(messages, list):
            return 0
        base = self.tip_context()
        shared = common_prefix(base, messages) if base else 0
        if shared:
            rnd["messages_offset"] = shared
            rnd["context_key"] = self.doc["context_tip"]
            rnd["messages"] = messages[shared:]
            # Reuse the stored objects for the shared part, so memory holds each
            # message once however often it was re-logged.
            context = base[:shared]
            context.extend(rnd["messages"])
        else:
            rnd["messages"] = messages
            context = messages
        self._set_tip(rnd["key"], context)
        return len(rnd["messages"])

    def _set_tip(self, key: str, context: list) -> None:
        self.doc["context_tip"] = key
        self._tip_context = context

    def tip_context(self) -> list:
        """Full message list of the latest request (rebuilt from the rounds once after a load)."""
        if self._tip_context is None:
            tip = self.doc.get("context_tip")
            by_key = {r["key"]: r for r in self.doc["rounds"]}
            self._tip_context = full_context(by_key, by_key[tip]) if tip in by_key else []
        return self._tip_context

    def summarise(self) -> None:
        """Recompute the session totals from its rounds (cheap next to serialising it)."""
        summarise(self.doc)


def round_keys(rnd: dict) -> tuple:
    """The identities a stored round answers to: its key (the hash of its whole line)
    and, for a round of an older version, whose key was the client's request_id, where
    its line was in a file (``fingerprint:offset``, parse_ahead.position_key), which its
    ``source`` still says. A round keyed by its line's hash answers to that alone: a
    place is not a line (a file truncated and regrown can hold a new line at an old
    offset under an unchanged first KiB), and re-reading the same place gives the same
    bytes, hence the same hash."""
    key = rnd["key"]
    source = rnd.get("source")
    if not str(key).startswith(LINE_KEY_PREFIX) and isinstance(source, dict) \
            and "fp" in source and "offset" in source:
        return key, f"{source['fp']}:{source['offset']}"
    return (key,)


def round_question(rnd: dict) -> object:
    """The round's question (the request's last message)."""
    return rnd.get("question")


def common_prefix(base: list, messages: list) -> int:
    """Length of the common prefix of two message lists: messages that are the same JSON
    value, types and key order included.

    Python's ``==`` takes ``1.0`` and ``true`` for ``1`` and a dict for another of the same
    items in any order: a request re-logging ``{"b": 2, "a": 1}`` where the previous one
    had ``{"a": 1, "b": 2}`` shared it, and the session then gave the previous spelling
    back for this request (tests/test_attack_prefix_dedup_same_json.py). ``==`` still
    finds the prefix, in C; the messages a line took from the previous one's decode
    (history.py) are the very objects, hence the same JSON; when others are in it (a line
    parsed whole), the prefix is compared again as JSON (:func:`_same_json_run`)."""
    n = len(base)
    if len(messages) >= n and messages[:n] == base:  # the usual case, compared in C
        shared = n
    else:
        shared = 0
        limit = min(n, len(messages))
        while shared < limit and base[shared] == messages[shared]:
            shared += 1
    head = base if shared == n else base[:shared]
    if shared and any(map(is_not, head, messages)):
        earlier, later = [], []
        for a, b in zip(head, messages):
            if a is not b:
                earlier.append(a)
                later.append(b)
        if not _same_json_run(earlier, later):
            for i in range(shared):
                a, b = base[i], messages[i]
                try:
                    if a is not b and not same_json(a, b):
                        return i
                except RecursionError:
                    return i   # not shared: the message is stored whole, as logged
    return shared


def _same_json_run(a: list, b: list) -> bool:
    """Two lists equal by ``==`` are the same JSON: compared as marshal's version-0 bytes,
    which hold no references nor interning marks, only each value's type, its members'
    order and its value (``1``, ``1.0``, ``True``, ``-0.0`` differ), in C, in one call
    for all the messages of a prefix (a call per message costs as much as
    :func:`ondisk.same_json`)."""
    try:
        return marshal.dumps(a, 0) == marshal.dumps(b, 0)
    except ValueError:   # nested deeper than marshal goes: compared one by one
        return False


def full_context(by_key: dict, rnd: dict) -> list:
    """The whole message list ``rnd``'s request carried, rebuilt from the chain."""
    chain = []
    seen = set()
    current = rnd
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        if not current.get("messages_offset"):
            break
        current = by_key.get(current.get("context_key"))
    context: list = []
    for link in reversed(chain):
        messages = link.get("messages")
        if not isinstance(messages, list):
            context = []
            continue
        del context[link.get("messages_offset") or 0:]
        context.extend(messages)
    return context


def summarise(doc: dict) -> None:
    # One pass over the rounds (it runs for every session a checkpoint writes, over all
    # of its rounds); the keys are assigned in their document order.
    rounds = doc["rounds"]
    logged = [0] * len(SUMMARY_TOKEN_FIELDS)
    columns = [0] * len(tokens.COLUMNS)
    priced, unpriced, reported = [], [], []
    models: dict = {}
    consumers: dict = {}
    of_round = tokens.of_round
    for r in rounds:
        get = r.get
        for i, (_total, field) in enumerate(SUMMARY_TOKEN_FIELDS):
            logged[i] += get(field) or 0
        for i, value in enumerate(of_round(r).values()):
            columns[i] += value
        cost = get("cost_usd")
        if cost is None:
            unpriced.append(r)
        else:
            priced.append(cost)
        if get("provider_cost_usd") is not None:
            reported.append(r)
        model = get("model")
        if model:
            models[model] = None
        consumer = get("consumer")
        if consumer:
            consumers[consumer] = None
    doc["messages_count"] = len(rounds)
    doc["created_at"] = rounds[0]["timestamp"] if rounds else None
    doc["updated_at"] = rounds[-1]["timestamp"] if rounds else None
    for (total_name, _field), total in zip(SUMMARY_TOKEN_FIELDS, logged):
        doc[total_name] = total
    doc["tokens"] = dict(zip(tokens.COLUMNS, columns))
    # fsum: the total is the correctly rounded sum whatever the order rounds came in.
    doc["total_cost_usd"] = math.fsum(priced) if priced or not unpriced else None
    doc["unpriced_rounds"] = len(unpriced)
    # Which price data priced the rounds ("unrecorded": priced by a version that did not
    # say; --reprice records it).
    doc["priced_by"] = price_summary(rounds)
    doc["provider_cost"] = {
        "rounds": len(reported),
        "usd": math.fsum(r["provider_cost_usd"] for r in reported),
        # Our cost of the same rounds (priced ones), so the two compare like for like.
        "ours_usd": math.fsum(r["cost_usd"] for r in reported if r.get("cost_usd") is not None),
        "unpriced_rounds": sum(1 for r in reported if r.get("cost_usd") is None),
    } if reported else None
    doc["unpriced_models"] = _unique(r.get("model") or "(no model)" for r in unpriced)
    doc["model"] = rounds[-1].get("model") if rounds else None
    doc["models"] = list(models)
    doc["consumers"] = list(consumers)


def _unique(values) -> list:
    return list(dict.fromkeys(values))
