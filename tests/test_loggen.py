"""The log generator itself: deterministic, shaped like the real producers, and its
ground truth (events, costs, bad-line counts) agrees with the lines it writes."""

from __future__ import annotations

import json
import re
import unittest
from collections import Counter, defaultdict

from tests import loggen

NOISE = dict(bad_every=7, non_ai_every=11, unsessioned_every=13, duplicate_every=17,
             quoted_ua_every=40)
# The ai_log value at the head of a line, found without parsing the rest (salvage).
AI_LOG_HEAD = re.compile(rb'^\{"ai_log":"((?:[^"\\]|\\.)*)"')


def decode(line: bytes) -> tuple[dict, dict] | None:
    """(outer, ai_log) of a valid AI line, else None."""
    try:
        outer = json.loads(line)
    except ValueError:
        return None
    if not isinstance(outer, dict) or outer.get("ai_log", "-") == "-":
        return None
    try:
        ai = json.loads(outer["ai_log"])
    except ValueError:
        return None
    return outer, ai


class Determinism(unittest.TestCase):
    def test_same_seed_same_bytes(self):
        self.assertEqual(loggen.generate(3, sessions=10, **NOISE).lines,
                         loggen.generate(3, sessions=10, **NOISE).lines)

    def test_other_seed_other_log(self):
        self.assertNotEqual(loggen.generate(3, sessions=10).lines,
                            loggen.generate(4, sessions=10).lines)

    def test_noise_leaves_the_sessions_unchanged(self):
        quiet = loggen.generate(5, sessions=15)
        noisy = loggen.generate(5, sessions=15, **NOISE)
        self.assertEqual(quiet.events, [e for e in noisy.events if e.session_id is not None])
        self.assertGreater(len(noisy.events), len(quiet.events))   # unsessioned ones

    def test_streaming_form_writes_the_same_lines(self):
        whole = loggen.generate(6, sessions=20, **NOISE).lines
        streamed = []
        for line in loggen.iter_lines(6, 10 ** 12, **NOISE):
            streamed.append(line)
            if len(streamed) == 150:
                break
        self.assertEqual(streamed, whole[:150])

    def test_iter_lines_stops_once_the_target_is_reached(self):
        lines = list(loggen.iter_lines(1, 300_000))
        total = sum(map(len, lines))
        self.assertGreaterEqual(total, 300_000)
        self.assertLess(total - len(lines[-1]), 300_000)


class LineShapes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gen = loggen.generate(0, sessions=40, **NOISE)

    def test_every_line_is_json_with_a_decodable_ai_log_except_the_injected_ones(self):
        found: Counter[str] = Counter()
        for line in self.gen.lines:
            self.assertTrue(line.endswith(b"\n"))
            if not line.strip():
                found["blank"] += 1
                continue
            try:
                outer = json.loads(line)
            except UnicodeDecodeError:
                found["bad_utf8"] += 1
                continue
            except ValueError:
                if AI_LOG_HEAD.match(line) and b'"evil"' in line:
                    found["quoted_ua"] += 1   # invalid JSON, salvageable ai_log
                    json.loads(json.loads(b'"' + AI_LOG_HEAD.match(line).group(1) + b'"'))
                else:
                    found["bad_json"] += 1
                continue
            if not isinstance(outer, dict):
                found["not_object"] += 1
                continue
            self.assertTrue(all(isinstance(v, str) for v in outer.values()), line[:200])
            if outer.get("ai_log", "-") == "-":
                found["non_ai"] += 1
                continue
            try:
                ai = json.loads(outer["ai_log"])
            except ValueError:
                found["bad_ai_log"] += 1
                continue
            counts = [loggen._count(ai.get(k)) for k in ("input_token", "output_token")]
            if any(n is None or n < 0 for n in counts):
                found["bad_tokens"] += 1
        expected = Counter(self.gen.bad_lines)
        expected["non_ai"] = self.gen.non_ai
        expected["quoted_ua"] = found["quoted_ua"]
        self.assertGreater(found["quoted_ua"], 0)
        self.assertEqual(found, expected)
        self.assertEqual(set(self.gen.bad_lines), set(loggen.BAD_KINDS))

    def test_events_agree_with_their_lines(self):
        by_id = {}
        for line in self.gen.lines:
            decoded = decode(line)
            if decoded:
                by_id.setdefault(decoded[0]["request_id"], decoded)
        for event in self.gen.events:
            if event.request_id not in by_id:    # the quoted User-Agent lines
                continue
            outer, ai = by_id[event.request_id]
            self.assertEqual(outer["start_time"], event.start_time)
            self.assertEqual(ai.get("session_id"), event.session_id)
            self.assertEqual(ai["model"], event.model)
            self.assertEqual(int(ai["input_token"]), event.input_token)
            self.assertEqual(int(ai["output_token"]), event.output_token)
            self.assertEqual(ai.get("consumer"), event.consumer)
            self.assertEqual(loggen.cost_of_ai_log(ai), event.cost_usd)

    def test_duplicates_repeat_a_line_and_are_listed_once(self):
        ids = Counter(decode(line)[0]["request_id"] for line in self.gen.lines if decode(line))
        self.assertTrue(any(n > 1 for n in ids.values()))
        event_ids = [e.request_id for e in self.gen.events]
        self.assertEqual(len(event_ids), len(set(event_ids)))

    def test_start_time_has_milliseconds_and_lines_roughly_follow_it(self):
        times = [e.start_time for e in self.gen.events]
        self.assertTrue(all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t)
                            for t in times))
        ms = [loggen._parse_time(t) for t in times]
        latest, worst = 0, 0
        for t in ms:
            latest = max(latest, t)
            worst = max(worst, latest - t)
        self.assertGreater(worst, 0)            # some jitter between sessions
        self.assertLess(worst, 5 * 60 * 1000)   # but only a little

    def test_realistic_variety(self):
        blob = b"".join(self.gen.lines)
        models = {e.model for e in self.gen.events}
        self.assertLessEqual({"gpt-4o-2024-08-06", "claude-sonnet-4-20250514",
                              "gemini-2.5-flash", loggen.UNPRICED_MODEL}, models)
        for needle in (b'/v1/messages', b'thoughts_token_count', b'cache_read_input_tokens',
                       b'\\\\u003cscript\\\\u003e', "中文".encode(), "😡".encode(),
                       b'\\"input_token\\":\\"', b'\\"input_token_details\\":{',
                       b'\\"input_token_details\\":\\"{'):
            self.assertIn(needle, blob)
        self.assertTrue(any(e.reasoning_tokens for e in self.gen.events))
        self.assertTrue(any(e.cached_tokens for e in self.gen.events))
        self.assertTrue(any(e.cache_write_tokens for e in self.gen.events))
        self.assertTrue(any(e.cost_usd is None for e in self.gen.events))
        self.assertTrue(any(e.session_id is None for e in self.gen.events))
        per_session = defaultdict(set)
        for e in self.gen.events:
            per_session[e.session_id].add(e.model)
        self.assertTrue(any(len(m) > 1 for sid, m in per_session.items() if sid))


class Histories(unittest.TestCase):
    def test_each_request_relogs_the_history_and_new_messages_counts_the_rest(self):
        gen = loggen.generate(2, sessions=40)
        previous: dict[str, dict] = {}
        loops = turns = compactions = 0
        for line, event in zip(gen.lines, gen.events):
            ai = decode(line)[1]
            messages = ai["messages"]
            self.assertEqual(ai["question"], messages[-1]["content"])
            prev = previous.get(event.session_id)
            if prev is None:
                self.assertEqual(event.new_messages, len(messages))
            elif messages[:len(prev["messages"])] == prev["messages"]:
                self.assertEqual(event.new_messages, len(messages) - len(prev["messages"]))
                last = messages[-1]
                tool_result = last["role"] == "tool" or (
                    isinstance(last["content"], list)
                    and last["content"][0]["type"] == "tool_result")
                if tool_result:    # a tool loop stays in the same round
                    loops += 1
                    self.assertEqual(ai["chat_round"], prev["chat_round"])
                else:
                    turns += 1
                    self.assertEqual(ai["chat_round"], prev["chat_round"] + 1)
            else:                  # the agent compacted its history: a new chain
                compactions += 1
                self.assertEqual(event.new_messages, len(messages))
            previous[event.session_id] = ai
        self.assertGreater(loops, 50)
        self.assertGreater(turns, 20)
        self.assertGreater(compactions, 0)


class Costs(unittest.TestCase):
    """pricing.md's worked examples, through lines as Higress writes them."""

    def line_cost(self, ai: dict) -> float:
        line = loggen.envoy_line({k: "-" for k in loggen._OUTER_KEYS}, loggen.go_json(ai))
        return loggen.cost_of_ai_log(json.loads(json.loads(line)["ai_log"]))

    def test_anthropic_cache_read_example(self):
        ai = {"model": "claude-sonnet-4-20250514", "input_token": 12, "output_token": 311,
              "input_token_details": '{"cache_creation_input_tokens":0,'
                                     '"cache_read_input_tokens":20480}',
              "output_token_details": "{}"}
        self.assertAlmostEqual(self.line_cost(ai), 0.010845, places=12)

    def test_gpt4o_cached_example(self):
        ai = {"model": "gpt-4o-2024-08-06", "input_token": "150", "output_token": 100,
              "cached_tokens": 120, "input_token_details": {"cached_tokens": 120}}
        self.assertAlmostEqual(self.line_cost(ai), 0.001225, places=12)

    def test_o1_reasoning_examples(self):
        inside = {"model": "o1-2024-12-17", "input_token": 100, "output_token": 580,
                  "reasoning_tokens": 500}
        beside = dict(inside, output_token=80)   # the skill's own line: output < reasoning
        self.assertAlmostEqual(self.line_cost(inside), 0.0363, places=12)
        self.assertAlmostEqual(self.line_cost(beside), 0.0363, places=12)

    def test_gemini_thoughts_are_outside_the_output(self):
        ai = {"model": "gemini-2.5-flash", "input_token": 1000, "output_token": 100,
              "output_token_details": '{"thoughts_token_count":400}'}
        self.assertAlmostEqual(self.line_cost(ai), (1000 * 0.3 + 100 * 2.5 + 400 * 2.5) / 1e6,
                               places=12)

    def test_unpriced_model_costs_none(self):
        self.assertIsNone(loggen.cost_of_ai_log({"model": loggen.UNPRICED_MODEL,
                                                 "input_token": 5, "output_token": 5}))

    def test_totals_sum_the_events_once(self):
        gen = loggen.generate(8, sessions=12, unsessioned_every=5, duplicate_every=4)
        totals = loggen.totals_by_session(gen.events + gen.events[:10])
        self.assertEqual(sum(t["rounds"] for t in totals.values()), len(gen.events))
        self.assertAlmostEqual(sum(t["cost"] for t in totals.values()),
                               sum(e.cost_usd or 0.0 for e in gen.events))
        self.assertIn(None, totals)


if __name__ == "__main__":
    unittest.main()
