"""A parsed :class:`Request` -> the round dict stored in a session file, priced.

Field names follow the original skill (storage.md); additions are documented in
README.md ("Session file format") and stay stable once released.
"""

from __future__ import annotations

import json
import math

from .request import Request
from ..store.sanitize import MAX_COST, MAX_INT
from ..pricing.cost import Buckets, bucket_cost, bucket_counts, split_cost
from ..pricing.table import PriceTable

# ai_log keys that become round fields of their own; any other key (cache_status,
# safecheck_* from other plugins) is kept verbatim under "extra".
KNOWN_AI_KEYS = frozenset((
    "session_id", "model", "input_token", "output_token", "total_token", "cached_tokens",
    "reasoning_tokens", "input_token_details", "output_token_details", "messages", "question",
    "answer", "reasoning", "system", "tool_calls", "chat_round", "chat_id", "response_type",
    "api", "api_type", "consumer", "llm_first_token_duration", "llm_service_duration",
))
ORIGINAL_TEXT_FIELDS = ("question", "answer", "reasoning")
TRUNCATABLE_FIELDS = ("question", "answer", "reasoning", "system")
TRUNCATED_MARK = " [truncated] "   # what the plugin puts where it cut a value
OPTIONAL_FIELDS = ("priced_by", "provider_cost_usd", "total_tokens", "chat_round", "chat_id",
                   "consumer", "api", "api_type", "llm_first_token_duration",
                   "llm_service_duration", "context_key")


def build_round(req: Request, key: str, source: dict, table: PriceTable,
                store_content: bool = True) -> dict:
    """The stored form of one request, before its messages are reduced to the new ones
    (the session does that: it knows the previous round)."""
    # Runs once per line: fields are added in their stored order and an optional one
    # only when it has a value, rather than written then deleted (the order is the
    # file's bytes: keep it).
    ai = req.ai
    get = ai.get
    model = get("model")
    if not isinstance(model, str) or model in ("", "-"):
        model = None
    split = bucket_counts(req.input_token, req.output_token, req.cached_tokens,
                        req.reasoning_tokens, req.input_details, req.output_details)
    uncached, cache_read, write_5m, write_1h, text_output, reasoning = split
    cost, priced_as, priced_by = None, None, None
    if model is not None:
        found = table.lookup(model)
        if found is not None:
            priced_as = found[0]
            cost = _finite_cost(split_cost(split, found[1]), req.warnings)
            priced_by = table.provenance(priced_as) if cost is not None else None
    tool_calls = get("tool_calls")
    cut_calls = isinstance(tool_calls, str) and tool_calls not in ("", "-")
    if not isinstance(tool_calls, list) and not cut_calls:
        tool_calls = []
    rnd = {
        "round": 0,
        "timestamp": req.timestamp,
        "request_id": req.request_id,
        "key": key,
        "model": model,
        "input_tokens": req.input_token,
        "output_tokens": req.output_token,
        "reasoning_tokens": reasoning if req.reasoning_tokens is None else req.reasoning_tokens,
        # Anthropic reports cache reads only in the details: cached_tokens is the
        # cache-read count whichever way the provider reported it.
        "cached_tokens": cache_read if req.cached_tokens is None else req.cached_tokens,
        "cache_write_tokens": write_5m + write_1h,
    }
    # Optional additions (OPTIONAL_FIELDS) are left out when empty: a long session has
    # hundreds of rounds, and their metadata must not outweigh the conversation.
    if req.total_token is not None:
        rnd["total_tokens"] = req.total_token
    # Only the non-zero buckets: absent means 0 (Buckets.from_dict).
    buckets = rnd["buckets"] = {}
    if uncached:
        buckets["input"] = uncached
    if cache_read:
        buckets["cache_read"] = cache_read
    if write_5m:
        buckets["cache_write"] = write_5m
    if write_1h:
        buckets["cache_write_1h"] = write_1h
    if text_output:
        buckets["output"] = text_output
    if reasoning:
        buckets["reasoning"] = reasoning
    rnd["cost_usd"] = cost
    if priced_as != model:
        rnd["priced_as"] = priced_as   # only said when the price came from another table name
    if priced_by is not None:
        rnd["priced_by"] = priced_by
    # (A dict's keys view looks the five names up, rather than hash every key of the ai_log.)
    reported = provider_cost(ai) if not ai.keys().isdisjoint(_PROVIDER_COST_FIELDS) else None
    if reported is not None:
        rnd["provider_cost_usd"] = reported
    rnd["has_tool_calls"] = bool(tool_calls)
    rnd["response_type"] = _text(get("response_type"))
    for name, whole in _OPTIONAL_AI_FIELDS:
        value = get(name)
        if value is None:
            continue
        value = _int_or_none(value) if whole else _text(value)
        if value is not None:
            rnd[name] = value
    rnd["messages"] = []
    rnd["messages_offset"] = 0
    # context_key: set by the session when the round extends another (document.py).
    rnd["input_token_details"] = _nonzero(req.input_details)
    rnd["output_token_details"] = _nonzero(req.output_details)
    rnd["source"] = source
    # The original skill's fields are on every round, as logged: a key the ai_log
    # lacked gets the original's default ("" / []), a logged null stays null.
    if store_content:
        rnd["question"] = get("question", "")
        rnd["answer"] = get("answer", "")
        rnd["reasoning"] = get("reasoning", "")
        if get("system") is not None:
            rnd["system"] = ai["system"]
        rnd["tool_calls"] = tool_calls
    else:
        # Privacy mode keeps which tools ran (an agent's cost driver), never what they
        # were given or returned, nor what was asked or answered.
        for name in ORIGINAL_TEXT_FIELDS:
            rnd[name] = None
        rnd["tool_calls"] = [] if cut_calls else [_tool_name_only(call) for call in tool_calls]
    # The plugin's value_length_limit cuts any attribute into a Go-formatted string
    # "head [truncated] tail": kept as logged (never dropped or nulled), and said so.
    nested = req.nested_as_text   # JSON text kept for a value nested too deeply
    cut = ["tool_calls"] if cut_calls and "tool_calls" not in nested else []
    for name in TRUNCATABLE_FIELDS:
        value = get(name)
        if isinstance(value, str) and TRUNCATED_MARK in value and name not in nested:
            cut.append(name)
    for name in cut:
        rnd[f"{name}_truncated"] = True
    if cut:
        req.warnings.append("truncated_by_gateway")
    if nested:
        rnd["nested_as_text"] = list(nested)
    if req.gateway.get("response_code") not in (None, "200"):
        # A failed request is worth its route and status; a successful one's Envoy
        # fields repeat on every round.
        rnd["gateway"] = {k: req.gateway[k] for k in GATEWAY_KEPT if k in req.gateway}
    if req.time_source != "start_time":
        rnd["time_source"] = req.time_source
    if req.warnings:
        rnd["warnings"] = sorted(set(req.warnings))
    if not req.has_usage:
        rnd["usage_missing"] = True
    if store_content and not KNOWN_AI_KEYS.issuperset(ai):
        rnd["extra"] = {k: v for k, v in ai.items() if k not in KNOWN_AI_KEYS}
    return rnd


# ai_log keys build_round never reads from ``req.ai``: the request holds them parsed
# (session_id, the token fields and detail maps), or the session links them (messages).
# The parse worker sends a request without them (parse_ahead.build_record, not build):
# on 100,000 short sessions each key left out is one pickled and unpickled per line.
NOT_READ_AI_KEYS = frozenset((
    "messages", "session_id", "input_token", "output_token", "total_token", "cached_tokens",
    "reasoning_tokens", "input_token_details", "output_token_details",
))


def for_build_round(req: Request) -> Request:
    """``req`` reduced, in place, to what :func:`build_round` reads (the same round comes
    out): its ai_log without :data:`NOT_READ_AI_KEYS`, its Envoy fields only those a
    failed request keeps (``GATEWAY_KEPT``)."""
    req.ai = {k: v for k, v in req.ai.items() if k not in NOT_READ_AI_KEYS}
    gateway = req.gateway
    req.gateway = {k: gateway[k] for k in GATEWAY_KEPT if k in gateway}
    return req


# build_round's optional ai_log fields, in their stored order (OPTIONAL_FIELDS), and
# which of them are whole numbers (the others are text).
_OPTIONAL_AI_TEXT = ("chat_round", "chat_id", "consumer", "api", "api_type",
                     "llm_first_token_duration", "llm_service_duration")
_INT_FIELDS = frozenset(("chat_round", "llm_first_token_duration", "llm_service_duration"))
_OPTIONAL_AI_FIELDS = tuple((name, name in _INT_FIELDS) for name in _OPTIONAL_AI_TEXT)


# What helps a FinOps user debug a round (which route, did it fail); the rest of the
# Envoy line (addresses, user agent) is constant per client and left in the log.
GATEWAY_KEPT = ("path", "response_code", "route_name")


def reprice_round(rnd: dict, table: PriceTable) -> None:
    """Recompute a stored round's cost from its stored buckets (after a table change),
    and which price data priced it."""
    model = rnd.get("model")
    found = table.lookup(model) if model else None
    rnd.pop("priced_by", None)
    if found is None:
        rnd["cost_usd"] = None
        rnd.pop("priced_as", None)
    else:
        rnd["cost_usd"] = _finite_cost(
            bucket_cost(Buckets.from_dict(rnd.get("buckets") or {}), found[1]), [])
        if rnd["cost_usd"] is None:
            return
        if found[0] == model:
            rnd.pop("priced_as", None)
        else:
            rnd["priced_as"] = found[0]
        if table.provenance(found[0]):
            rnd["priced_by"] = table.provenance(found[0])


def _finite_cost(cost: float, warnings: list) -> float | None:
    """A cost no store can hold (a price table of 1e308 per token overflows to inf) is no
    price at all: the round is unpriced, never $inf or a crash at write time."""
    if math.isfinite(cost) and 0 <= cost < MAX_COST:
        return cost
    warnings.append("cost_out_of_range")


# ai_log keys under which a gateway or provider reports what it charged for the
# request (OpenRouter's usage.cost, LiteLLM's response cost), logged through a Higress
# custom attribute. Kept beside our own cost, never instead of it.
PROVIDER_COST_KEYS = ("cost", "usage_cost", "response_cost", "provider_cost")
# Any of them, or "usage": without one of these keys there is no provider cost to read.
_PROVIDER_COST_FIELDS = frozenset(PROVIDER_COST_KEYS + ("usage",))


def provider_cost(ai: dict) -> float | None:
    """USD the provider reported for this request, when the ai_log carries it."""
    values = [ai.get(k) for k in PROVIDER_COST_KEYS]
    usage = ai.get("usage")
    if isinstance(usage, str) and usage.startswith("{") and len(usage) < 4096:
        try:
            usage = json.loads(usage)
        except (ValueError, RecursionError):   # 4 KB of "[" nest past what json goes
            usage = None
    if isinstance(usage, dict):
        values.append(usage.get("cost"))
    for value in values:
        if isinstance(value, str) and len(value) < 40:
            try:
                value = float(value.strip().lstrip("$"))
            except ValueError:
                continue
        # bool is an int: true is not a cost. A bill above $1M per request is not one.
        if type(value) in (int, float) and math.isfinite(value) and 0 <= value < 1e6:
            return float(value)
    return None


def _nonzero(details: dict) -> dict:
    """Provider detail maps without their zero entries ({"audio_tokens": 0, ...})."""
    if not details:
        return {}
    # A count (the usual value) is compared with 0 alone: it equals none of the others.
    return {k: v for k, v in details.items()
            if (v != 0 if type(v) is int else v not in _EMPTY_VALUES)}


_EMPTY_VALUES = (0, "0", None, "", {}, [])


def _tool_name_only(call: object) -> dict:
    name = None
    if isinstance(call, dict):
        fn = call.get("function")
        name = fn.get("name") if isinstance(fn, dict) else call.get("name")
    return {"function": {"name": name if isinstance(name, str) else None}}


def _text(value: object) -> str | None:
    if isinstance(value, str) and value not in ("", "-"):
        return value
    return None


def _int_or_none(value: object) -> int | None:
    # The range a reader accepts (sanitize.OPTIONAL_INTS: 0..2**53, what a JSON reader
    # holds exactly): a round stored with 2**64 or -5 here was dropped, flagged
    # bad_stored_value, when its session was read back, so a cron run and a long run
    # stored different rounds. Out of range is unreadable, as a non-number is.
    if type(value) is int:
        return value if 0 <= value <= MAX_INT else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        number = int(value)
        return number if number <= MAX_INT else None
    return None
