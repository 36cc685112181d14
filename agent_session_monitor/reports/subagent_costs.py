"""What sub-agents cost, as a StoreReader answers it: the spawn links resolved once per
reader, one session's roll-up (own cost, children, cost with every descendant), the
costs with sub-agents of every spawning session, and what each group's sub-agent trees
spent in other groups. Mixed into StoreReader, whose ``db`` and ``_links`` it uses.
"""

from __future__ import annotations

import math

from ..session_keys import parse_session_key
from ..store.subagents import resolve_parents, rollups
from . import window
from .aggregates import _usd


class SubagentCosts:
    """The sub-agent methods of :class:`reader.StoreReader`."""

    def parent_links(self) -> dict[str, str]:
        """{child session id: parent session id}, resolved from every claim in the
        store (subagents.resolve_parents: first claim by event time, no cycles)."""
        if self._links is None:
            self._links = resolve_parents(self.db.execute(
                "SELECT s.session_id, p.child, p.claimed_at FROM spawns p "
                "JOIN sessions s ON s.sid = p.sid WHERE s.unsessioned = 0"))
        return self._links

    def _own(self, session_ids: list[str], since: str | None = None,
             until: str | None = None) -> dict[str, tuple]:
        """session id -> (own cost, rounds, unpriced rounds), of rounds in [since, until)."""
        found: dict[str, tuple] = {}
        src, params = window.source(since, until)
        for i in range(0, len(session_ids), 500):
            chunk = session_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for sid, cost, rounds, unpriced in self.db.execute(
                    f"SELECT s.session_id, SUM(u.cost), SUM(u.rounds), SUM(u.unpriced_rounds) "
                    f"FROM sessions s JOIN {src} u ON u.sid = s.sid WHERE s.unsessioned = 0 "
                    f"AND s.session_id IN ({marks}) GROUP BY s.session_id",
                    [*params, *chunk]):
                found[sid] = (None if rounds and unpriced == rounds else cost, rounds, unpriced)
        return found

    def rollup(self, session_id: str) -> dict | None:
        """One session's own cost, its parent, its children (each with own and rolled-up
        cost) and its cost with every descendant sub-agent; None when the session has no
        round in the store."""
        links = self.parent_links()
        tree = {session_id} | _descendants(links, session_id)
        own = self._own(sorted(tree))
        if session_id not in own:
            return None
        rolled = rollups(own, {c: p for c, p in links.items() if c in tree})
        mine = rolled[session_id]
        children = []
        for child in sorted((c for c, p in links.items() if p == session_id),
                            key=lambda c: (own.get(c, (None,))[0] is None, -(own.get(c, (0,))[0] or 0), c)):
            r = rolled.get(child)
            key = parse_session_key(child)
            children.append({"session_id": child, "agent": key.agent, "kind": key.kind,
                             "in_store": r is not None,
                             "cost_usd": _usd(r.cost) if r else None, "rounds": r.rounds if r else 0,
                             "unpriced_rounds": r.unpriced_rounds if r else 0,
                             "cost_with_subagents_usd": _usd(r.cost_with_subagents) if r else None,
                             "subagents": r.descendants if r else 0})
        return {"session_id": session_id, "parent": links.get(session_id),
                "cost_usd": _usd(mine.cost), "rounds": mine.rounds,
                "unpriced_rounds": mine.unpriced_rounds,
                "cost_with_subagents_usd": _usd(mine.cost_with_subagents),
                "rounds_with_subagents": mine.rounds_with_subagents,
                "unpriced_rounds_with_subagents": mine.unpriced_with_subagents,
                "subagents": mine.descendants, "children": children}

    def costs_with_subagents(self) -> dict[str, tuple]:
        """session id -> (cost with sub-agents, rounds with sub-agents) of every session
        that has descendants in the store (the others': their own)."""
        links = self.parent_links()
        if not links:
            return {}
        members = sorted(set(links) | set(links.values()))
        own = self._own(members)
        rolled = rollups(own, links)
        return {sid: (_usd(r.cost_with_subagents), r.rounds_with_subagents)
                for sid, r in rolled.items() if r.descendants}

    def spawned_by(self, by: str, since: str | None = None,
                   until: str | None = None) -> dict:
        """Per group of ``by`` (agent, channel or kind of the *root* session, the one
        that spawned the tree): (cost, rounds, sessions) of its linked descendant
        sub-agents' rounds in [since, until) that are not in that group already (a
        sub-agent of agent main is agent main's own). A view next to the groups' own
        figures, never added into them."""
        links = self.parent_links()
        if not links:
            return {}
        roots: dict[str, str] = {}
        for child in links:
            node, seen = child, set()
            while node in links and node not in seen:
                seen.add(node)
                node = links[node]
            roots[child] = node
        own = self._own(sorted(links), since, until)
        groups = {}
        column = {"agent": "agent", "channel": "channel", "kind": "kind"}[by]
        root_ids = sorted(set(roots.values()) | set(links))
        group_of: dict[str, object] = {}
        for i in range(0, len(root_ids), 500):
            chunk = root_ids[i:i + 500]
            for sid, value in self.db.execute(
                    f"SELECT session_id, {column} FROM sessions WHERE unsessioned = 0 AND "
                    f"session_id IN ({','.join('?' * len(chunk))})", chunk):
                group_of[sid] = value
        for child, (cost, rounds, unpriced) in own.items():
            root = roots[child]
            if root not in group_of or group_of.get(child) == group_of[root]:
                # The spawning session is not in the store, or the sub-agent counts in
                # the same group already (agent main's own sub-agents are agent main's).
                continue
            acc = groups.setdefault(group_of[root], [[], 0, 0, 0])
            if cost is not None:
                acc[0].append(cost)
            acc[1] += rounds
            acc[2] += unpriced
            acc[3] += 1
        return {k: {"cost": _usd(math.fsum(v[0])) if v[0] else (None if v[2] else 0.0),
                    "rounds": v[1], "unpriced_rounds": v[2], "sessions": v[3]}
                for k, v in groups.items()}


def _descendants(links: dict[str, str], session_id: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for c, p in links.items():
        children.setdefault(p, []).append(c)
    found: set[str] = set()
    stack = list(children.get(session_id, ()))
    while stack:
        node = stack.pop()
        if node not in found and node != session_id:
            found.add(node)
            stack.extend(children.get(node, ()))
    return found
