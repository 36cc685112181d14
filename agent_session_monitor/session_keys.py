"""OpenClaw (Clawdbot) session keys -> agent id, channel and kind.

OpenClaw sends its session key in ``x-openclaw-session-key``, which Higress logs as the
round's ``session_id``. The key carries structure no other client uses; the shapes below
are the ones OpenClaw's own source builds (``src/routing/session-key.ts``:
``buildAgentMainSessionKey``, ``buildAgentPeerSessionKey``, ``resolveThreadSessionKeys``;
``src/sessions/session-key-utils.ts``: ``parseAgentSessionKey``, ``isCronSessionKey``,
``isSubagentSessionKey``; ``src/agents/subagent-spawn.ts``: the child key; README.md,
"Agents, sub-agents and channels", says which commit was read):

====================================================  =========  ==========  ========
key                                                   agent      channel     kind
====================================================  =========  ==========  ========
``agent:main:main``                                   main       -           main
``agent:work:telegram:direct:123``                    work       telegram    direct
``agent:main:direct:123`` (dmScope per-peer)          main       -           direct
``agent:main:whatsapp:acct2:direct:+15551234``        main       whatsapp    direct
``agent:main:discord:channel:1465367993012981988``    main       discord     channel
``agent:main:telegram:group:-100123``                 main       telegram    group
``agent:main:slack:channel:c01:thread:1700.5``        main       slack       thread
``agent:main:telegram:group:-100123:topic:42``        main       telegram    thread
``agent:main:subagent:6f1c...``                       main       -           subagent
``agent:main:cron:nightly`` / ``...:cron:j:run:r``    main       -           cron
``cron:nightly``                                      -          -           cron
``agent:main:hook:9b2e...`` / ``hook:9b2e...``        main / -   -           hook
``main``                                              -          -           main
anything else (a UUID from another client, ...)       -          -           other
====================================================  =========  ==========  ========

``dm`` is read as ``direct``: OpenClaw's docs wrote ``:dm:`` until openclaw#26506 fixed
them to what the code builds, and keys copied from those docs are in the wild.
The bare ``main`` / ``cron:`` / ``hook:`` forms are OpenClaw's tool-facing aliases; they
do not say which agent, so the agent is unknown (None). Matching is case-insensitive like
OpenClaw's (it lowercases keys); the agent id and channel are reported lowercased.
Unknown shapes are ``other``, never an error: a session id is client-controlled text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("direct", "group", "channel", "thread", "subagent", "cron", "hook", "main", "other")

# OpenClaw's VALID_ID_RE for agent ids; channels are plugin ids (telegram, discord,
# msteams, ...) of the same alphabet. Anything else in those places is not OpenClaw's.
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_PEER_KINDS = ("direct", "group", "channel", "dm")
# ":thread:<id>" (resolveThreadSessionKeys) and Telegram forum topics' ":topic:<id>".
_THREAD_MARKS = ("thread", "topic")
_MAX_KEY = 4096   # longer is no OpenClaw key: not even split


@dataclass(frozen=True)
class SessionKey:
    """What a session key says. ``peer`` is the conversation's id on its channel (a
    chat, a user, a job or a run id); ``thread`` the thread id of a ``thread`` key."""

    kind: str = "other"
    agent: str | None = None
    channel: str | None = None
    peer: str | None = None
    thread: str | None = None

    @property
    def is_subagent(self) -> bool:
        return self.kind == "subagent"


OTHER = SessionKey()


def parse_session_key(key: object) -> SessionKey:
    """The agent id, channel and kind of an OpenClaw session key; ``other`` (and no
    agent) for anything that is not one. Never raises, whatever ``key`` is."""
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        return OTHER
    raw = key.strip().split(":")   # peers keep their case (Matrix, Signal ids are opaque)
    parts = [p.lower() for p in raw]
    head = parts[0]
    if len(parts) == 1:
        return SessionKey(kind="main") if head == "main" else OTHER
    if head in ("cron", "hook"):
        rest = ":".join(raw[1:])
        return SessionKey(kind=head, peer=rest) if rest else OTHER
    if head != "agent" or len(parts) < 3 or not _ID.match(parts[1]):
        return OTHER
    agent, rest, rest_raw = parts[1], parts[2:], raw[2:]
    if not all(rest):
        return OTHER   # an empty part (agent:main::x): not a key OpenClaw builds
    # resolveThreadSessionKeys appends ":thread:<id>" to any base key (a channel, a
    # group, the main DM): the last such suffix is the thread.
    whole = _agent_key(agent, rest, rest_raw)
    marks = [i for i in range(1, len(rest) - 1) if rest[i] in _THREAD_MARKS]
    if whole.kind in ("subagent", "cron", "hook") or not marks:
        return whole   # their ids are opaque: a "thread" inside one is no suffix
    at = marks[-1]
    base = _agent_key(agent, rest[:at], rest_raw[:at])
    if base.kind in ("other", "subagent", "cron", "hook"):
        return SessionKey(agent=agent)
    return SessionKey(kind="thread", agent=agent, channel=base.channel, peer=base.peer,
                      thread=":".join(rest_raw[at + 1:]))


def _agent_key(agent: str, rest: list[str], rest_raw: list[str]) -> SessionKey:
    """``agent:<agent>:`` followed by ``rest`` (lowercased; ``rest_raw`` as written)."""
    first = rest[0]
    if len(rest) == 1:
        # agent:<id>:<mainKey> ("main" unless session.mainKey says otherwise)
        return SessionKey(kind="main", agent=agent) if _ID.match(first) else SessionKey(agent=agent)
    tail = ":".join(rest_raw[1:])
    if first in ("subagent", "cron", "hook"):
        return SessionKey(kind=first, agent=agent, peer=tail)
    if first in ("direct", "dm"):   # dmScope per-peer: no channel
        return SessionKey(kind="direct", agent=agent, peer=tail)
    if not _CHANNEL.match(first) or len(rest) < 3:
        return SessionKey(agent=agent)
    peer_kind, peer_at = rest[1], 2
    if peer_kind not in _PEER_KINDS and len(rest) >= 4 and rest[2] in ("direct", "dm"):
        peer_kind, peer_at = "direct", 3   # per-account-channel-peer: <channel>:<account>:direct
    if peer_kind not in _PEER_KINDS:
        return SessionKey(agent=agent)
    return SessionKey(kind="direct" if peer_kind == "dm" else peer_kind, agent=agent, channel=first,
                      peer=":".join(rest_raw[peer_at:]))
