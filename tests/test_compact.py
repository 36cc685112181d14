"""The on-disk form of a session (compact.py): every round as the original skill wrote it,
repeats deduplicated only inside ``messages``, and nothing lost: expand(compact(doc)) == doc."""

from __future__ import annotations

import copy
import json
import unittest

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import generate
from agent_session_monitor.store import sessions
from agent_session_monitor.store.ondisk import compact, expand

# The round fields of the original skill (its README / storage.md), present on disk in
# every round.
ORIGINAL_ROUND_FIELDS = ("round", "timestamp", "input_tokens", "output_tokens",
                         "reasoning_tokens", "cached_tokens", "model", "has_tool_calls",
                         "response_type", "messages", "question", "answer", "reasoning",
                         "tool_calls", "input_token_details", "output_token_details")


def roundtrip(doc: dict) -> dict:
    return expand(json.loads(json.dumps(compact(doc))))


class CompactRoundTrip(TempDirTest):
    def test_generated_corpus_round_trips_keeps_every_field_and_dedups_inside_messages(self):
        gen = generate(seed=77, sessions=120, max_requests=40)
        write_lines(self.tmp / "access.log", gen.lines)
        code, _out, err = self.run_monitor(self.tmp / "access.log")
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        refs = {"answer": 0, "tool_calls": 0, "answer+tool_calls": 0, "question": 0,
                "answer_block": 0, "user:question": 0, "tool:question": 0,
                "assistant:answer": 0, "assistant:tool_calls": 0,
                "assistant:answer+tool_calls": 0}
        systems = short_keys = derived = shared_file = implied_offsets = derived_totals = 0
        left_out = messages_kept = 0
        for doc in docs.values():
            disk = json.loads(json.dumps(compact(doc)))
            for i, (rnd, mem) in enumerate(zip(disk["rounds"], doc["rounds"])):
                for name in ORIGINAL_ROUND_FIELDS:
                    self.assertIn(name, rnd)
                    if name != "messages":   # the one documented difference
                        self.assertEqual(rnd[name], mem[name], name)
                self.assertEqual(rnd["round"], i + 1)
                for kind in (rnd.get("messages_refs") or {}).values():
                    refs[kind] += 1
                    left_out += ":" in kind
                messages_kept += len(rnd["messages"])
                if "total_tokens" in mem and "total_tokens" not in rnd:
                    derived_totals += 1
            systems += sum(1 for r in disk["rounds"] if "system_ref" in r)
            short_keys += sum(1 for r in disk["rounds"] if "k" in r)
            derived += sum(1 for r in disk["rounds"] if "buckets" not in r)
            shared_file += sum(1 for r in disk["rounds"] if "src" in r)
            implied_offsets += sum(1 for r in disk["rounds"] if "messages_offset" not in r)
            self.assertNotIn('"sha256:', json.dumps(disk["rounds"]))
            self.assertEqual(roundtrip(doc), doc)
        # Layout 4: a repeat that is a whole message of a standard shape is left out of
        # the list (its kind says the message); other shapes keep a placeholder.
        self.assertGreater(refs["user:question"], 500)
        self.assertGreater(refs["tool:question"], 100)
        self.assertGreater(refs["assistant:answer"] + refs["assistant:answer+tool_calls"], 100)
        self.assertGreater(refs["assistant:tool_calls"] + refs["assistant:answer+tool_calls"], 20)
        # Every question, answer and tool-call repeat of this corpus is one of them.
        self.assertEqual(refs["question"] + refs["answer"] + refs["tool_calls"], 0)
        self.assertGreater(refs["answer_block"], 20)   # Claude's answer as a text block
        stored = sum(len(r["messages"]) if isinstance(r["messages"], list) else 1
                     for doc in docs.values() for r in doc["rounds"])
        self.assertEqual(messages_kept + left_out, stored)
        self.assertGreater(systems, 50)
        # Layout 3: the bytes every round repeated (line keys, buckets, the log file).
        rounds = sum(len(doc["rounds"]) for doc in docs.values())
        self.assertEqual(short_keys, rounds)
        self.assertGreater(derived, rounds * 0.9)
        self.assertGreater(shared_file, rounds - len(docs) * 2)
        self.assertGreater(implied_offsets, rounds // 2)
        self.assertGreater(derived_totals, rounds * 0.9)   # total_tokens = the buckets' sum


class CompactEdgeCases(unittest.TestCase):
    def doc(self, rounds):
        for i, rnd in enumerate(rounds):
            rnd["round"] = i + 1       # as every stored session numbers its rounds
        return {"session_id": "s", "rounds": rounds}

    def test_branches_answer_mismatch_and_odd_systems(self):
        a = {"key": "a", "messages": [{"role": "user", "content": "q"}], "messages_offset": 0,
             "answer": "A", "question": "q", "system": [{"type": "text", "text": "sys"}]}
        # two rounds continue a: the first (in file order) has another answer turn
        b = {"key": "b", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "assistant", "content": "edited"}, {"role": "user", "content": "x"}],
             "answer": "B", "question": "not the last message",
             "system": [{"text": "sys", "type": "text"}]}
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
        self.assertEqual([r.get("answer") for r in disk["rounds"]], ["A", "B", None, "D", None])
        self.assertEqual(disk["rounds"][0]["messages_refs"], {"0": "question"})
        self.assertNotIn("messages_refs", disk["rounds"][1])          # "edited" is not A
        self.assertEqual(disk["rounds"][2]["messages_refs"], {"0": "answer"})   # c repeats A
        self.assertEqual(disk["rounds"][4]["messages_refs"], {"0": "answer"})   # e repeats B
        self.assertEqual(disk["rounds"][4]["messages"], [{"role": "assistant", "content": None}])
        self.assertEqual(len(disk["systems"]), 2)
        self.assertEqual(roundtrip(doc), doc)

    def test_tool_calls_repeated_in_the_next_request_are_stored_once_as_a_reference(self):
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        a = {"key": "a", "request_id": "a", "messages": [{"role": "user", "content": "q"}],
             "messages_offset": 0, "tool_calls": [{**call, "index": 0}], "answer": None}
        b = {"key": "b", "request_id": "b", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": "out"}]}
        doc = self.doc([a, b])
        disk = compact(doc)
        self.assertEqual(disk["rounds"][0]["tool_calls"], [{**call, "index": 0}])
        self.assertEqual(disk["rounds"][0]["round"], 1)
        self.assertEqual(disk["rounds"][1]["messages_refs"], {"0": "tool_calls"})
        self.assertEqual(disk["rounds"][1]["messages"][0],
                         {"role": "assistant", "content": None, "tool_calls": None})
        self.assertNotIn("context_key", disk["rounds"][1])   # it extends the previous round
        self.assertEqual(roundtrip(doc), doc)

    def test_a_message_whose_content_really_is_null_is_not_a_reference(self):
        a = {"key": "a", "messages": [{"role": "user", "content": None}], "messages_offset": 0,
             "question": None}
        b = {"key": "b", "context_key": "a", "messages_offset": 1, "question": "",
             "messages": [{"role": "assistant", "content": None}, {"role": "user", "content": ""}],
             "answer": ""}
        doc = self.doc([a, b])
        disk = compact(doc)
        self.assertNotIn("messages_refs", disk["rounds"][0])
        self.assertEqual(disk["rounds"][1]["messages_refs"], {"1": "question"})
        self.assertEqual(roundtrip(doc), doc)

    def test_hand_edited_references_never_crash_the_reader(self):
        disk = {"session_id": "s", "rounds": [
            {"key": "a", "messages": [{"role": "user", "content": None}], "question": "q",
             "messages_refs": {"0": "question", "7": "answer", "x": "question", "-1": "answer"}},
            {"key": "b", "context_key": "zz", "messages": [None, {"role": "assistant"}],
             "messages_refs": {"0": "answer", "1": "answer+tool_calls"}}]}
        doc = expand(disk)
        self.assertEqual(doc["rounds"][0]["messages"], [{"role": "user", "content": "q"}])
        self.assertEqual(doc["rounds"][1]["messages"], [None, {"role": "assistant"}])

    def test_layout_3_respells_line_keys_derives_buckets_and_names_the_log_file_once(self):
        key = "sha256:" + "0123456789abcdef" * 2
        rounds = [{"key": key, "request_id": "r1", "input_tokens": 10, "output_tokens": 5,
                   "reasoning_tokens": 0, "cached_tokens": 4, "buckets": {"input": 6,
                   "cache_read": 4, "output": 5}, "input_token_details": {},
                   "output_token_details": {}, "source": {"fp": "f1", "offset": 0}},
                  # buckets a later version split otherwise: kept as they are
                  {"key": "sha256:" + "f" * 32, "input_tokens": 10, "output_tokens": 5,
                   "buckets": {"input": 7, "output": 5}, "source": {"fp": "f1", "offset": 9}},
                  # another log file, then a source of another shape
                  {"key": "not-a-line-hash", "buckets": {}, "source": {"fp": "f2", "offset": 7}},
                  {"key": "sha256:" + "A" * 32, "buckets": {}, "source": {"offset": 8, "fp": "f2"}}]
        for rnd in rounds:
            rnd["cache_write_tokens"] = 0   # as every round built since schema 2 says
            rnd["messages_offset"] = 0
        doc = {**self.doc(rounds), "context_tip": "sha256:" + "A" * 32}
        disk = json.loads(json.dumps(compact(doc)))
        self.assertEqual(disk["layout"], 3)
        self.assertNotIn("context_tip", disk)
        first, second, third, fourth = disk["rounds"]
        self.assertEqual(first["k"], "ASNFZ4mrze8BI0VniavN7w")
        self.assertNotIn("key", first)
        self.assertNotIn("buckets", first)
        self.assertEqual(second["buckets"], {"input": 7, "output": 5})
        self.assertEqual((second["src"], "source" in second), (9, False))
        self.assertEqual((third["key"], third["source"]), ("not-a-line-hash", {"fp": "f2", "offset": 7}))
        self.assertEqual(fourth["key"], "sha256:" + "A" * 32)   # not hex: as it is
        self.assertEqual(fourth["source"], {"offset": 8, "fp": "f2"})
        self.assertEqual(roundtrip(doc), doc)

    def test_layout_3_leaves_out_the_offset_only_where_the_previous_request_gives_it(self):
        def rnd(key, offset, messages, context):
            return {"key": key, "request_id": key, "buckets": {}, "cache_write_tokens": 0,
                    "messages": messages, "messages_offset": offset, "context_key": context}
        user = {"role": "user", "content": "x"}
        rounds = [rnd("a", 0, [user, user], None),
                  rnd("b", 2, [user], "a"),          # extends a's whole request
                  rnd("c", 2, [user, user], "b"),    # a prefix of b's only
                  rnd("d", 4, [user], "c"),          # extends c's whole request
                  rnd("e", 5, [user], "a"),          # extends an older round
                  rnd("f", 0, [user], None)]         # a new chain
        doc = {**self.doc(rounds), "context_tip": "f"}
        disk = json.loads(json.dumps(compact(doc)))
        self.assertEqual([r.get("messages_offset") for r in disk["rounds"]],
                         [0, None, 2, None, 5, 0])
        self.assertEqual(roundtrip(doc), doc)

    def test_a_store_written_before_layout_3_keeps_its_keys_and_buckets(self):
        """Keys are matched against new lines (idempotency): an older file's spelling and
        a layout-3 file's must read back as the same key, and no buckets are invented."""
        key = "sha256:" + "0123456789abcdef" * 2
        old = {"session_id": "s", "schema": 2, "context_tip": key, "rounds": [
            {"round": 1, "key": key, "input_tokens": 3, "source": {"fp": "f", "offset": 1}}]}
        doc = expand(copy.deepcopy(old))
        self.assertEqual(doc["rounds"][0]["key"], key)
        self.assertNotIn("buckets", doc["rounds"][0])
        self.assertEqual(roundtrip(doc), doc)   # no buckets to derive: written as it was
        self.assertNotIn("layout", compact(doc))

    def test_hand_edited_layout_3_fields_never_crash_the_reader(self):
        for k in ("zz", 123, None, "!" * 22, "A" * 21 + "=", [1]):
            for src in ("9", None, 1.5, 7, [1]):
                disk = {"session_id": "s", "layout": 3, "rounds": [
                    {"k": k, "request_id": "r", "src": src, "buckets": "x"},
                    {"k": k, "src": src, "input_tokens": "many"}]}
                doc = expand(copy.deepcopy(disk))
                self.assertEqual(doc["rounds"][0]["key"], "r")
                self.assertNotIn("source", doc["rounds"][0])
                self.assertEqual(doc["rounds"][1]["buckets"], {})

    def test_schema_1_layout_is_read_back_whole(self):
        """What versions before schema 2 wrote: answers and tool calls moved into the next
        round, the question left in the last message, round numbers implied."""
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        old = {"session_id": "s", "schema": 1, "rounds": [
            {"request_id": "a", "messages": [{"role": "user", "content": "q"}], "messages_offset": 0,
             "question_is_last_message": True, "answer_in_next_message": True,
             "tool_calls_in_next_message": True},
            {"request_id": "b", "context_is_previous": True, "messages_offset": 1,
             "messages": [{"role": "assistant", "content": "A", "tool_calls": [call]},
                          {"role": "tool", "content": "out"}],
             "question_is_last_message": True, "answer": "done"}]}
        doc = expand(old)
        a, b = doc["rounds"]
        self.assertEqual((a["round"], a["question"], a["answer"]), (1, "q", "A"))
        self.assertEqual(a["tool_calls"], [{**call, "index": 0}])
        self.assertEqual((b["round"], b["question"], b["context_key"]), (2, "out", "a"))
        for rnd in doc["rounds"]:
            self.assertFalse({"question_is_last_message", "answer_in_next_message",
                              "tool_calls_in_next_message"} & set(rnd))
        self.assertEqual(roundtrip(doc), doc)

    def test_a_round_extending_an_older_round_names_it(self):
        a = {"key": "a", "messages": [{"role": "user", "content": "q"}], "messages_offset": 0}
        b = {"key": "b", "messages": [{"role": "user", "content": "other"}], "messages_offset": 0}
        c = {"key": "c", "context_key": "a", "messages_offset": 1,
             "messages": [{"role": "user", "content": "again"}]}
        doc = self.doc([a, b, c])
        disk = compact(doc)
        self.assertEqual(disk["rounds"][2]["context_key"], "a")
        self.assertNotIn("context_key", disk["rounds"][1])
        self.assertEqual(roundtrip(doc), doc)

    def test_claude_answer_resent_as_a_text_block_is_a_reference(self):
        a = {"key": "a", "messages": [{"role": "user", "content": "q"}], "messages_offset": 0,
             "answer": "Reading it.", "question": "q"}
        turn = {"role": "assistant", "content": [
            {"type": "text", "text": "Reading it."},
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": "x"}}]}
        b = {"key": "b", "context_key": "a", "messages_offset": 1,
             "messages": [turn, {"role": "user", "content": [{"type": "tool_result",
                                                               "tool_use_id": "t1"}]}]}
        other = dict(turn, content=[{"type": "text", "text": "Something else."}])
        c = {"key": "c", "context_key": "a", "messages_offset": 1, "messages": [other]}
        doc = self.doc([a, b, c])
        disk = compact(doc)
        self.assertEqual(disk["rounds"][1]["messages_refs"], {"0": "answer_block"})
        self.assertIsNone(disk["rounds"][1]["messages"][0]["content"][0]["text"])
        self.assertNotIn("messages_refs", disk["rounds"][2])
        self.assertEqual(roundtrip(doc), doc)

    def test_usual_price_data_is_said_once_and_unrecorded_rounds_stay_unrecorded(self):
        t, o = "table:2026-11-24:2ff8fa65", "override:1a2b3c4d"
        rounds = [{"key": "a", "cost_usd": 1.0, "priced_by": t, "buckets": {}, "cache_write_tokens": 0},
                  {"key": "b", "cost_usd": 1.0, "priced_by": t, "buckets": {}, "cache_write_tokens": 3},
                  {"key": "c", "cost_usd": 1.0, "priced_by": o, "buckets": {}, "cache_write_tokens": 0},
                  {"key": "d", "cost_usd": 1.0, "buckets": {}, "cache_write_tokens": 0},   # schema 1
                  {"key": "e", "cost_usd": None, "buckets": {}, "cache_write_tokens": 0}]
        doc = self.doc(rounds)
        disk = compact(doc)
        self.assertEqual(disk["price_default"], t)
        self.assertEqual([r.get("priced_by", "-") for r in disk["rounds"]], ["-", "-", o, None, "-"])
        self.assertEqual([r.get("cache_write_tokens") for r in disk["rounds"]], [None, 3, None, None, None])
        self.assertEqual(roundtrip(doc), doc)

    def layout_doc(self, rounds, **extra):
        """A document compact() writes in layout 4: buckets, offsets, a tip, the lists."""
        for rnd in rounds:
            rnd.setdefault("buckets", {})
            rnd.setdefault("messages_offset", 0)
            rnd.setdefault("cache_write_tokens", 0)   # as every round since schema 2
        return {**self.doc(rounds), "context_tip": rounds[-1]["key"], "consumers": [],
                "unpriced_models": [], **extra}

    def assert_round_trip_keeps_key_order(self, doc):
        back = roundtrip(doc)
        self.assertEqual(back, doc)
        for got, want in zip(back["rounds"], doc["rounds"]):
            self.assertEqual(json.dumps(got.get("messages")), json.dumps(want.get("messages")))

    def test_layout_4_leaves_whole_repeats_out_and_keeps_every_other_shape(self):
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        call2 = {**call, "id": "c2"}
        user, system = {"content": "q", "role": "user"}, {"content": "sys", "role": "system"}
        a = {"key": "a", "messages": [system, user], "question": "q", "answer": None,
             "tool_calls": [{**call, "index": 0}, {**call2, "index": 1}]}
        b = {"key": "b", "context_key": "a", "messages_offset": 2, "question": "out2",
             "messages": [{"content": None, "role": "assistant", "tool_calls": [call, call2]},
                          {"content": "out1", "role": "tool", "tool_call_id": "c1"},
                          {"content": "out2", "role": "tool", "tool_call_id": "c2"}],
             "answer": "done", "tool_calls": [{**call, "index": 0}]}
        # c extends b: its answer as a whole message; its question a system message's
        # content (another role: a placeholder, never "user:question")
        c = {"key": "c", "context_key": "b", "messages_offset": 5, "question": "done",
             "messages": [{"content": "done", "role": "assistant"},
                          {"content": "done", "role": "system"}], "answer": "A", "tool_calls": []}
        # d extends c: the answer re-logged one byte longer, keys in another order
        d = {"key": "d", "context_key": "c", "messages_offset": 7, "question": "q",
             "messages": [{"content": "A!", "role": "assistant"}, {"role": "user", "content": "q"}]}
        # e extends b: a user message with an extra key, then the question: a result for
        # a call b never made (c9)
        e = {"key": "e", "context_key": "b", "messages_offset": 5, "question": "r",
             "messages": [{"content": "done", "role": "assistant", "tool_calls": []},
                          {"content": "q", "role": "user", "name": "bob"},
                          {"content": "r", "role": "tool", "tool_call_id": "c9"}]}
        f = {"key": "f", "context_key": "e", "messages_offset": 8, "question": "r",
             "messages": [{"content": "r", "role": "tool", "tool_call_id": "c1"}]}
        doc = self.layout_doc([a, b, c, d, e, f])
        disk = json.loads(json.dumps(compact(doc)))
        self.assertEqual(disk["layout"], 4)
        rounds = disk["rounds"]
        self.assertEqual(rounds[0]["messages"], [system])
        self.assertEqual(rounds[0]["messages_refs"], {"1": "user:question"})
        # b: the assistant turn and the result of a's last call are left out; the result
        # of its first call stays whole (the question is the last message only)
        self.assertEqual(rounds[1]["messages"], [{"content": "out1", "role": "tool", "tool_call_id": "c1"}])
        self.assertEqual(rounds[1]["messages_refs"], {"0": "assistant:tool_calls", "2": "tool:question"})
        self.assertEqual(rounds[2]["messages"], [{"content": None, "role": "system"}])
        self.assertEqual(rounds[2]["messages_refs"], {"0": "assistant:answer", "1": "question"})
        self.assertEqual(rounds[3]["messages"][0], {"content": "A!", "role": "assistant"})
        self.assertEqual(rounds[3]["messages_refs"], {"1": "question"})   # not the user shape
        self.assertEqual(rounds[4]["messages_refs"], {"0": "answer", "2": "question"})
        self.assertEqual(rounds[4]["messages"], [   # tool_calls: [] and the c9 id kept
            {"content": None, "role": "assistant", "tool_calls": []},
            {"content": "q", "role": "user", "name": "bob"},
            {"content": None, "role": "tool", "tool_call_id": "c9"}])
        # e made no tool calls: a result for c1 keeps its id in a placeholder
        self.assertEqual(rounds[5]["messages_refs"], {"0": "question"})
        self.assertEqual(rounds[5]["messages"], [{"content": None, "role": "tool", "tool_call_id": "c1"}])
        self.assert_round_trip_keeps_key_order(doc)

    def test_layout_4_derives_totals_and_first_offsets_and_leaves_out_empty_lists(self):
        rounds = [{"key": "a", "input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                   "buckets": {"input": 10, "output": 5}, "messages": []},
                  {"key": "b", "input_tokens": 10, "output_tokens": 5, "total_tokens": 99,
                   "buckets": {"input": 10, "output": 5}, "messages": []},
                  {"key": "c", "input_tokens": 1, "buckets": {"input": 1}, "messages": []},
                  {"key": "d", "messages_offset": 0, "messages": [], "buckets": {}}]
        doc = self.layout_doc(rounds, consumers=["alice"])
        disk = json.loads(json.dumps(compact(doc)))
        self.assertEqual([r.get("total_tokens", "-") for r in disk["rounds"]], ["-", 99, None, None])
        self.assertNotIn("messages_offset", disk["rounds"][0])   # a chain's first request
        self.assertEqual(disk["rounds"][3]["messages_offset"], 0)   # a new chain after c
        self.assertNotIn("unpriced_models", disk)
        self.assertEqual(disk["consumers"], ["alice"])
        self.assert_round_trip_keeps_key_order(doc)
        # A document a layout does not fit is written as it is.
        for odd in (dict(doc, consumers=None), {k: v for k, v in doc.items() if k != "consumers"},
                    dict(doc, rounds=[dict(rounds[0], total_tokens=None)])):
            disk = json.loads(json.dumps(compact(odd)))
            self.assertEqual(disk["layout"], 3)
            self.assertEqual(roundtrip(odd), odd)

    def test_hand_edited_layout_4_files_never_crash_the_reader(self):
        from agent_session_monitor.store.sessions import parse_document

        hostile_refs = [{"²": "user:question"}, {"²": "question"}, {"99": "tool:question"}, {"-1": "assistant:answer"},
                        {"0": "assistant:tool_calls", "1": "user:question", "7": "user:question"},
                        {"0": "nonsense"}, {"00": "user:question"}, ["0"], "0", None,
                        {"0": "tool:question"}, {"0": ["user:question"]}]
        for refs in hostile_refs:
            for layout in (4, "4", 4.0, True, 10**30, -1, None):
                for messages in ([], [None], [{"role": "user"}], "cut [truncated] text", 7):
                    disk = {"session_id": "s", "layout": layout, "consumers": "x", "rounds": [
                        {"k": "zz", "question": "q", "messages": messages,
                         "messages_refs": refs, "total_tokens": "many", "messages_offset": None,
                         "buckets": {"input": "1"}},
                        {"request_id": "r", "context_key": "zz", "messages": messages,
                         "messages_refs": refs, "total_tokens": None, "tool_calls": "cut"}]}
                    raw = json.dumps(disk).encode()
                    doc = parse_document(raw, 0)     # repaired, never an exception
                    self.assertEqual(len(doc["rounds"]), 2)
                    for rnd in doc["rounds"]:
                        self.assertIsInstance(rnd["messages"], (list, str))

    def test_no_rounds_and_no_content(self):
        for doc in (self.doc([]), self.doc([{"key": "k", "input_tokens": 1}]),
                    self.doc([{"key": "r1", "request_id": "r1", "context_key": None}])):
            self.assertEqual(roundtrip(doc), doc)


class CompactFuzz(unittest.TestCase):
    """Seeded random sessions built from a tiny alphabet, so that a message's content,
    role, key order, extra keys and tool-call ids collide with the round's question,
    the previous answer and its calls as often as possible: every document reads back
    equal, messages in their key order, and every left-out message is one of the
    standard shapes."""

    def test_random_collisions_round_trip_exactly(self):
        import random

        rng = random.Random(2026)
        texts = ["a", "b", "", None, [{"type": "text", "text": "a"}]]
        calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                 for i in ("c1", "c2")]

        def message():
            content, role = rng.choice(texts), rng.choice(["user", "assistant", "tool", "system"])
            msg = {"content": content, "role": role}
            if rng.random() < 0.3:
                msg["tool_call_id"] = rng.choice(["c1", "c2", "c9", None])
            if rng.random() < 0.3:
                msg["tool_calls"] = rng.choice([None, [], calls[:1], calls])
            if rng.random() < 0.2:
                msg = dict(reversed(list(msg.items())))   # another key order
            if rng.random() < 0.1:
                msg["name"] = "x"
            return msg

        left_out = 0
        for _ in range(400):
            rounds, offset = [], 0
            for n in range(rng.randint(1, 6)):
                messages = [message() for _ in range(rng.randint(0, 4))]
                extends = n > 0 and rng.random() < 0.8
                question = rng.choice(texts)
                if rng.random() < 0.5:   # the question as the last message, often standard
                    messages.append(rng.choice([
                        {"content": question, "role": "user"},
                        {"content": question, "role": rng.choice(["tool", "user"]),
                         "tool_call_id": rng.choice(["c1", "c2", "c9"])}]))
                if extends and rng.random() < 0.6:   # the previous answer turn, re-logged
                    turn = {"content": rounds[-1]["answer"], "role": "assistant"}
                    if rounds[-1]["tool_calls"] and rng.random() < 0.7:
                        turn["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                                              for c in rounds[-1]["tool_calls"]]
                    messages.insert(0, turn)
                rnd = {"key": f"k{n}", "messages": messages, "buckets": {"input": n},
                       "messages_offset": offset if extends else 0, "cache_write_tokens": 0,
                       "question": question, "answer": rng.choice(texts),
                       "tool_calls": [{**c, "index": i} for i, c in
                                      enumerate(rng.choice([[], calls[:1], calls]))]}
                if extends:
                    rnd["context_key"] = f"k{n - 1}"
                if rng.random() < 0.5:
                    rnd["total_tokens"] = rng.choice([n, n + 1])
                rounds.append(rnd)
                offset = rnd["messages_offset"] + len(messages)
            doc = {**CompactEdgeCases().doc(rounds), "context_tip": rounds[-1]["key"],
                   "consumers": [], "unpriced_models": []}
            disk = json.loads(json.dumps(compact(doc)))
            for rnd in disk["rounds"]:
                left_out += sum(":" in kind for kind in (rnd.get("messages_refs") or {}).values())
            back = expand(disk)
            self.assertEqual(back, doc)
            for got, want in zip(back["rounds"], doc["rounds"]):
                self.assertEqual(json.dumps(got["messages"]), json.dumps(want["messages"]))
        self.assertGreater(left_out, 300)


class ConversationBytes(TempDirTest):
    """The denominator of issue 14's 2x bound (tests/bench.py): every message of each
    conversation once, the model's responses included."""

    def line(self, n, session, messages, answer=None, calls=None, system=None, reasoning=None):
        ai = {"session_id": session, "model": "gpt-4o", "messages": messages,
              "question": messages[-1]["content"], "answer": answer, "tool_calls": calls,
              "reasoning": reasoning, "system": system, "input_token": 1, "output_token": 1}
        return json.dumps({"start_time": f"2026-02-01T10:00:{n:02d}.000Z",
                           "ai_log": json.dumps(ai), "request_id": f"r{n}"}) + "\n"

    def test_every_message_once_the_last_answer_and_claudes_system_prompt_included(self):
        from tests.bench import conversation_bytes

        size = lambda v: len(json.dumps(v, ensure_ascii=False).encode())  # noqa: E731
        q1, q2 = {"content": "hi 你好", "role": "user"}, {"content": "more", "role": "user"}
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        turn = {"content": None, "role": "assistant", "tool_calls": [call]}
        result = {"content": "out", "role": "tool", "tool_call_id": "c1"}
        last = {"content": "the end", "role": "assistant"}
        lines = [self.line(1, "a", [q1], calls=[{**call, "index": 0}], system="sys"),
                 self.line(2, "a", [q1, turn, result], answer="ok", system="sys"),
                 self.line(2, "a", [q1, turn, result], answer="ok", system="sys"),  # logged twice
                 self.line(3, "a", [q1, turn, result, {"content": "ok", "role": "assistant"}, q2],
                           answer="the end", reasoning="hmm", system="sys"),
                 self.line(4, "b", [q2], answer="B", system=[{"type": "text", "text": "s2"}])]
        log = self.tmp / "access.log"
        log.write_text("".join(lines))
        got = conversation_bytes(log)
        requests = size(q1) + size(turn) + size(result) + size({"content": "ok", "role": "assistant"}) \
            + size(q2) + size(q2)
        self.assertEqual(got["distinct_message_bytes"], requests)
        # a's last answer (with its reasoning) and b's only answer: no request re-logs them
        self.assertEqual(got["response_bytes"], size({**last, "reasoning_content": "hmm"})
                         + size({"content": "B", "role": "assistant"}))
        self.assertEqual(got["system_bytes"], size("sys") + size([{"type": "text", "text": "s2"}]))
        self.assertEqual(got["conversation_bytes"],
                         requests + got["response_bytes"] + got["system_bytes"])


if __name__ == "__main__":
    unittest.main()


class DumpDocumentBytes(unittest.TestCase):
    """dump_document's encoder skips json's circular-reference check (a document is
    decoded JSON): for any document (random content of any depth, past the recursion
    limit too, shared sub-values, lone surrogates, non-ASCII text) it writes the bytes
    json.dumps with its documented options writes, through the same fallbacks."""

    def reference(self, doc: dict) -> bytes:
        def dumps(value, ascii_only=False):
            return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"),
                              allow_nan=False)
        try:
            text = dumps(compact(doc))
        except (ValueError, TypeError, RecursionError):
            sessions._drop_unserialisable_content(doc)
            text = dumps(compact(doc))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return dumps(compact(doc), True).encode("ascii")

    def test_the_same_bytes_as_json_dumps_for_any_document(self):
        import random

        texts = ["q", "", "退款 💸", "\ud800", "a\u0000b", "\"\\/"]

        def document(seed: int) -> dict:
            # Built twice from its seed: a copy of a 5,000-deep value cannot be made.
            rng = random.Random(seed)

            def value(depth: int):
                pick = rng.random()
                if depth <= 0 or pick < 0.3:
                    return rng.choice(texts + [0, -1, 2**70, 1.5, -0.0, True, None])
                if pick < 0.65:
                    return [value(depth - 1) for _ in range(rng.randint(0, 3))]
                return {rng.choice(["content", "role", "x", "é"]): value(depth - 1)
                        for _ in range(rng.randint(0, 3))}

            shared = value(3)
            rounds = []
            for n in range(rng.randint(1, 4)):
                messages = [{"role": "user", "content": rng.choice(
                    [value(rng.randint(0, 6)), shared, rng.choice(texts)])}
                    for _ in range(rng.randint(0, 3))]
                if rng.random() < 0.05:
                    deep = "deep"
                    for _ in range(rng.choice([50, 400, 5000])):
                        deep = [deep] if rng.random() < 0.5 else {"content": deep}
                    messages.append({"role": "user", "content": deep})
                rounds.append({"key": f"k{n}", "messages": messages, "buckets": {"input": n},
                               "messages_offset": 0, "question": rng.choice(texts),
                               "answer": value(2), "tool_calls": []})
            return {**CompactEdgeCases().doc(rounds), "context_tip": rounds[-1]["key"]}

        drops = surrogates = 0
        for seed in range(600):
            got = sessions.dump_document(document(seed))
            self.assertEqual(got, self.reference(document(seed)), seed)
            drops += b"unserialisable_content" in got
            surrogates += b"\\ud800" in got
        self.assertGreater(drops, 3)        # past the recursion limit: content dropped
        self.assertGreater(surrogates, 50)  # a lone surrogate: the ASCII fallback
