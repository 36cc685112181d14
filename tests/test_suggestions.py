"""Model-switch suggestions (exact repricing, same provider first, tiers per request, the
candidate list), their per-session form in the export, and the CLI's insights: anomaly
badges and cheaper models in ``show``, the ``burn`` command."""

from __future__ import annotations

import io
import json
import random
import unittest
from dataclasses import replace
from datetime import timedelta

from tests import loggen
from tests.helpers import TempDirTest, ingest, load_store, write_lines
from tests.test_budgets import NOW, line

from agent_session_monitor import cli
from agent_session_monitor.finops.insights import overview_burn, session_insights
from agent_session_monitor.pricing.cost import Buckets, Price, Tier, bucket_cost
from agent_session_monitor.pricing.table import PriceTable, load_price_table
from agent_session_monitor.reports.reader import StoreReader
from agent_session_monitor.finops.suggestions import (
    CAVEAT, _Rounds, best_per_model, candidates, index_suggestions, suggest,
)

TABLE = PriceTable({
    "acme/large": Price(input=10.0, output=30.0, cache_read=1.0, provider="acme"),
    "acme/medium": Price(input=3.0, output=9.0, provider="acme"),
    "acme/small": Price(input=0.5, output=1.5, cache_read=0.05, provider="acme"),
    "acme/almost": Price(input=9.5, output=29.0, cache_read=1.0, provider="acme"),
    "other/cheap": Price(input=0.1, output=0.2, provider="other"),
    "other/cheaper-twin": Price(input=0.1, output=0.2, provider="other"),
    "third/mid": Price(input=1.0, output=2.0, provider="third"),
    "acme/free": Price(input=0.0, output=0.0, provider="acme"),
    "acme/large-audio": Price(input=0.2, output=0.4, provider="acme"),
})


def rnd(n: int, model: str = "acme/large", inp: int = 10_000, cached: int = 0,
        out: int = 500, table: PriceTable = TABLE) -> dict:
    b = Buckets(input=inp, cache_read=cached, output=out)
    return {"round": n, "model": model, "buckets": {k: v for k, v in b.as_dict().items() if v},
            "cost_usd": table.cost(model, b), "priced_as": model if table.lookup(model) else None}


class SuggestTest(unittest.TestCase):
    def test_same_provider_first_then_one_per_other_provider(self) -> None:
        rounds = [rnd(1), rnd(2, cached=40_000), rnd(3, model="unknown-model")]
        found = suggest(rounds, TABLE)
        self.assertEqual([(s.model, s.same_provider) for s in found],
                         [("acme/small", True), ("acme/medium", True),
                          ("other/cheap", False), ("third/mid", False)])
        actual = rounds[0]["cost_usd"] + rounds[1]["cost_usd"]
        small = TABLE.models["acme/small"]
        expected = (bucket_cost(Buckets(10_000, 0, 0, 0, 500, 0), small)
                    + bucket_cost(Buckets(10_000, 40_000, 0, 0, 500, 0), small))
        self.assertAlmostEqual(found[0].cost_usd, expected, places=12)
        self.assertAlmostEqual(found[0].actual_usd, actual, places=12)
        self.assertAlmostEqual(found[0].saving_usd, actual - expected, places=12)
        self.assertAlmostEqual(found[0].saving_pct, 100 * (actual - expected) / actual)
        # Not suggested: the session's own model, a 5% saving, free and audio models,
        # and the second model at a price already shown.
        names = {s.model for s in found}
        self.assertFalse(names & {"acme/large", "acme/almost", "acme/free", "acme/large-audio",
                                  "other/cheaper-twin"})

    def test_nothing_to_suggest_without_priced_rounds(self) -> None:
        self.assertEqual(suggest([rnd(1, model="unknown-model")], TABLE), [])
        self.assertEqual(suggest([rnd(1, model="acme/small")], TABLE, same_limit=0,
                                 other_limit=0), [])

    def test_size_tiers_are_applied_per_request(self) -> None:
        tiered = Price(input=1.0, output=4.0, cache_read=0.1,
                       tiers=(Tier(100_000, input=2.0, output=8.0),
                              Tier(200_000, input=3.0, cache_read=0.3)))
        rng = random.Random(5)
        rounds = [Buckets(input=rng.randrange(0, 150_000), cache_read=rng.randrange(0, 120_000),
                          output=rng.randrange(0, 3000)) for _ in range(300)]
        rounds += [Buckets(input=100_000), Buckets(input=200_000), Buckets(input=200_001)]
        docs = [{"buckets": b.as_dict()} for b in rounds]
        per_round = sum(bucket_cost(b, tiered) for b in rounds)
        self.assertAlmostEqual(_Rounds(docs).cost(tiered), per_round, places=9)
        # The sum of the rounds would wrongly pass every threshold.
        self.assertGreater(bucket_cost(sum(rounds, Buckets()), tiered), per_round)

    def test_bundled_candidates_are_chat_models_one_per_price(self) -> None:
        table = load_price_table()
        found = candidates(table)
        names = [k for k, _, _ in found]
        self.assertIn("gpt-4o-mini", names)
        self.assertIn("claude-3-5-haiku-20241022", names)
        self.assertIn("deepseek-chat", names)
        for bad in ("ft:gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "gpt-audio",
                    "gpt-4o-search-preview", "deepseek/deepseek-chat", "qwencloud/qwen-max",
                    "gemini/lyria-3.5"):
            self.assertNotIn(bad, names)
        prices = [(p, replace(price, provider=None)) for _, p, price in found]
        self.assertEqual(len(prices), len(set(prices)))
        self.assertTrue(all(price.input > 0 and price.output > 0 for _, _, price in found))

    def test_session_insights_for_the_web(self) -> None:
        data = session_insights({"session_id": "x", "rounds": [rnd(1), rnd(2)]}, TABLE)
        self.assertEqual(set(data), {"anomalies", "suggestions", "suggestions_basis", "caveat"})
        self.assertEqual(data["anomalies"], [])
        self.assertEqual(data["caveat"], CAVEAT)
        self.assertEqual(set(data["suggestions"][0]), {"model", "provider", "same_provider",
                                                       "cost_usd", "actual_usd", "saving_usd",
                                                       "saving_pct"})
        json.dumps(data)


class StoreSuggestionTest(TempDirTest):
    """The export's per-session suggestion, from index sums, against the session files."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.generated = loggen.generate(seed=21, sessions=60, max_requests=12)

    def test_index_suggestions_match_the_session_files(self) -> None:
        log = self.tmp / "access.log"
        log.write_bytes(b"".join(self.generated.lines))
        ingest(self.out, log)
        table = load_price_table()
        docs = load_store(self.out)
        reader = StoreReader.open(self.out)
        self.addCleanup(reader.close)
        found = index_suggestions(reader.db, table)
        mix: dict = {}
        for doc in docs.values():
            for r in doc["rounds"]:
                if r["cost_usd"] is not None:
                    mix[r["model"]] = mix.get(r["model"], Buckets()) + Buckets.from_dict(r["buckets"])
        plan = best_per_model(table, mix)
        checked = 0
        for sid, doc in docs.items():
            key = sid if sid is not None else "(unsessioned)"
            priced = [r for r in doc["rounds"] if r["cost_usd"] is not None]
            options = plan.get(doc["model"]) if priced else None
            if not options:
                self.assertIsNone(found.get(key))
                continue
            actual = sum(r["cost_usd"] for r in priced)
            total = sum((Buckets.from_dict(r["buckets"]) for r in priced), Buckets())
            expected = None
            for option in options:
                if option is None:
                    continue
                cost = bucket_cost(total, option[1])
                if actual and 100 * (actual - cost) / actual >= 10:
                    expected = {"model": option[0], "cost_usd": round(cost, 12),
                                "saving_pct": round(100 * (actual - cost) / actual, 1)}
                    break
            self.assertEqual(found.get(key), expected, key)
            checked += 1
        self.assertGreater(checked, 40)

    def test_export_json_has_a_cheaper_model_per_session(self) -> None:
        log = self.tmp / "access.log"
        log.write_bytes(b"".join(self.generated.lines))
        ingest(self.out, log)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--data-dir", str(self.out), "export", "-", "--format", "json"],
                                  out=out, err=err), 0, err.getvalue())
        report = json.loads(out.getvalue())
        self.assertIn("cli.py show SESSION_ID", report["anomalies_note"])
        self.assertIn("try it on a sample first", report["cheaper_model_basis"])
        with_suggestion = [s for s in report["sessions"] if s["cheaper_model"]]
        self.assertGreater(len(with_suggestion), 30)
        for s in with_suggestion:
            self.assertLess(s["cheaper_model"]["cost_usd"], s["cost_usd"])
        for s in report["sessions"]:
            if s["cost_usd"] is None:
                self.assertIsNone(s["cheaper_model"])


class CliInsightsTest(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        call = [{"id": "c1", "type": "function",
                 "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]
        history = [{"role": "user", "content": "fix it"}]
        lines = []
        for n in range(1, 6):
            lines.append(line(n, session="looping", tool_calls=call, messages=list(history)))
            history += [{"role": "assistant", "content": None, "tool_calls": call},
                        {"role": "tool", "tool_call_id": "c1", "content": "same content"}]
        start = NOW - timedelta(minutes=8)
        lines += [line(10 + n, session="busy", at=start + timedelta(minutes=n), inp=3000, out=300)
                  for n in range(5)]
        log = self.tmp / "access.log"
        write_lines(log, lines, "wb")
        ingest(self.out, log)

    def cli(self, *argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(self.out), *argv], out=out, err=err)
        self.assertEqual((code, err.getvalue()), (0, ""))
        return out.getvalue()

    def test_show_has_badges_anomalies_and_cheaper_models(self) -> None:
        text = self.cli("show", "looping")
        self.assertIn("\nAnomalies (1):\n  [LOOP] round 3 (warning): read_file", text)
        # Every round of the loop carries the badge; the sessions' other rounds none.
        for n in range(1, 6):
            self.assertIn(f"  Round {n}  |  2026-03-02 11:30:0{n} UTC  |  gpt-4o  |  [LOOP]\n", text)
        self.assertEqual(text.count("[LOOP]"), 6)
        self.assertIn("\nCheaper models for the same tokens:\n  gpt-5-nano", text)
        self.assertIn("(same provider)", text)
        self.assertIn("try it on a sample first.", text)
        data = json.loads(self.cli("show", "looping", "--json"))
        insights = data["insights"]
        self.assertEqual([(a["kind"], a["round"], a["first_round"], a["last_round"])
                          for a in insights["anomalies"]], [("tool_loop", 3, 1, 5)])
        self.assertTrue(insights["suggestions"][0]["same_provider"])

    def test_burn_command_text_and_json(self) -> None:
        at = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
        data = json.loads(self.cli("burn", "--at", at, "--json"))
        self.assertEqual(data["at"], "2026-03-02T12:00:00.000Z")
        self.assertEqual(data["recent"]["rounds"], 10)
        self.assertEqual([s["session_id"] for s in data["active_sessions"]], ["busy"])
        text = self.cli("burn", "--at", at, "--tz", "+08:00")
        self.assertIn("Burn rate at 2026-03-02 20:00 UTC+08:00", text)
        self.assertIn("  Today:   2026-03-02 (UTC+08:00):", text)
        self.assertIn("Active sessions (a round in the last 15 min): 1\nSESSION", text)
        self.assertRegex(text, r"\nbusy +gpt-4o +\d[\d,]* +\$[\d.]+ +5 +2026-03-02 19:56:00\n")
        reader = StoreReader.open(self.out)
        self.addCleanup(reader.close)
        self.assertEqual(overview_burn(reader, now=NOW), data)

    def test_burn_on_an_empty_store(self) -> None:
        empty = self.tmp / "empty"
        ingest(empty, self.tmp / "none.log")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--data-dir", str(empty), "burn"], out=out, err=err), 0)
        self.assertIn("Active sessions (a round in the last 15 min): 0", out.getvalue())
        self.assertIn("note: no sessions", err.getvalue())


if __name__ == "__main__":
    unittest.main()
