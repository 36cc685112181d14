"""Every line of ../shared/fixtures (copied to tests/data) gives its documented result."""

from __future__ import annotations

import json
import os

from tests.helpers import DATA, TempDirTest
from agent_session_monitor.store.document import full_context, round_question

AGENT = "agent:main:discord:channel:1465367993012981988"


class HigressRealisticLog(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.code, self.stdout, self.stderr = self.run_monitor(DATA / "higress-realistic.log")
        self.docs = self.sessions()

    def test_pass_succeeds_and_summarises(self):
        self.assertEqual(self.code, 0, self.stderr)
        self.assertIn("7 rounds stored in 6 sessions", self.stdout)
        self.assertIn("1 non-AI line.", self.stdout)

    def test_line1_non_ai_request_is_skipped_silently_and_counted(self):
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(state["counters"]["non_ai_lines"], 1)
        self.assertNotIn("bad_lines", state["counters"])
        self.assertNotIn("skipped", self.stderr)

    def test_line2_unsessioned_request_keeps_its_cost(self):
        doc = self.docs[None]
        self.assertTrue(doc["unsessioned"])
        [rnd] = doc["rounds"]
        self.assertEqual((rnd["input_tokens"], rnd["output_tokens"]), (21, 9))
        # gpt-4o-2024-08-06: 2.5 / 10 per 1M tokens.
        self.assertAlmostEqual(rnd["cost_usd"], (21 * 2.5 + 9 * 10) / 1e6, places=15)
        self.assertEqual(rnd["timestamp"], "2026-02-01T09:30:15.123Z")

    def test_lines3_and_4_tool_loop_stores_only_new_messages(self):
        doc = self.docs[AGENT]
        first, second = doc["rounds"]
        self.assertEqual(len(first["messages"]), 2)
        self.assertTrue(first["has_tool_calls"])
        self.assertIsNone(first["answer"])   # the model answered with a tool call only (logged null)
        self.assertEqual(second["messages_offset"], 2)
        self.assertEqual(second["context_key"], first["key"])
        self.assertEqual([m["role"] for m in second["messages"]], ["assistant", "tool"])
        self.assertEqual(round_question(second), '{"temp_c":15,"sky":"clear"}')
        self.assertEqual(second["messages"][-1]["content"], second["question"])
        self.assertEqual(second["chat_round"], 1)
        by_key = {r["key"]: r for r in doc["rounds"]}
        self.assertEqual(len(full_context(by_key, second)), 4)
        self.assertEqual(doc["created_at"], "2026-02-01T09:30:13.901Z")
        self.assertEqual(doc["messages_count"], 2)
        self.assertEqual(doc["total_cached_tokens"], 1024)

    def test_line5_claude_cache_reads_cost_exactly(self):
        [rnd] = self.docs["sess_claude_42"]["rounds"]
        self.assertAlmostEqual(rnd["cost_usd"], 0.010845, places=12)
        self.assertEqual(rnd["cached_tokens"], 20480)
        self.assertEqual(rnd["buckets"]["cache_read"], 20480)
        self.assertEqual(round_question(rnd), [{"text": "summarise the repo", "type": "text"}])
        self.assertEqual(rnd["system"], "You are Claude Code.")

    def test_line6_ai_log_salvaged_from_broken_line(self):
        [rnd] = self.docs["s-quote"]["rounds"]
        self.assertEqual(rnd["request_id"], "3f2a6d1e-0b7c-4c55-9a61-7b0d2f4e8c06")
        self.assertIn("salvaged", rnd["warnings"])
        self.assertIsNotNone(rnd["cost_usd"])  # qwen-max resolves through dashscope/

    def test_line7_truncated_messages_kept_as_given_and_flagged(self):
        [rnd] = self.docs["long-session"]["rounds"]
        self.assertIsInstance(rnd["messages"], str)
        self.assertIn(" [truncated] ", rnd["messages"])
        self.assertTrue(rnd["messages_truncated"])
        self.assertIsNone(rnd["cost_usd"])   # qwen3-max is not in the price table
        self.assertEqual(self.docs["long-session"]["unpriced_models"], ["qwen3-max"])

    def test_line8_hostile_id_stays_inside_output_dir(self):
        doc = self.docs["../../tmp/pwned"]
        self.assertEqual(doc["model"], "<img src=x onerror=alert(1)>")
        self.assertIsNone(doc["total_cost_usd"])
        self.assertFalse(os.path.exists(self.tmp / "tmp" / "pwned.json"))
        for name in os.listdir(self.out):
            self.assertNotIn("/", name)
            self.assertFalse(name.startswith(".."))

    def test_unpriced_models_are_named_in_summary(self):
        self.assertIn("have no price", self.stdout)
        self.assertIn("qwen3-max", self.stdout)


class SkillExampleLogs(TempDirTest):
    def test_v1_two_sessions_with_unpriced_rerank_model(self):
        code, stdout, stderr = self.run_monitor(DATA / "skill-example-access.log")
        self.assertEqual(code, 0, stderr)
        docs = self.sessions()
        main = docs["agent:main:discord:1465367993012981988"]
        self.assertEqual(main["messages_count"], 3)
        self.assertEqual(main["total_input_tokens"], 250 + 320 + 380)
        self.assertEqual(main["total_output_tokens"], 160 + 180 + 220)
        self.assertIsNone(main["total_cost_usd"])       # Qwen3-rerank: no price, not $0
        self.assertEqual(main["unpriced_rounds"], 3)
        self.assertEqual(main["created_at"], "2026-02-01T09:30:15.000Z")
        test = docs["agent:test:discord:9999999999999999999"]
        self.assertIsNotNone(test["rounds"][0]["cost_usd"])  # DeepSeek-R1 resolves
        # A round is known by where its line was (fingerprint + offset) and by the
        # line's bytes, never by a request_id.
        self.assertRegex(main["rounds"][0]["key"], r"^sha256:[0-9a-f]{32}$")
        self.assertEqual(main["rounds"][0]["source"]["offset"], 0)
        self.assertRegex(main["rounds"][0]["source"]["fp"], r"^[0-9a-f]{16}$")

    def test_v2_costs_match_pricing_spec(self):
        code, _stdout, stderr = self.run_monitor(DATA / "skill-example-access-v2.log")
        self.assertEqual(code, 0, stderr)
        docs = self.sessions()
        main = docs["agent:main:discord:1465367993012981988"]
        r1 = main["rounds"][0]
        self.assertAlmostEqual(r1["cost_usd"], 0.001225, places=12)   # gpt-4o worked example
        o1 = docs["agent:main:discord:9999999999999999999"]["rounds"][0]
        self.assertAlmostEqual(o1["cost_usd"], 0.0363, places=12)     # output 80 < reasoning 500
        self.assertEqual(o1["reasoning_tokens"], 500)
        expected = (30 * 2.5 + 120 * 1.25 + 100 * 10 + 120 * 2.5 + 80 * 1.25 + 150 * 10
                    + 100 * 2.5 + 200 * 1.25 + 200 * 10) / 1e6
        self.assertAlmostEqual(main["total_cost_usd"], expected, places=12)
