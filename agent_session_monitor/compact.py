"""The on-disk form of a session document: text that every request re-logs is stored once.

Two things repeat round after round besides the messages (which ``session.py`` already
stores linearly):

- Claude's top-level ``system`` prompt, often kilobytes, sent again with every request.
  On disk it lives once in ``doc["systems"]`` (keyed by a short hash) and each round
  carries ``system_ref``.
- A round's ``answer`` and ``tool_calls`` come back in the next request as its first
  new message (the assistant turn; its tool calls without their ``index``). On disk they
  are left out and the round carries ``answer_in_next_message`` /
  ``tool_calls_in_next_message: true``: they are the content / tool calls of the first
  new message of the first later round that extends it.
- What follows from position: ``round`` (1..N), ``key`` when it is the ``request_id``,
  ``context_key`` when it is the previous round's key.

:func:`compact` is applied when a session is written and :func:`expand` when it is read,
so everything in memory (and every reader) sees plain ``system`` and ``answer`` fields.
``expand(compact(doc)) == doc`` for every document (tests/test_compact.py).
"""

from __future__ import annotations

import hashlib
import json


def compact(doc: dict) -> dict:
    """A copy of ``doc`` in its on-disk form (``doc`` itself is not changed)."""
    rounds = [dict(r) for r in doc["rounds"]]
    systems: dict[str, object] = {}
    for rnd in rounds:
        system = rnd.get("system")
        if system is not None:
            ref = _ref(system)
            while ref in systems and systems[ref] != system:
                ref += "x"   # a hash collision must never swap two prompts
            systems.setdefault(ref, system)
            del rnd["system"]
            rnd["system_ref"] = ref
    by_key = {r["key"]: r for r in rounds}
    continued: set[str] = set()
    for rnd in rounds:
        base = _extended(rnd, by_key)
        if base is None or base["key"] in continued:
            continue
        continued.add(base["key"])   # only the first round continuing it: expand() agrees
        if "answer" in base and _first_new_content(rnd) == base["answer"]:
            del base["answer"]
            base["answer_in_next_message"] = True
        if base.get("tool_calls") and _first_new_tool_calls(rnd) == base["tool_calls"]:
            del base["tool_calls"]
            base["tool_calls_in_next_message"] = True
    previous = None
    for i, rnd in enumerate(rounds):
        key = rnd["key"]
        if rnd.get("context_key") is not None and rnd["context_key"] == previous:
            del rnd["context_key"]
            rnd["context_is_previous"] = True
        previous = key
        if rnd.get("round") == i + 1:
            del rnd["round"]
        if key == rnd.get("request_id"):
            del rnd["key"]
    out = {k: v for k, v in doc.items() if k not in ("rounds", "systems")}
    if systems:
        out["systems"] = systems
    out["rounds"] = rounds
    return out


def expand(doc: dict) -> dict:
    """Turn an on-disk document back into the plain form, in place; returns it."""
    systems = doc.pop("systems", None) or {}
    rounds = doc.get("rounds") or []
    previous = None
    for i, rnd in enumerate(rounds):
        rnd.setdefault("round", i + 1)
        if "key" not in rnd:
            rnd["key"] = rnd.get("request_id")
        if rnd.pop("context_is_previous", False):
            rnd["context_key"] = previous
        previous = rnd["key"]
        ref = rnd.pop("system_ref", None)
        if ref is not None:
            rnd["system"] = systems.get(ref)
    by_key = {r.get("key"): r for r in rounds}
    continued: set = set()
    for rnd in rounds:
        base = _extended(rnd, by_key)
        if base is None or base.get("key") in continued:
            continue
        continued.add(base.get("key"))
        if base.get("answer_in_next_message") and "answer" not in base:
            content = _first_new_content(rnd)
            if content is not _MISSING:
                base["answer"] = content
                del base["answer_in_next_message"]
        if base.get("tool_calls_in_next_message") and "tool_calls" not in base:
            calls = rnd["messages"][0].get("tool_calls") if rnd["messages"] else None
            if isinstance(calls, list):
                base["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
                del base["tool_calls_in_next_message"]
    return doc


_MISSING = object()


def _extended(rnd: dict, by_key: dict) -> dict | None:
    """The round ``rnd`` directly continues: its new messages start right after that
    round's whole request (so its first new message is that round's answer turn)."""
    base = by_key.get(rnd.get("context_key"))
    if base is None or not isinstance(rnd.get("messages"), list):
        return None
    if not isinstance(base.get("messages"), list):
        return None
    if rnd.get("messages_offset") != (base.get("messages_offset") or 0) + len(base["messages"]):
        return None
    return base


def _first_new_content(rnd: dict) -> object:
    messages = rnd["messages"]
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "assistant" \
            and "content" in messages[0]:
        return messages[0]["content"]
    return _MISSING


def _first_new_tool_calls(rnd: dict) -> object:
    """The first new message's tool calls with the ``index`` Higress adds when it
    assembles a streamed answer's calls (its i-th call has index i)."""
    messages = rnd["messages"]
    if not messages or not isinstance(messages[0], dict) or messages[0].get("role") != "assistant":
        return _MISSING
    calls = messages[0].get("tool_calls")
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "index" not in c for c in calls):
        return _MISSING
    return [{**call, "index": i} for i, call in enumerate(calls)]


def _ref(system: object) -> str:
    text = system if isinstance(system, str) else json.dumps(system, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
