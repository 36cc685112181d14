"""Totals per session equal an independently computed ground truth (tests/loggen.py) on a
generated log of a few hundred agent sessions: tool loops, model switches mid-session,
cached and reasoning tokens, numeric strings, duplicates and injected bad lines."""

from __future__ import annotations

import json

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import generate, totals_by_session


class GroundTruth(TempDirTest):
    def test_generated_log_gives_ground_truth_per_session(self):
        gen = generate(seed=2026, sessions=300, max_requests=25, bad_every=41, non_ai_every=29,
                       unsessioned_every=53, duplicate_every=61, quoted_ua_every=97)
        log = self.tmp / "access.log"
        write_lines(log, gen.lines)
        code, out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        truth = totals_by_session(gen.events)
        docs = load_store(self.out)
        self.assertEqual(set(docs), set(truth))
        self.assertGreater(len(truth), 250)
        for sid, t in truth.items():
            doc = docs[sid]
            with self.subTest(session=sid):
                self.assertEqual(doc["messages_count"], t["rounds"])
                self.assertEqual(doc["total_input_tokens"], t["input"])
                self.assertEqual(doc["total_output_tokens"], t["output"])
                self.assertEqual(doc["total_reasoning_tokens"], t["reasoning"])
                self.assertEqual(doc["total_cached_tokens"], t["cached"])
                self.assertEqual(doc["total_cache_write_tokens"], t["cache_write"])
                self.assertEqual(set(doc["models"]), t["models"])
                self.assertEqual(doc["unpriced_rounds"], t["unpriced_rounds"])
                if t["unpriced_rounds"] == t["rounds"]:
                    self.assertIsNone(doc["total_cost_usd"])
                else:
                    self.assertAlmostEqual(doc["total_cost_usd"], t["cost"], delta=1e-9 * max(1, t["cost"]))
        # Each round priced with its own model: per-round costs equal the truth too.
        by_request = {e.request_id: e for e in gen.events if e.request_id}
        checked = 0
        for doc in docs.values():
            for rnd in doc["rounds"]:
                event = by_request.get(rnd["request_id"])
                if event is not None:
                    self.assertEqual(rnd["model"], event.model)
                    if event.cost_usd is None:
                        self.assertIsNone(rnd["cost_usd"])
                    else:
                        self.assertAlmostEqual(rnd["cost_usd"], event.cost_usd, delta=1e-12)
                    checked += 1
        self.assertGreater(checked, 1000)
        state = json.loads((self.out / ".state.json").read_text())
        bad = {k: v for k, v in gen.bad_lines.items() if k != "blank"}   # blank: skipped, not bad
        self.assertEqual(state["counters"]["bad_lines"], bad)
        self.assertEqual(state["counters"]["non_ai_lines"], gen.non_ai)
        self.assertGreater(state["counters"]["duplicates_skipped"], 0)
        self.assertIn("salvaged", state["counters"]["warnings"])
