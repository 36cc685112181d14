"""The on-disk form of a session document: text that every request re-logs is stored once.

Two things repeat round after round besides the messages (which ``session.py`` already
stores linearly):

- Claude's top-level ``system`` prompt, often kilobytes, sent again with every request.
  On disk it lives once in ``doc["systems"]`` (keyed by a short hash) and each round
  carries ``system_ref``.
- A round's ``answer`` comes back in the next request as its first new message (the
  assistant turn). On disk the answer is left out and the round carries
  ``answer_in_next_message: true``; it is the content of the first new message of the
  first later round that extends it.

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
    out = {k: v for k, v in doc.items() if k not in ("rounds", "systems")}
    if systems:
        out["systems"] = systems
    out["rounds"] = rounds
    return out


def expand(doc: dict) -> dict:
    """Turn an on-disk document back into the plain form, in place; returns it."""
    systems = doc.pop("systems", None) or {}
    rounds = doc.get("rounds") or []
    for rnd in rounds:
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


def _ref(system: object) -> str:
    text = system if isinstance(system, str) else json.dumps(system, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
