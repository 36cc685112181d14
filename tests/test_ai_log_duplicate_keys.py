"""A key written twice inside the ai_log (failure-scenarios P9; input-format.md).

The plugin writes the ai_log with Go's json.Marshal of a map, so it never repeats a key,
and the string escaping keeps any client text inside values: no client can add one.
A repeated key therefore comes from another writer (a hand-made or altered log, a
broken producer), and json would silently keep the last copy. Policy under test:
- copies of a key that decides a bill (session, model, a token count, a detail map,
  the provider's cost) that differ: the line is bad ``duplicate_key``, never billed
  (which copy is genuine cannot be known, and picking one lets that writer choose);
- equal copies, or a repeated key that decides nothing (``answer``, ``api``...): the
  round is kept, flagged ``duplicate_key``;
both counted by kind in the state and reported. Generated over every such key, equal or
not, at every place (before, around and after ``messages``; no messages), cold and
with the history caches warm, in Higress's line and the skill's example format.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import unittest

from agent_session_monitor.ingest import history
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state
from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import envoy_line
from tests.test_forgery import genuine_outer

READ_TIME = "2026-03-01T00:00:00.000Z"
MONEY = {"session_id": ('"alice"', '"mallory"'), "model": ('"gpt-4o"', '"gpt-4o-mini"'),
         "input_token": ("1000", "1"), "output_token": ("10", "999999"),
         "total_token": ("1010", "3"), "cached_tokens": ("0", "900"),
         "reasoning_tokens": ("0", "5"),
         "input_token_details": ('"{\\"cached_tokens\\":0}"', '"{\\"cached_tokens\\":900}"'),
         "output_token_details": ('"{}"', '"{\\"reasoning_tokens\\":7}"'),
         "cost": ("0.01", "0.00001")}
HARMLESS = {"answer": ('"a"', '"b"'), "api": ('"chat"', '"other"'), "chat_round": ("1", "2")}


def members(n: int, with_messages: bool = True) -> list[tuple[str, str]]:
    """The ai_log's members as Go writes them (sorted keys), values as JSON text."""
    m = {"answer": '"a"', "api": '"chat"', "cached_tokens": "0", "chat_round": "1",
         "cost": "0.01", "input_token": "1000",
         "input_token_details": '"{\\"cached_tokens\\":0}"', "model": '"gpt-4o"',
         "output_token": "10", "output_token_details": '"{}"', "reasoning_tokens": "0",
         "session_id": '"alice"', "total_token": "1010"}
    if with_messages:
        m["messages"] = json.dumps([{"role": "system", "content": "sys"}] + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
            for i in range(n + 1)])
    return sorted(m.items())


def ai_text(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}"


def with_duplicate(n: int, key: str, value: str, at: int, with_messages: bool = True) -> str:
    pairs = members(n, with_messages)
    pairs.insert(min(at, len(pairs)), (key, value))
    return ai_text(pairs)


def higress(ai: str, n: int = 0) -> bytes:
    return envoy_line(genuine_outer(n), ai).rstrip(b"\n")


def skill(ai: str, n: int = 0) -> bytes:
    return json.dumps({"__file_offset__": str(n), "timestamp": "2026-02-01T09:30:15Z",
                       "ai_log": ai}).encode()


def outcome(raw: bytes):
    try:
        return parse_line(raw, READ_TIME)
    except BadLine as bad:
        return bad


class DuplicateKeysInTheAiLog(unittest.TestCase):
    def setUp(self) -> None:
        history.CACHE.clear()
        history.RAW.clear()

    def check(self, key: str, copies: tuple[str, str], raw: bytes, what) -> None:
        got = outcome(raw)
        differ = copies[0] != copies[1]
        if key in MONEY and differ:
            self.assertIsInstance(got, BadLine, what)
            self.assertEqual(got.kind, "duplicate_key", what)
            self.assertIn(key, got.detail)
        else:
            self.assertIsInstance(got, Request, (what, got))
            self.assertIn("duplicate_key", got.warnings, what)
            self.assertEqual((got.session_id, got.input_token), ("alice", 1000), what)

    def test_every_key_repeated_at_every_place_cold_and_warm_in_both_formats(self):
        cases = 0
        for (key, (genuine, other)), same, fmt, with_messages, warm in itertools.product(
                {**MONEY, **HARMLESS}.items(), (True, False), (higress, skill), (True, False),
                (False, True)):
            size = len(members(0, with_messages)) + 1
            for at in range(size):
                self.setUp()
                copy_value = genuine if same else other
                base = members(3, with_messages)
                original = dict(base)[key]
                # The genuine copy stays where Go puts it; the other one goes at `at`
                # (before it, when at is earlier: json would then keep the genuine).
                pairs = [(k, v if k != key else genuine) for k, v in base]
                pairs.insert(at, (key, copy_value))
                if warm:   # the session's previous request: the history caches hold it
                    parse_line(fmt(ai_text(members(2, with_messages)), 1), READ_TIME)
                what = (key, same, fmt.__name__, with_messages, warm, at)
                self.check(key, (genuine, copy_value), fmt(ai_text(pairs), 2), what)
                self.assertEqual(original, dict(members(3, with_messages))[key])
                cases += 1
        self.assertGreater(cases, 1500)

    def test_plain_ai_logs_are_not_flagged(self):
        rng = random.Random(3)
        for n in range(200):
            fmt = rng.choice((higress, skill))
            got = parse_line(fmt(ai_text(members(n, rng.random() < 0.8)), n), READ_TIME)
            self.assertIsInstance(got, Request)
            self.assertNotIn("duplicate_key", got.warnings)

    def test_a_repeated_key_inside_a_message_or_a_tool_call_is_content_not_a_bill(self):
        pairs = dict(members(2))
        pairs["messages"] = ('[{"role":"user","content":"a","content":"b"}]')
        pairs["tool_calls"] = '[{"id":"1","id":"2","type":"function"}]'
        got = parse_line(higress(ai_text(sorted(pairs.items()))), READ_TIME)
        self.assertIsInstance(got, Request)
        self.assertEqual(got.input_token, 1000)
        self.assertNotIn("duplicate_key", got.warnings)


class DuplicateKeysThroughTheMonitor(TempDirTest):
    def test_repeated_keys_are_counted_by_kind_reported_and_only_safe_rounds_billed(self):
        rng = random.Random(9)
        lines, billed = [], []
        for n in range(300):
            key = rng.choice(list(MONEY) + list(HARMLESS))
            genuine, other = {**MONEY, **HARMLESS}[key]
            same = rng.random() < 0.4
            pairs = [(k, str(1000 + n) if k == "input_token" and key != k else v)
                     for k, v in members(n)]
            pairs.insert(rng.randrange(len(pairs) + 1), (key, genuine if same else other))
            lines.append(higress(ai_text(pairs), n) + b"\n")
            if same or key in HARMLESS:
                billed.append(1000 + n if key != "input_token" else 1000)
        log = self.tmp / "access.log"
        write_lines(log, lines)
        err = io.StringIO()
        with Monitor(MonitorConfig(log_paths=[str(log)], output_dir=self.out), err=err) as m:
            m.poll_once()
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        self.assertEqual(sorted(r["input_tokens"] for r in docs["alice"]["rounds"]),
                         sorted(billed))
        self.assertTrue(all("duplicate_key" in r["warnings"] for r in docs["alice"]["rounds"]))
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["bad_lines"]["duplicate_key"], 300 - len(billed))
        self.assertEqual(state.counters["warnings"]["duplicate_key"], len(billed))
        self.assertIn("skipped duplicate_key line in", err.getvalue())


if __name__ == "__main__":
    unittest.main()
