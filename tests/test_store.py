"""The session store: safe names for hostile ids, linear message storage, event-time
order, privacy mode and permissions (storage.md)."""

from __future__ import annotations

import json
import os
import random
import stat

from tests.helpers import TempDirTest, load_store, write_lines
from agent_session_monitor.ingest.ai_log import client_session_id
from agent_session_monitor.store.names import file_name_for
from agent_session_monitor.store.document import full_context


def ai_line(session_id, n: int, messages=None, start: str | None = None, **ai) -> bytes:
    body = {"session_id": session_id, "model": "gpt-4o", "input_token": 10 + n,
            "output_token": 1, **ai}
    if messages is not None:
        body["messages"] = messages
        body["question"] = messages[-1]["content"] if messages else None
    # start_time before the raw X-Request-Id: after it, in a format not declared, a
    # time is never used (test_attack_client_dated_rounds).
    outer = {"ai_log": json.dumps(body, ensure_ascii=False),
             "start_time": start or f"2026-02-01T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
             "request_id": f"r{n}"}
    return json.dumps(outer, ensure_ascii=False).encode() + b"\n"


def distinct_message_bytes(messages: list) -> int:
    seen = set()
    for m in messages:
        seen.add(json.dumps(m, ensure_ascii=False, sort_keys=True))
    return sum(len(s.encode()) for s in seen)


class HostileSessionIds(TempDirTest):
    IDS = ["../../x", "/abs/path", "a" * 300, "nul\x00byte", "CON", "con", "Case", "case",
           ".hidden", "..", "a/b", "a\\b", "tab\there", "中文会话", "x~deadbeef", "~unsessioned",
           "(unsessioned)"]

    def test_hostile_ids_stay_inside_and_never_share_a_file(self):
        log = self.tmp / "access.log"
        write_lines(log, [ai_line(sid, i) for i, sid in enumerate(self.IDS)])
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        names = [n for n in os.listdir(self.out) if not n.startswith(".")]
        self.assertEqual(len(names), len(self.IDS))
        self.assertEqual(len({n.lower() for n in names}), len(self.IDS))  # case-insensitive disks too
        for name in names:
            self.assertNotIn("/", name)
            self.assertLessEqual(len(name.encode()), 255)
        docs = load_store(self.out)
        # The reserved label of the unsessioned bucket is never a client's (parse.py).
        stored = {client_session_id(sid): sid for sid in self.IDS}
        self.assertEqual(set(docs), set(stored))
        for sid, sent in stored.items():
            self.assertEqual(docs[sid]["rounds"][0]["request_id"], f"r{self.IDS.index(sent)}")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["access.log", "sessions"])

    def test_a_flood_of_huge_session_ids_pins_no_memory_in_the_name_cache(self):
        # A client sending a new 20 KB id per request: the names' cache (65,536 entries)
        # kept every id, gigabytes in a long-lived monitor.
        import tracemalloc
        rng = random.Random(7)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            names = []
            for _ in range(300):
                names.append(file_name_for(rng.randbytes(10_000).hex()))   # then dropped
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(set(names)), 300)
        self.assertLess(kept, 1_000_000)   # 300 ids of 20 KB are 6 MB

    def test_readable_ids_keep_the_original_file_name(self):
        self.assertEqual(file_name_for("agent:main:discord:1465367993012981988"),
                         "agent:main:discord:1465367993012981988.json")
        self.assertNotEqual(file_name_for("Case"), file_name_for("case"))
        self.assertIn("~", file_name_for("../../tmp/pwned"))

    def test_files_are_0600_and_directory_0700(self):
        log = self.tmp / "access.log"
        write_lines(log, [ai_line("s", 1)])
        self.run_monitor(log)
        self.assertEqual(stat.S_IMODE(os.stat(self.out).st_mode), 0o700)
        for name in os.listdir(self.out):
            self.assertEqual(stat.S_IMODE(os.stat(self.out / name).st_mode), 0o600, name)


class LinearMessages(TempDirTest):
    def agent_session(self, requests: int) -> tuple[list[bytes], list]:
        messages = [{"role": "system", "content": "You are an agent. " * 20}]
        lines = []
        for n in range(requests):
            if n % 3 == 0:
                messages.append({"role": "user", "content": f"step {n}: please do the thing " * 5})
            else:
                messages.append({"role": "tool", "tool_call_id": f"c{n}",
                                 "content": f"tool output {n} " + "data " * 300})
            lines.append(ai_line("long", n, list(messages),
                                 answer=f"working on step {n} " * 4))
            messages.append({"role": "assistant", "content": f"working on step {n} " * 4})
        return lines, messages

    def test_200_request_session_takes_at_most_twice_its_distinct_messages(self):
        lines, messages = self.agent_session(200)
        log = self.tmp / "access.log"
        write_lines(log, lines)
        self.run_monitor(log)
        size = os.path.getsize(self.out / "long.json")
        distinct = distinct_message_bytes(messages)
        logged = sum(len(x) for x in lines)
        self.assertLessEqual(size, 2 * distinct, f"store {size} vs distinct {distinct}")
        self.assertLess(size, logged / 50)
        # Per-round metadata stays small next to what agents log (tool output of KBs).
        self.assertLess((size - distinct) / 200, 1000)

    def test_full_context_of_every_round_is_rebuilt_exactly(self):
        lines, _ = self.agent_session(30)
        log = self.tmp / "access.log"
        write_lines(log, lines[:17])
        self.run_monitor(log)
        write_lines(log, lines[17:])          # a second pass: the chain resumes from disk
        self.run_monitor(log)
        doc = load_store(self.out)["long"]
        by_key = {r["key"]: r for r in doc["rounds"]}
        for rnd, raw in zip(doc["rounds"], lines):
            logged = json.loads(json.loads(raw)["ai_log"])["messages"]
            self.assertEqual(full_context(by_key, rnd), logged)
        self.assertTrue(all(r["messages_offset"] > 0 for r in doc["rounds"][1:]))

    def test_rewritten_history_starts_a_new_chain(self):
        first = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        compacted = [{"role": "system", "content": "summary of a and b"},
                     {"role": "user", "content": "c"}]
        log = self.tmp / "access.log"
        write_lines(log, [ai_line("s", 1, first), ai_line("s", 2, first + [{"role": "user", "content": "x"}]),
                          ai_line("s", 3, compacted)])
        self.run_monitor(log)
        rounds = load_store(self.out)["s"]["rounds"]
        self.assertEqual(rounds[1]["messages_offset"], 2)
        self.assertEqual(rounds[2]["messages_offset"], 0)
        self.assertEqual(rounds[2]["messages"], compacted)

    def test_late_round_is_inserted_in_event_time_order(self):
        log = self.tmp / "access.log"
        write_lines(log, [ai_line("s", 1, start="2026-02-01T10:00:01.000Z"),
                          ai_line("s", 3, start="2026-02-01T10:00:03.000Z")])
        self.run_monitor(log)
        write_lines(log, [ai_line("s", 2, start="2026-02-01T10:00:02.000Z")])
        self.run_monitor(log)
        doc = load_store(self.out)["s"]
        self.assertEqual([r["request_id"] for r in doc["rounds"]], ["r1", "r2", "r3"])
        self.assertEqual([r["round"] for r in doc["rounds"]], [1, 2, 3])
        self.assertEqual(doc["updated_at"], "2026-02-01T10:00:03.000Z")


class PrivacyMode(TempDirTest):
    def test_no_content_mode_stores_no_text_anywhere(self):
        secret = "SECRET-PROMPT-42"
        log = self.tmp / "access.log"
        msgs = [{"role": "user", "content": secret}]
        write_lines(log, [ai_line("s", 1, msgs, answer=secret + "-answer", reasoning=secret,
                                  system=secret,
                                  tool_calls=[{"id": "c", "type": "function",
                                               "function": {"name": "search",
                                                            "arguments": json.dumps({"q": secret})}}])])
        code, _out, err = self.run_monitor(log, extra=["--no-content"])
        self.assertEqual(code, 0, err)
        for name in os.listdir(self.out):
            data = (self.out / name).read_bytes()
            self.assertNotIn(secret.encode(), data, name)
        rnd = load_store(self.out)["s"]["rounds"][0]
        self.assertEqual(rnd["tool_calls"], [{"function": {"name": "search"}}])
        self.assertEqual(rnd["input_tokens"], 11)


class LoneSurrogates(TempDirTest):
    """A session id or model name may hold a lone surrogate (valid JSON, set by a client):
    the monitor must store it, index it and keep going, run after run."""

    def test_lone_surrogate_in_session_id_and_model_does_not_wedge_the_monitor(self):
        log = self.tmp / "access.log"
        ai = {"session_id": "a\ud800b", "model": "m\udfffx", "input_token": 3,
              "output_token": 1, "consumer": "c\ud800"}
        write_lines(log, [json.dumps({"ai_log": json.dumps(ai), "request_id": "r1"}).encode() + b"\n"])
        for _ in range(2):
            code, _out, err = self.run_monitor(log)
            self.assertEqual(code, 0, err)
        write_lines(log, [ai_line("after", 2)])
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        self.assertIn("a\ud800b", docs)
        self.assertIn("after", docs)
        from agent_session_monitor.reports.reader import StoreReader

        reader = StoreReader.open(self.out)
        self.assertEqual(reader.totals()["rounds"], 2)
        self.assertEqual(reader.sessions(search="a\ud800")[0]["rounds"], 1)
        self.assertIsNotNone(reader.load_session("a\ud800b"))
        reader.close()
