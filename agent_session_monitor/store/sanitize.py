"""What every reader may assume of a stored session, made true on load.

The monitor writes only values a reader can handle (ingest/parse.py refuses the rest), but a
store outlives versions and hands: an older version kept 2**64 tokens, `NaN` costs and
year-1 times written `1-01-01T...`; a hand edit leaves "12" where a count belongs. One
such value used to stop `list`, the web pages and `--rebuild-index` for good. So a loaded
document is checked once, here, before anything reads it: a value no reader can use is
replaced by a neutral one (a count by 0, a cost by "unpriced", a time by its neighbour's)
and the round says so in its ``warnings`` (``bad_stored_value``, ``bad_time``). The file
itself is only rewritten by the monitor, when the session changes.
"""

from __future__ import annotations

import math

from ..values import MAX_TOKENS, canonical_time

COUNT_FIELDS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens",
                "cache_write_tokens")
OPTIONAL_INTS = ("total_tokens", "chat_round", "llm_first_token_duration",
                 "llm_service_duration")
TEXT_FIELDS = ("model", "consumer", "priced_as", "response_type", "api", "api_type", "chat_id",
               "request_id", "context_key", "system_ref", "agent")
DICT_FIELDS = ("input_token_details", "output_token_details", "buckets")
MAX_COST = 1e12            # dollars for one round: beyond it the number is not a price
MAX_INT = 2**53            # what a JSON reader (and a float) holds exactly
DOC_COUNTS = ("total_input_tokens", "total_output_tokens", "total_reasoning_tokens",
              "total_cached_tokens", "total_cache_write_tokens")


def sanitise_document(doc: dict, fallback_time: str) -> bool:
    """Make ``doc`` (as loaded, before compact.expand) safe for every reader, in place.
    Returns True when something was replaced."""
    changed = False
    rounds = doc.get("rounds")
    if not isinstance(rounds, list):
        doc["rounds"] = rounds = []
        changed = True
    if not all(type(r) is dict for r in rounds):
        doc["rounds"] = rounds = [r for r in rounds if type(r) is dict]
        changed = True
    times = [_time(r.get("timestamp")) for r in rounds]
    repaired = False
    for i, rnd in enumerate(rounds):
        problems = _round(rnd, i)
        if times[i] is None:
            # The neighbour's time keeps the rounds in order and the day right.
            earlier = next((t for t in reversed(times[:i]) if t is not None), None)
            later = next((t for t in times[i + 1:] if t is not None), None)
            times[i] = earlier or later or fallback_time
            problems.add("bad_time")
        if rnd.get("timestamp") != times[i]:
            rnd["timestamp"] = times[i]
        if problems:
            repaired = True
            warnings = rnd.get("warnings")
            rnd["warnings"] = sorted(set(warnings if isinstance(warnings, list) else [])
                                     | problems)
    if repaired or _doc_needs_summary(doc):
        # Totals follow from the rounds: recomputed from the repaired ones.
        from .document import summarise
        summarise(doc)
        changed = True
    if not isinstance(doc.get("session_id"), str):
        doc["session_id"] = str(doc.get("session_id"))
        changed = True
    return changed


def _time(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    found = canonical_time(value)
    return found[0] if found else None


def _round(rnd: dict, i: int) -> set:
    problems = set()
    for name in COUNT_FIELDS:
        value = rnd.get(name)
        if not (type(value) is int and 0 <= value <= MAX_TOKENS):
            if value is not None:
                problems.add("bad_stored_value")
            rnd[name] = _count(value)
    for name in OPTIONAL_INTS:
        value = rnd.get(name)
        if value is not None and not (type(value) is int and 0 <= value <= MAX_INT):
            del rnd[name]
            problems.add("bad_stored_value")
    cost = rnd.get("cost_usd")
    if cost is not None and not (type(cost) in (int, float) and math.isfinite(cost)
                                 and 0 <= cost < MAX_COST):
        rnd["cost_usd"] = None    # unpriced, never a wrong figure
        problems.add("bad_stored_value")
    for name in TEXT_FIELDS:
        value = rnd.get(name)
        if value is not None and not isinstance(value, str):
            rnd[name] = None
            problems.add("bad_stored_value")
    for name in DICT_FIELDS:
        value = rnd.get(name)
        if value is not None and not isinstance(value, dict):
            rnd[name] = {}
            problems.add("bad_stored_value")
    buckets = rnd.get("buckets")
    if buckets:
        for name, value in list(buckets.items()):
            if not (type(value) is int and 0 <= value <= MAX_TOKENS):
                del buckets[name]
                problems.add("bad_stored_value")
    key = rnd.get("key")
    if key is not None and not isinstance(key, str):
        rnd["key"] = f"invalid-key-{i}"
        problems.add("bad_stored_value")
    offset = rnd.get("messages_offset")
    if offset is not None and not (type(offset) is int and 0 <= offset <= MAX_INT):
        rnd["messages_offset"] = 0
        problems.add("bad_stored_value")
    number = rnd.get("round")
    if number is not None and not (type(number) is int and 0 < number <= MAX_INT):
        rnd["round"] = i + 1
        problems.add("bad_stored_value")
    messages = rnd.get("messages")
    if messages is not None and not isinstance(messages, (list, str)):
        rnd["messages"] = []
        problems.add("bad_stored_value")
    calls = rnd.get("tool_calls")
    if calls is not None and not isinstance(calls, (list, str)):
        rnd["tool_calls"] = []   # an original field: a script reads it from every round
        problems.add("bad_stored_value")
    flag = rnd.get("has_tool_calls")
    if flag is not None and type(flag) is not bool:
        rnd["has_tool_calls"] = bool(rnd.get("tool_calls"))
        problems.add("bad_stored_value")
    source = rnd.get("source")
    if source is not None and not (isinstance(source, dict)
                                   and all(isinstance(v, (str, int)) and type(v) is not bool
                                           for v in source.values())):
        del rnd["source"]
        problems.add("bad_stored_value")
    warnings = rnd.get("warnings")
    if warnings is not None and not (isinstance(warnings, list)
                                     and all(isinstance(w, str) for w in warnings)):
        rnd["warnings"] = [w for w in warnings if isinstance(w, str)] \
            if isinstance(warnings, list) else []
        problems.add("bad_stored_value")
    return problems


def _count(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 14:
        return int(value)     # "12": what older Higress logged, kept as a count
    return 0


def _doc_needs_summary(doc: dict) -> bool:
    for name in DOC_COUNTS:
        value = doc.get(name)
        if value is not None and not (type(value) is int and 0 <= value < 2**62):
            return True
    cost = doc.get("total_cost_usd")
    if cost is not None and not (type(cost) in (int, float) and math.isfinite(cost)
                                 and 0 <= cost < MAX_COST * 1e6):
        return True
    for name in ("created_at", "updated_at"):
        value = doc.get(name)
        if value is not None and _time(value) != value:
            return True
    count = doc.get("messages_count")
    if not (type(count) is int and 0 <= count <= MAX_INT):
        return True
    if not isinstance(doc.get("model"), (str, type(None))):
        return True
    for name in ("models", "consumers", "unpriced_models"):
        value = doc.get(name)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            return True
    unpriced = doc.get("unpriced_rounds")
    return unpriced is not None and not (type(unpriced) is int and 0 <= unpriced <= MAX_INT)
