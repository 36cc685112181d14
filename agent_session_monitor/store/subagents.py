"""Sub-agents: which session spawned which, read from the log alone, and their cost.

OpenClaw's ``sessions_spawn`` tool answers ``{"status": "accepted", "childSessionKey":
"agent:<id>:subagent:<uuid>", "runId": ..., ...}`` (``src/agents/subagent-spawn.ts``),
as a tool result whose text is that JSON (``jsonResult`` in ``src/agents/tools/
common.ts``). The gateway logs it inside the parent's *next* request, in ``messages``;
the child's own requests carry the child key as their session id.

A **claim** is such a tool result found in a parent's request: (parent session, child
key, the time of the round that first carried it). The monitor stores each claim once,
in the round that first carried it (``"spawned": [child key, ...]``), so the link
survives restarts, re-reads and index rebuilds, whichever order the parent's and the
child's rounds arrive in (another pod, an older rotated file).

A claim is text a client wrote, so it decides nothing but the "with sub-agents" view:
- only a tool result of a ``sessions_spawn`` call (matched by its tool call id) whose
  JSON says ``accepted`` and names a sub-agent key counts;
- a child has one parent: the earliest claim by event time (ties: the smaller parent id);
- a session is never its own ancestor: a claim that would close a cycle is ignored;
- every total (per session, model, day, agent, channel, the grand total) sums each
  round's own cost exactly once; the roll-up only *adds up* descendants' costs for the
  "with sub-agents" column, and a child's own cost stays where its rounds are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable

from ..session_keys import parse_session_key

SPAWN_TOOL = "sessions_spawn"
_MAX_RESULT_CHARS = 1 << 16   # a spawn result is a few hundred bytes; never parse more


def spawn_claims(messages: object) -> list[str]:
    """Child session keys that accepted ``sessions_spawn`` results in ``messages`` (a
    request's logged history, OpenAI or Anthropic shaped) name, in order, once each."""
    if not isinstance(messages, list):
        return []
    names: dict[str, str] = {}   # tool call id -> tool name
    found: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role == "assistant":
            calls = msg.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    fn = call.get("function")
                    name = fn.get("name") if isinstance(fn, dict) else call.get("name")
                    if isinstance(name, str):
                        names[call["id"]] = name
            if isinstance(content, list):   # Anthropic tool_use blocks
                for block in content:
                    if (isinstance(block, dict) and block.get("type") == "tool_use"
                            and isinstance(block.get("id"), str)
                            and isinstance(block.get("name"), str)):
                        names[block["id"]] = block["name"]
        elif role == "tool":
            _claim(_tool_name(names, msg.get("tool_call_id")), content, found)
        elif role == "user" and isinstance(content, list):   # Anthropic tool_result blocks
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    _claim(_tool_name(names, block.get("tool_use_id")), block.get("content"), found)
    return found


def _tool_name(names: dict[str, str], call_id: object) -> str | None:
    return names.get(call_id) if isinstance(call_id, str) else None


def _claim(tool: object, content: object, found: list[str]) -> None:
    if tool != SPAWN_TOOL:
        return
    text = _text_of(content)
    if text is None or "childSessionKey" not in text:
        return
    try:
        result = json.loads(text)
    except (ValueError, RecursionError):
        return
    if not isinstance(result, dict) or result.get("status") != "accepted":
        return
    child = result.get("childSessionKey")
    if isinstance(child, str) and parse_session_key(child).is_subagent and child not in found:
        found.append(child)


def _text_of(content: object) -> str | None:
    """A tool result's text: a string, or the text blocks of a content list."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if not parts or not all(isinstance(p, str) for p in parts):
            return None
        text = "".join(parts)
    else:
        return None
    return text if len(text) <= _MAX_RESULT_CHARS else None


def note_spawns(doc: dict, rnd: dict, messages: object) -> None:
    """Record in ``rnd`` the claims its request carries that no round of ``doc`` (the
    session it joins) recorded yet: every later request re-logs the same tool result.
    A claim recorded on a later round (this line arrived late) moves to this one, so a
    claim's time is the earliest round that carried it, whatever the reading order."""
    claims = spawn_claims(messages)
    if not claims:
        return
    holder: dict[str, dict] = {}
    for r in doc.get("rounds") or ():
        for c in r.get("spawned") or ():
            holder.setdefault(c, r)
    mine = []
    for c in claims:
        if c == doc.get("session_id"):
            continue
        held = holder.get(c)
        if held is not None and held is not rnd:
            if (held.get("timestamp") or "") <= (rnd.get("timestamp") or ""):
                continue
            held["spawned"] = [x for x in held["spawned"] if x != c]
            if not held["spawned"]:
                del held["spawned"]
        mine.append(c)
    if mine:
        rnd["spawned"] = mine


def doc_claims(doc: dict) -> list[tuple[str, str]]:
    """(child key, time of the earliest round that claims it) of one session document."""
    first: dict[str, str] = {}
    for r in doc.get("rounds") or ():
        spawned = r.get("spawned")
        if not isinstance(spawned, list):
            continue
        at = r.get("timestamp") or ""
        for child in spawned:
            if isinstance(child, str) and (child not in first or at < first[child]):
                first[child] = at
    return sorted(first.items())


def resolve_parents(claims: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """(parent session id, child key, claimed at) -> {child: parent}.

    The earliest claim of a child wins (ties: the smaller parent id); a claim of
    oneself, or one that would make a session its own ancestor, is ignored. The result
    depends only on the set of claims, not on the order they were read in."""
    parent_of: dict[str, str] = {}
    for parent, child, _at in sorted(claims, key=lambda c: (c[2] or "", c[0], c[1])):
        if child == parent or child in parent_of:
            continue
        node, seen = parent, set()
        while node is not None and node not in seen:
            if node == child:
                break
            seen.add(node)
            node = parent_of.get(node)
        if node == child:
            continue   # child is an ancestor of parent: a cycle
        parent_of[child] = parent
    return parent_of


@dataclass
class Rollup:
    """A session's own cost and its cost with every descendant sub-agent."""

    session_id: str
    cost: float | None            # own rounds (None: every round unpriced)
    rounds: int
    unpriced_rounds: int
    children: list[str] = field(default_factory=list)
    descendants: int = 0
    cost_with_subagents: float | None = None
    rounds_with_subagents: int = 0
    unpriced_with_subagents: int = 0


def rollups(own: dict[str, tuple[float | None, int, int]], parent_of: dict[str, str]) -> dict[str, Rollup]:
    """``own``: session id -> (own cost, rounds, unpriced rounds) of the sessions in the
    store. Each session's roll-up adds the own figures of its descendants that are in
    the store, each once (the links form a forest: resolve_parents makes sure)."""
    children: dict[str, list[str]] = {}
    for child, parent in parent_of.items():
        if child in own:
            children.setdefault(parent, []).append(child)
    result: dict[str, Rollup] = {}
    for sid, (cost, rounds, unpriced) in own.items():
        costs = [] if cost is None else [cost]
        total_rounds, total_unpriced, count = rounds, unpriced, 0
        stack = list(children.get(sid, ()))
        seen = {sid}
        while stack:
            node = stack.pop()
            if node in seen:   # cannot happen with resolve_parents' output; never loop
                continue
            seen.add(node)
            c, r, u = own[node]
            if c is not None:
                costs.append(c)
            total_rounds += r
            total_unpriced += u
            count += 1
            stack.extend(children.get(node, ()))
        with_sub = math.fsum(costs) if costs else None
        result[sid] = Rollup(sid, cost, rounds, unpriced, sorted(children.get(sid, ())), count,
                             with_sub, total_rounds, total_unpriced)
    return result
