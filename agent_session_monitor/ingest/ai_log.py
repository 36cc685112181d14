"""The fields of the ai_log, validated into a :class:`Request`: the session id, the token
counts, the provider detail maps and the event time (spec: input-format.md).
"""

from __future__ import annotations

import json
import math

from ..store.names import UNSESSIONED_ID
from ..values import MAX_TOKENS, canonical_time, too_deep
from .request import BadLine, Request, decode_noting_repeats

# Outer fields kept with the round: what a FinOps user filters or debugs by.
GATEWAY_FIELDS = ("authority", "method", "path", "response_code", "route_name", "duration",
                  "upstream_cluster", "user_agent")
TOKEN_FIELDS = ("input_token", "output_token", "total_token", "cached_tokens", "reasoning_tokens")
_NO_COUNTS = [None] * len(TOKEN_FIELDS)


def _build(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> Request:
    session_id = ai.get("session_id")
    if session_id is None or session_id == "":
        session_id = None
    elif not isinstance(session_id, str):
        # Never str() it: 123 and "123" would become one session.
        warnings.append("bad_session_id")
        session_id = None
    elif session_id.startswith(UNSESSIONED_ID):
        session_id = client_session_id(session_id)
        warnings.append("reserved_session_id")

    # TOKEN_FIELDS, in order (a bad one makes the line bad: the first is reported). A
    # plain count in range is taken inline: this runs for every line.
    counts = []
    for name in TOKEN_FIELDS:
        value = ai.get(name)
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOKENS):
            value = _token_count(name, value, warnings)
        counts.append(value)
    input_token, output_token, total_token, cached_tokens, reasoning_tokens = counts
    has_usage = counts != _NO_COUNTS

    usage = ai.get("usage")
    if type(usage) is str and usage.startswith("{") and len(usage) < 4096:
        _usage_text_repeats(usage, warnings)   # the text rounds.provider_cost reads
    timestamp, time_source = _event_time(outer, ai, read_time, warnings)
    request_id = outer.get("request_id")
    if not isinstance(request_id, str) or request_id in ("", "-"):
        request_id = None
    get = outer.get
    gateway = {k: v for k in GATEWAY_FIELDS if (v := get(k)) not in ("-", None)}
    return Request(
        ai=ai,
        session_id=session_id,
        request_id=request_id,
        timestamp=timestamp,
        time_source=time_source,
        gateway=gateway,
        input_token=input_token or 0,
        output_token=output_token or 0,
        total_token=total_token,
        cached_tokens=cached_tokens,
        reasoning_tokens=reasoning_tokens,
        input_details=_details(ai.get("input_token_details"), warnings, "input_token_details"),
        output_details=_details(ai.get("output_token_details"), warnings,
                                "output_token_details"),
        has_usage=has_usage,
        warnings=warnings,
    )


# Members whose value decides a bill: whose session, which price, how many tokens, the
# detail maps the buckets come from, a cost the provider reported (rounds.py's keys).
BILLING_KEYS = frozenset(("session_id", "model", *TOKEN_FIELDS, "input_token_details",
                          "output_token_details", "cost", "usage_cost", "response_cost",
                          "provider_cost", "usage"))


# Billing members whose value is an object (or the JSON text of one) whose own members
# decide the bill: the detail maps' buckets, the provider's usage.cost.
NESTED_BILLING_KEYS = ("input_token_details", "output_token_details", "usage")


def repeated_keys(ai: object, repeated: list, warnings: list[str]) -> None:
    """An ai_log holding a key twice (failure-scenarios P9). The plugin writes it with
    Go's json.Marshal of a map, which never repeats a key, and escapes every client text
    inside a value: a repeat was written by something else (a hand-made or altered log,
    a broken producer). Copies of a key that decides the bill and differ make the line
    bad: which one was paid cannot be known, and taking either lets that writer choose.
    That holds inside the objects the bill is read from too (a detail map's bucket, a
    usage.cost). Otherwise the round is kept (json's value) and flagged. ``repeated``:
    every object of the decoded ``ai`` that held a key twice, as ``(obj, pairs)``
    (request.decode_noting_repeats); repeats elsewhere (the messages) decide nothing."""
    seen = {id(obj): pairs for obj, pairs in repeated}
    found = False
    pairs = seen.get(id(ai))
    if pairs is not None:
        _check_copies(pairs, BILLING_KEYS, "the ai_log")
        found = True
    if isinstance(ai, dict):
        for key in NESTED_BILLING_KEYS:
            found = _nested_repeats(ai.get(key), seen, key, 0) or found
    if found:
        warnings.append("duplicate_key")


def _nested_repeats(value: object, seen: dict, where: str, depth: int) -> bool:
    """Whether the object ``value`` (a billing member) or one inside it held a key twice;
    raises BadLine when two copies of one of its keys differ (each decides a bucket)."""
    if not isinstance(value, dict) or depth > 3:
        return False
    found = False
    pairs = seen.get(id(value))
    if pairs is not None:
        _check_copies(pairs, None, where)
        found = True
    for key, inner in value.items():
        if isinstance(inner, dict):
            found = _nested_repeats(inner, seen, f"{where}.{key}", depth + 1) or found
    return found


def _usage_text_repeats(text: str, warnings: list[str]) -> None:
    try:
        value, repeated = decode_noting_repeats(text)
    except (ValueError, RecursionError):
        return   # no provider cost is read from it
    if repeated is not None and isinstance(value, dict):
        _nested_repeats(value, {id(o): p for o, p in repeated}, "usage", 0)
        warnings.append("duplicate_key")


def _check_copies(pairs: list, keys: frozenset | None, where: str) -> None:
    """BadLine when two copies of a key (of ``keys``; None: any) differ. Compared as
    JSON text: 1, 1.0 and true are three different values here, as they are to a bill."""
    first: dict = {}
    for key, value in pairs:
        if key in first:
            if (keys is None or key in keys) and _differ(first[key], value):
                raise BadLine("duplicate_key", f"{where} holds {key} twice with different "
                              f"values ({_describe(first[key])} and {_describe(value)}); the "
                              "plugin never repeats a key: not billed")
        else:
            first[key] = value


def _differ(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return True
    if isinstance(a, (dict, list)):
        return json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True)
    return a != b


def client_session_id(session_id: str) -> str:
    """The id a client-sent session id is stored under. Ids beginning with the reserved
    label of the unsessioned bucket get a suffix, so that no client can write into, or
    pass for, that bucket: the mapping is one-to-one (a suffixed id sent literally is
    suffixed again) and never gives the bare label."""
    if session_id.startswith(UNSESSIONED_ID):
        return session_id + CLIENT_SUFFIX
    return session_id


CLIENT_SUFFIX = " (sent by a client)"


def _token_count(name: str, value: object, warnings: list[str]) -> int:
    # bool is an int subclass in Python: True must not count as one token.
    if type(value) is int:
        count = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        # Older Higress logs counts as numeric strings: a documented coercion.
        try:
            count = int(value)
        except ValueError:  # more digits than int() accepts
            raise BadLine("out_of_range", f"{name} has too many digits") from None
    elif type(value) is float and math.isfinite(value) and value.is_integer():
        count = int(value)
    else:
        raise BadLine("bad_tokens", f"{name} is {_describe(value)}")
    if count < 0:
        raise BadLine("bad_tokens", f"{name} is negative ({count})")
    if count > MAX_TOKENS:
        raise BadLine("out_of_range", f"{name} is {_describe(count)}, more than any request")
    return count


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _details(value: object, warnings: list[str], where: str) -> dict:
    """Provider detail maps arrive as an object or as a JSON string of one."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        # Most lines carry one of a few maps ('{"cached_tokens":0}'): a map of plain
        # counts decoded and checked before is copied, not decoded again.
        known = _DETAILS_MEMO.get(value)
        if known is not None:
            return dict(known)
        text = value
        try:
            value, repeated = decode_noting_repeats(text)
        except (ValueError, RecursionError):
            warnings.append("bad_details")
            return {}
        if not isinstance(value, dict) or too_deep(value):
            # (Nested deeper than any reader walks, as one json cannot decode is.)
            warnings.append("bad_details")
            return {}
        if repeated is not None:
            # A bucket written twice inside the map's text: as in the ai_log itself.
            _nested_repeats(value, {id(o): p for o, p in repeated}, where, 0)
            warnings.append("duplicate_key")
        _check_counts(value, 0)
        if (repeated is None and len(text) <= _DETAILS_MEMO_CHARS
                and all(type(v) is int for v in value.values())):
            if len(_DETAILS_MEMO) >= _DETAILS_MEMO_LIMIT:
                _DETAILS_MEMO.clear()   # hostile logs can send endless distinct maps
            _DETAILS_MEMO[text] = dict(value)
        return value
    if not isinstance(value, dict):
        warnings.append("bad_details")
        return {}
    _check_counts(value, 0)
    return value


# Detail-map text -> its decoded map, for maps of plain counts only (a copy of one is a
# whole copy): nothing the caller does to its map reaches the memo.
_DETAILS_MEMO: dict[str, dict] = {}
_DETAILS_MEMO_LIMIT = 4096
_DETAILS_MEMO_CHARS = 512


def _check_counts(details: dict, depth: int) -> None:
    """Detail maps feed the price buckets: a count no store can hold makes the line bad."""
    for key, value in details.items():
        if type(value) is int:
            count = value
        elif isinstance(value, str) and value.isascii() and value.isdigit():
            count = int(value) if len(value) < 30 else MAX_TOKENS + 1
        elif isinstance(value, dict) and depth < 2:
            _check_counts(value, depth + 1)
            continue
        else:
            continue
        if count > MAX_TOKENS:
            raise BadLine("out_of_range", f"{key} is {_describe(count)}, more than any request")


def _event_time(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> tuple[str, str]:
    # The sources in order of trust; each looked up only when the previous one failed.
    for source in _TIME_SOURCES:
        if source == "ai_log":
            value = ai.get("start_time") or ai.get("timestamp")
        else:
            value = outer.get(source)
        if isinstance(value, str) and value not in ("", "-"):
            canonical = canonical_time(value)
            if canonical is not None:
                if canonical[1]:
                    warnings.append("naive_time")
                return canonical[0], source
            warnings.append("bad_time")
    warnings.append("time_from_read")
    return read_time, "read"


_TIME_SOURCES = ("start_time", "timestamp", "ai_log")
