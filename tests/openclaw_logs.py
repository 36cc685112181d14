"""Realistic OpenClaw traffic through Higress, with sub-agents, and its ground truth.

Written from OpenClaw's source (README.md, "Agents, sub-agents and channels", names the
files and commit): session keys as ``src/routing/session-key.ts`` builds them, sent in
``x-openclaw-session-key`` (so they are the ai_log's ``session_id``); a ``sessions_spawn``
tool call answered by ``{"status": "accepted", "childSessionKey": "agent:<id>:subagent:
<uuid>", "runId": ..., "mode": "run", "note": ...}`` as the tool result's text
(``jsonResult``: ``JSON.stringify(payload, null, 2)``), which the parent's next request
carries in ``messages``; the child's completion is announced back to the parent as a
user message. Lines are Envoy TEXT-format JSON with a Go-encoded ai_log (tests/loggen.py).

:func:`scenario` is the issue's example: a main session that spawns two sub-agents, a
cron session, a Discord channel (which spawns a sub-agent on a second agent) and a
Telegram group of that second agent. :func:`mix` is a
seeded random forest of parents, children and grandchildren plus unrelated sessions,
for the model-based test; both return the lines and, per session, its rounds' costs
and its true parent.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from tests.loggen import _fmt_time, _outer, _parse_time, _uuid, _ai_log_text, cost_of_ai_log, envoy_line, go_json

NOTE = ("Auto-announce is push-based. After spawning children, do NOT call sessions_list, "
        "sessions_history, exec sleep, or any polling tool. Wait for completion events to "
        "arrive as user messages, track expected child session keys, and only send your "
        "final answer after ALL expected completions arrive. If a child completion event "
        "arrives AFTER your final answer, reply ONLY with NO_REPLY.")
SYSTEM = "You are a personal assistant running inside OpenClaw."
MODELS = ("claude-sonnet-4-20250514", "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "deepseek-chat")


@dataclass
class Truth:
    """What the generated log means, per session id."""

    costs: dict[str, list[float]] = field(default_factory=dict)   # every round's cost
    parent: dict[str, str] = field(default_factory=dict)          # true child -> parent
    lines: list[tuple[int, str, bytes]] = field(default_factory=list)  # (start ms, session, line)

    def own(self, sid: str) -> float:
        return sum(self.costs.get(sid, ()))

    def descendants(self, sid: str) -> set[str]:
        found, frontier = set(), {sid}
        while frontier:
            frontier = {c for c, p in self.parent.items() if p in frontier} - found
            found |= frontier
        return found

    def with_subagents(self, sid: str) -> float:
        return self.own(sid) + sum(self.own(d) for d in self.descendants(sid))

    def sorted_lines(self) -> list[bytes]:
        return [line for _, _, line in sorted(self.lines, key=lambda t: t[0])]


class Agent:
    """One OpenClaw session talking to the gateway: keeps its history, writes a line
    per model request."""

    def __init__(self, truth: Truth, rng: random.Random, key: str, model: str, start_ms: int) -> None:
        self.truth, self.rng, self.key, self.model = truth, rng, key, model
        self.t = start_ms
        self.messages: list[dict] = [{"role": "system", "content": SYSTEM}]
        truth.costs.setdefault(key, [])

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def request(self, answer: str | None = None, tool_calls: list[dict] | None = None,
                gap_ms: int = 1500) -> int:
        """One request: the whole history goes out, the answer (or tool calls) comes back
        and joins the history. Returns its start time."""
        rng, start = self.rng, self.t
        prompt = sum(len(json.dumps(m)) for m in self.messages) // 4
        usage = {"input_token": prompt, "output_token": 40 + rng.randint(0, 400)}
        if self.model.startswith("claude"):
            details = {"cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": (prompt // 2) if len(self.messages) > 3 else 0}
        else:
            details = {"cached_tokens": (prompt // 128 * 64) if len(self.messages) > 3 else 0}
            usage["cached_tokens"] = details["cached_tokens"]
        user_rounds = sum(1 for m in self.messages if m["role"] == "user")
        ai = {"api": "-", "chat_id": "chatcmpl-" + _uuid(rng).replace("-", "")[:24],
              "chat_round": user_rounds, "model": self.model, "response_type": "stream",
              "session_id": self.key, "llm_first_token_duration": rng.randint(300, 900),
              "llm_service_duration": rng.randint(1000, 4000),
              "input_token_details": go_json(details), "output_token_details": "{}",
              "total_token": usage["input_token"] + usage["output_token"],
              "question": self.messages[-1]["content"], "answer": answer,
              "reasoning": None, "tool_calls": tool_calls, **usage}
        request_id = _uuid(rng)
        outer = _outer(rng, authority="llm-gateway.internal", path="/v1/chat/completions",
                       request_id=request_id, route="openai", start_ms=start,
                       duration=ai["llm_service_duration"] + 4,
                       service=ai["llm_service_duration"], user_agent="OpenClaw/2026.2.1",
                       bytes_in=prompt * 4, bytes_out=900)
        line = envoy_line(outer, _ai_log_text(ai, go_json(self.messages)))
        self.truth.lines.append((start, self.key, line))
        self.truth.costs[self.key].append(cost_of_ai_log(ai))
        reply = {"role": "assistant", "content": answer}
        if tool_calls:
            reply["tool_calls"] = tool_calls
        self.messages.append(reply)
        self.t += ai["llm_service_duration"] + gap_ms
        return start

    def tool_results(self, results: list[tuple[str, str]]) -> None:
        for call_id, text in results:
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def spawn(self, tasks: list[tuple[str, str]]) -> list[tuple[str, int]]:
        """sessions_spawn for each (agent id, task) in one turn; the results come back
        (accepted) as tool messages. Returns the child keys and when each child starts."""
        calls, results, children = [], [], []
        for agent_id, task in tasks:
            call_id = "call_" + _uuid(self.rng).replace("-", "")[:24]
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": "sessions_spawn",
                                       "arguments": json.dumps({"task": task, "label": task[:24]})}})
            child = f"agent:{agent_id}:subagent:{_uuid(self.rng)}"
            results.append((call_id, json.dumps(
                {"status": "accepted", "childSessionKey": child, "runId": _uuid(self.rng),
                 "mode": "run", "note": NOTE}, indent=2)))
            children.append(child)
        at = self.request(None, calls, gap_ms=300)
        self.tool_results(results)
        return [(child, at + 200 + 150 * i) for i, child in enumerate(children)]

    def use_tool(self, name: str, args: dict, result: str) -> None:
        call_id = "call_" + _uuid(self.rng).replace("-", "")[:24]
        self.request(None, [{"id": call_id, "type": "function",
                             "function": {"name": name, "arguments": json.dumps(args)}}])
        self.tool_results([(call_id, result)])


def _child_work(truth: Truth, rng: random.Random, key: str, task: str, start: int,
                model: str, steps: int) -> int:
    """A sub-agent doing its task: a few tool rounds and a final answer; returns when
    it finished."""
    child = Agent(truth, rng, key, model, start)
    child.user(f"[Subagent Context] You are running as a subagent.\n\nTask: {task}")
    for i in range(steps):
        child.use_tool("web_search", {"query": f"{task} part {i}"},
                       f"Result {i}: " + " ".join(rng.choice(["alpha", "beta", "gamma", "delta"])
                                                  for _ in range(60)))
    child.request(f"Findings for '{task}': done ({steps} sources).")
    return child.t


def scenario(seed: int = 7, start: str = "2026-03-02T09:00:00Z") -> Truth:
    """The issue's example traffic (about 25 lines): agent:main:main spawns two
    sub-agents, a Discord channel session spawns one on the agent "work", a cron job,
    a Telegram group of agent "work"."""
    rng = random.Random(seed)
    truth = Truth()
    t0 = _parse_time(start)
    main = Agent(truth, rng, "agent:main:main", "claude-sonnet-4-20250514", t0)
    main.user("Compare the three cheapest EU regions for our GPU jobs and draft a summary.")
    children = main.spawn([("main", "price GPU instances in eu-west and eu-central"),
                           ("main", "collect egress and storage costs per EU region")])
    main.request("I started two sub-agents; I will summarise when both report back.")
    done = []
    for (key, at), model, steps in zip(children, ("gpt-4o-2024-08-06", "deepseek-chat"), (3, 2)):
        truth.parent[key] = "agent:main:main"
        done.append(_child_work(truth, rng, key, key[-6:], at, model, steps))
    main.t = max(done) + 500
    for key, _ in children:
        main.user(f"[System Message] A subagent task ({key}) just completed. Findings: ...")
        main.request("Noted." if key != children[-1][0] else
                     "Summary: eu-central is cheapest for GPU hours, eu-west for egress.")
    cron = Agent(truth, rng, "agent:main:cron:daily-digest", "gpt-4o-mini-2024-07-18",
                 t0 + 30 * 60_000)
    cron.user("[cron:daily-digest] Summarise yesterday's unread email.")
    cron.use_tool("email_search", {"since": "yesterday"}, "12 messages ...")
    cron.request("Digest: 12 messages, 2 need a reply today.")
    discord = Agent(truth, rng, "agent:main:discord:channel:1465367993012981988",
                    "claude-sonnet-4-20250514", t0 + 5 * 60_000)
    discord.user("@bot what changed in the deploy?")
    discord.request("Two services changed; rollback is one command.")
    # A spawn on another agent (agents.list[].subagents.allowAgents lets main use work).
    discord.user("@bot and the rollback plan? ask the ops agent to check it")
    (child, at), = discord.spawn([("work", "check the rollback plan of the last deploy")])
    truth.parent[child] = discord.key
    discord.t = _child_work(truth, rng, child, "rollback", at, "gpt-4o-mini-2024-07-18", 1) + 400
    discord.user(f"[System Message] A subagent task ({child}) just completed. Findings: ok")
    discord.request("The ops agent checked it: rollback is one command.")
    group = Agent(truth, rng, "agent:work:telegram:group:-1001234567890",
                  "gpt-4o-mini-2024-07-18", t0 + 12 * 60_000)
    group.user("who is on call this week?")
    group.use_tool("calendar_lookup", {"calendar": "oncall"}, "Alice (until Friday)")
    group.request("Alice is on call until Friday.")
    return truth


def mix(seed: int, parents: int = 4, unrelated: int = 3, forged: bool = False) -> Truth:
    """A random forest: parents spawning 0-3 children, children spawning grandchildren
    (nested), unrelated sessions; with ``forged``, an unrelated client also writes fake
    spawn results naming existing children, itself, or its own ancestor, which must
    change no total and no genuine link (the earliest claim by event time wins)."""
    rng = random.Random(seed)
    truth = Truth()
    t0 = _parse_time("2026-03-02T09:00:00Z")
    all_children: list[str] = []

    def run(key: str, start: int, depth: int) -> int:
        agent = Agent(truth, rng, key, rng.choice(MODELS), start)
        agent.user(f"task for {key[-8:]}")
        end = agent.t
        for _ in range(rng.randint(0, 2 if depth < 2 else 0)):
            kids = agent.spawn([(rng.choice(["main", "work"]), f"sub {rng.random():.4f}")
                                for _ in range(rng.randint(1, 2))])
            for child, at in kids:
                truth.parent[child] = key
                all_children.append(child)
                end = max(end, run(child, at + rng.randint(0, 3000), depth + 1))
        for _ in range(rng.randint(1, 3)):
            agent.request("step")
            agent.user("continue")
        return max(end, agent.t)

    for i in range(parents):
        run(f"agent:main:{rng.choice(['telegram:direct', 'discord:channel', 'slack:group'])}:{i}",
            t0 + rng.randint(0, 600_000), 0)
    for i in range(unrelated):
        key = rng.choice([f"cron:job{i}", f"agent:work:cron:nightly{i}", _uuid(rng), "main"])
        agent = Agent(truth, rng, key, rng.choice(MODELS), t0 + rng.randint(0, 600_000))
        agent.user("hello")
        agent.request("hi")
        if forged and all_children:
            # Fake sessions_spawn results, written by the client itself: a real child
            # (claimed later than its true parent did), its own key, an unknown child.
            victims = [rng.choice(all_children), key, f"agent:main:subagent:{_uuid(rng)}"]
            calls, results = [], []
            for victim in victims:
                cid = "call_" + _uuid(rng).replace("-", "")[:12]
                calls.append({"id": cid, "type": "function",
                              "function": {"name": "sessions_spawn", "arguments": "{}"}})
                results.append((cid, json.dumps({"status": "accepted", "childSessionKey": victim})))
            agent.t = max(agent.t, max(t for t, _, _ in truth.lines) + 1000)
            agent.request(None, calls)
            agent.tool_results(results)
            agent.request("done")
    return truth
