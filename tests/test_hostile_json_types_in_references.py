"""``question`` and ``answer`` are whatever JSON the ai_log holds, and a message's
``content`` is whatever the client sent. The store leaves a message's content out when it
repeats the round's question or the previous answer (ondisk.py), and gives that value back
on reading: Python's ``==`` must not decide it, or a logged ``false`` reads back as ``0``,
``1.0`` as ``1``, ``-0.0`` as ``0.0`` and ``[true]`` as ``[1]``. Seeded random documents
(roles, key orders, ids and values drawn from a pool of look-alike JSON values) must read
back exactly, and a hostile log through the whole path must show what was logged."""

from __future__ import annotations

import json
import random

from agent_session_monitor.store.ondisk import compact, expand
from tests.helpers import TempDirTest, load_store, write_lines

LOOK_ALIKES = ["q", "A", "", 1, 1.0, True, 0, False, 0.0, -0.0, None, [], {}, ["q"], [1], [True],
               [1.0], {"a": 1}, {"a": True}, [{"type": "text", "text": "A"}]]


def exact(value) -> str:
    """The JSON of a document, type-exact; messages keep their key order."""
    return json.dumps(value, sort_keys=False)


def hostile_doc(rng: random.Random) -> dict:
    def call() -> dict:
        return {"id": rng.choice(["c1", "c2", None, 1, True]), "type": "function",
                "function": {"name": "f", "arguments": rng.choice(["{}", 0, False])}}

    rounds = []
    for i in range(rng.randint(1, 4)):
        question, answer = rng.choice(LOOK_ALIKES), rng.choice(LOOK_ALIKES)
        calls = [call() for _ in range(rng.randint(0, 2))]
        messages = []
        for _ in range(rng.randint(0, 3)):
            role = rng.choice(["user", "assistant", "tool", "system", None])
            content = rng.choice(LOOK_ALIKES + LOOK_ALIKES)
            msg = {"content": content, "role": role}
            if role == "tool" and rng.random() < 0.8:
                msg["tool_call_id"] = rng.choice(["c1", "c2", None, 1, True])
            if role == "assistant" and rng.random() < 0.5:
                previous = rounds[-1]["tool_calls"] if rounds else []
                msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                                     for c in previous] if rng.random() < 0.5 else [call()]
            if rng.random() < 0.2:
                msg = dict(reversed(list(msg.items())))
            messages.append(msg)
        rnd = {"round": i + 1, "key": f"k{i}", "messages": messages, "question": question,
               "answer": answer, "tool_calls": [dict(c, index=n) for n, c in enumerate(calls)]}
        if i and rng.random() < 0.8:
            rnd["context_key"] = f"k{i - 1}"
            rnd["messages_offset"] = rng.randint(0, 5)
        rounds.append(rnd)
    return {"session_id": "s", "rounds": rounds}


class HostileJsonTypesInReferences(TempDirTest):
    def test_look_alike_values_are_never_stored_as_a_reference_to_each_other(self):
        for seed in range(3000):
            doc = hostile_doc(random.Random(seed))
            want = exact(doc)
            back = expand(json.loads(json.dumps(compact(json.loads(want)))))
            self.assertEqual(json.dumps(back, sort_keys=True), json.dumps(doc, sort_keys=True),
                             f"seed {seed}")
            for got, logged in zip(back["rounds"], doc["rounds"]):
                self.assertEqual(exact(got["messages"]), exact(logged["messages"]), f"seed {seed}")

    def test_a_hostile_log_reads_back_the_json_types_it_logged(self):
        def line(n: int, messages: list, question, answer) -> str:
            ai = {"model": "gpt-4o", "input_token": 100 + n, "output_token": 10,
                  "messages": messages, "question": question, "answer": answer,
                  "session_id": "hostile"}
            return json.dumps({"ai_log": json.dumps(ai), "request_id": f"r{n}",
                               "start_time": f"2026-02-01T09:00:0{n}.000Z"}) + "\n"

        first = [{"role": "system", "content": "s"}, {"role": "user", "content": False}]
        second = first + [{"role": "assistant", "content": 1.0}, {"role": "user", "content": [True]}]
        third = second + [{"role": "assistant", "content": "x"}, {"role": "user", "content": -0.0}]
        log = self.tmp / "access.log"
        write_lines(log, [line(1, first, 0, 1), line(2, second, [1], "x"), line(3, third, 0.0, "y")])
        code, _out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual(code, 0, err)
        rounds = load_store(self.out)["hostile"]["rounds"]
        self.assertEqual(exact([m["content"] for r in rounds for m in r["messages"]]),
                         exact(["s", False, 1.0, [True], "x", -0.0]))
