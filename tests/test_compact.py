"""The on-disk form of a session (compact.py) loses nothing: expand(compact(doc)) == doc."""

from __future__ import annotations

import copy
import json
import unittest

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import generate
from agent_session_monitor.compact import compact, expand


def roundtrip(doc: dict) -> dict:
    return expand(json.loads(json.dumps(compact(doc))))


class CompactRoundTrip(TempDirTest):
    def test_generated_corpus_round_trips_and_shrinks(self):
        gen = generate(seed=77, sessions=120, max_requests=40)
        write_lines(self.tmp / "access.log", gen.lines)
        code, _out, err = self.run_monitor(self.tmp / "access.log")
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        deduped_answers = systems = 0
        for doc in docs.values():
            disk = compact(doc)
            deduped_answers += sum(1 for r in disk["rounds"] if r.get("answer_in_next_message"))
            systems += sum(1 for r in disk["rounds"] if "system_ref" in r)
            self.assertEqual(roundtrip(doc), doc)
        self.assertGreater(deduped_answers, 100)
        self.assertGreater(systems, 50)


class CompactEdgeCases(unittest.TestCase):
    def doc(self, rounds):
        for i, rnd in enumerate(rounds):
            rnd["round"] = i + 1       # as every stored session numbers its rounds
        return {"session_id": "s", "rounds": rounds}

    def test_branches_answer_mismatch_and_odd_systems(self):
        a = {"key": "a", "messages": [{"role": "user", "content": "q"}], "messages_offset": 0,
             "answer": "A", "system": [{"type": "text", "text": "sys"}]}
        # two rounds continue a: the first (in file order) has another answer turn
        b = {"key": "b", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "assistant", "content": "edited"}, {"role": "user", "content": "x"}],
             "answer": "B", "system": [{"text": "sys", "type": "text"}]}
        c = {"key": "c", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "y"}],
             "system": "other"}
        d = {"key": "d", "context_key": "c", "messages_offset": 3, "messages": "truncated [truncated] text",
             "messages_truncated": True, "answer": "D"}
        e = {"key": "e", "context_key": "b", "messages_offset": 3,
             "messages": [{"role": "assistant", "content": "B"}], "answer": None}
        doc = self.doc([a, b, c, d, e])
        before = copy.deepcopy(doc)
        disk = compact(doc)
        self.assertEqual(doc, before)                    # compact() does not touch its input
        self.assertIn("answer", disk["rounds"][0])       # b came first and does not repeat A
        self.assertTrue(disk["rounds"][1]["answer_in_next_message"])   # e repeats B
        self.assertEqual(len(disk["systems"]), 2)
        self.assertEqual(roundtrip(doc), doc)

    def test_tool_calls_repeated_in_the_next_request_are_stored_once(self):
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        a = {"key": "a", "request_id": "a", "messages": [{"role": "user", "content": "q"}],
             "messages_offset": 0, "tool_calls": [{**call, "index": 0}]}
        b = {"key": "b", "request_id": "b", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": "out"}]}
        doc = self.doc([a, b])
        disk = compact(doc)
        self.assertEqual(disk["rounds"][0], {"request_id": "a", "messages": a["messages"],
                                             "messages_offset": 0, "tool_calls_in_next_message": True})
        self.assertTrue(disk["rounds"][1]["context_is_previous"])
        self.assertEqual(roundtrip(doc), doc)

    def test_no_rounds_and_no_content(self):
        for doc in (self.doc([]), self.doc([{"key": "k", "input_tokens": 1}]),
                    self.doc([{"key": "r1", "request_id": "r1", "context_key": None}])):
            self.assertEqual(roundtrip(doc), doc)
