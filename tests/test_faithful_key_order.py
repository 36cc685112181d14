"""A session file gives back every round's tool_calls and new messages as logged, key
order included (storage.md: "all of them are on disk in every round, as logged"; the
original skill wrote ``ai_log.get("tool_calls")`` and the messages exactly as json.loads
read them, so a script printing them or hashing their JSON saw the logged order).

The store replaces an assistant message that repeats the previous round's answer or
tool calls with a reference. Its comparison ignored the order of keys, so a message
whose tool calls differed from the round's only in key order (Higress logs a streamed
answer's calls as a Go struct: index, id, type, function; a non-streamed one as a Go
map: sorted keys; the agent re-sends them in its own order) came back in the round's
order, not its own. Generated here: seeded conversations whose calls and messages use
every such order, at both levels (the call and its function), with and without index."""

from __future__ import annotations

import itertools
import json
import os
import random
import unittest

from agent_session_monitor.store.sessions import read_document
from agent_session_monitor.store.names import is_session_file
from tests.helpers import TempDirTest, write_lines

SEED = int(os.environ.get("ASM_ORDER_SEED", "3"))


def ordered(rng: random.Random, items: dict) -> dict:
    keys = list(items)
    rng.shuffle(keys)
    return {k: items[k] for k in keys}


def call(rng: random.Random, n: int, index: int | None, style: str) -> dict:
    function = {"name": f"tool_{n % 3}", "arguments": json.dumps({"q": n})}
    body = {"id": f"call_{n}", "type": "function", "function": function}
    if index is not None:
        body["index"] = index
    if style == "struct":    # Go struct: index (omitted when 0), id, type, function
        order = ["index", "id", "type", "function"]
        return {k: body[k] for k in order if k in body}
    if style == "sorted":    # Go map
        return {k: (dict(sorted(v.items())) if k == "function" else v)
                for k, v in sorted(body.items())}
    return {k: (ordered(rng, v) if k == "function" else v) for k, v in ordered(rng, body).items()}


class ToolCallKeyOrder(TempDirTest):
    def test_tool_calls_and_messages_come_back_in_their_logged_key_order(self):
        rng = random.Random(SEED)
        log = self.tmp / "access.log"
        logged: dict[str, dict] = {}   # request id -> the ai_log as logged
        lines, n = [], 0
        styles = ["struct", "sorted", "random"]
        for s, (logged_style, sent_style) in enumerate(itertools.product(styles, styles)):
            for variant in range(3):
                session = f"agent:main:telegram:direct:{s}{variant}"
                messages = [{"role": "system", "content": "You are a test agent."},
                            {"role": "user", "content": f"task {s}.{variant}"}]
                for turn in range(rng.randint(2, 5)):
                    n += 1
                    count = rng.randint(1, 3)
                    calls = [call(rng, n * 10 + i, i if (i or rng.random() < 0.5) else None,
                                  logged_style) for i in range(count)]
                    ai = {"model": "gpt-4o", "input_token": 1000 + n, "output_token": 10,
                          "messages": json.loads(json.dumps(messages)),
                          "question": messages[-1]["content"], "answer": None,
                          "tool_calls": calls, "session_id": session}
                    rid = f"req-{n:05d}"
                    logged[rid] = ai
                    lines.append(json.dumps({"ai_log": json.dumps(ai), "request_id": rid,
                                             "start_time": f"2026-02-01T09:{n // 60 % 60:02d}:"
                                                           f"{n % 60:02d}.000Z"}) + "\n")
                    # The agent re-sends the calls in its own order, without index.
                    resent = [call(rng, n * 10 + i, None, sent_style) for i in range(count)]
                    messages.append(ordered(rng, {"role": "assistant", "content": None,
                                                  "tool_calls": resent}))
                    for c in resent:
                        messages.append({"role": "tool", "tool_call_id": c["id"],
                                         "content": "ok"})
        write_lines(log, lines)
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        checked = 0
        for name in os.listdir(self.out):
            if not is_session_file(name):
                continue
            for rnd in read_document(self.out / name)["rounds"]:
                ai = logged[rnd["request_id"]]
                where = (rnd["request_id"], name)
                # json.dumps keeps key order: equal text is equal order
                self.assertEqual(json.dumps(rnd["tool_calls"]), json.dumps(ai["tool_calls"]),
                                 where)
                offset = rnd.get("messages_offset") or 0
                self.assertEqual(json.dumps(rnd["messages"]), json.dumps(ai["messages"][offset:]),
                                 where)
                checked += 1
        self.assertEqual(checked, len(logged))


class ResentHistoryKeyOrder(TempDirTest):
    def test_a_history_resent_in_another_key_order_comes_back_as_each_request_logged_it(self):
        """The common prefix of two requests was found with Python's ``==``
        (document.common_prefix), which ignores key order (and ``1 == 1.0 == True``): a
        request that re-sent an earlier message with its keys in another order was
        stored as continuing it, and its full request came back in the earlier order.
        Messages are now shared only when they are the same JSON (every type and
        spelling: tests/test_attack_prefix_dedup_same_json.py)."""
        rng = random.Random(SEED)
        log = self.tmp / "access.log"
        logged, lines = {}, []
        for n in range(1, 41):
            session = f"s{n % 4}"
            history = [ordered(rng, {"role": "user", "content": f"m{i}", "name": "u"})
                       for i in range(n // 4 + 1)]
            ai = {"model": "gpt-4o", "input_token": 1000 + n, "output_token": 10,
                  "messages": history, "question": history[-1]["content"], "answer": "a",
                  "session_id": session}
            rid = f"req-{n:05d}"
            logged[rid] = ai
            lines.append(json.dumps({"ai_log": json.dumps(ai), "request_id": rid,
                                     "start_time": f"2026-02-01T09:00:{n:02d}.000Z"}) + "\n")
        write_lines(log, lines)
        self.assertEqual(self.run_monitor(log)[0], 0)
        from agent_session_monitor.store.document import full_context

        for name in os.listdir(self.out):
            if not is_session_file(name):
                continue
            rounds = read_document(self.out / name)["rounds"]
            by_key = {r.get("key"): r for r in rounds}
            for rnd in rounds:
                self.assertEqual(json.dumps(full_context(by_key, rnd)),
                                 json.dumps(logged[rnd["request_id"]]["messages"]))
