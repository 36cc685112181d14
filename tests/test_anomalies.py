"""Agent anomalies on crafted sessions (each detector fires where it should, with the
numbers in its explanation right) and silence on a normal generated corpus."""

from __future__ import annotations

import json
import time
import unittest
from datetime import datetime, timedelta, timezone

from tests import loggen
from tests.helpers import TempDirTest, ingest, load_store

from agent_session_monitor.finops import anomalies
from agent_session_monitor.finops.anomalies import Settings, detect
from agent_session_monitor.pricing.cost import Buckets, Price, bucket_cost
from agent_session_monitor.pricing.table import PriceTable, load_price_table

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TABLE = PriceTable({"m": Price(input=1.0, output=2.0, cache_read=0.5),
                    "big": Price(input=100.0, output=200.0)})


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def rnd(n: int, *, at: datetime | None = None, model: str = "m", prompt: int = 1000,
        cached: int = 0, output: int = 100, calls: list | None = None,
        messages: list | None = None, cache_write: int = 0) -> dict:
    """Round ``n`` priced with TABLE from its buckets, as the monitor stores it."""
    buckets = Buckets(input=prompt - cached - cache_write, cache_read=cached,
                      cache_write=cache_write, output=output)
    found = TABLE.lookup(model)
    return {"round": n, "key": f"k{n}", "timestamp": stamp(at or T0 + timedelta(minutes=n)),
            "model": model, "input_tokens": prompt, "output_tokens": output,
            "cached_tokens": cached, "buckets": {k: v for k, v in buckets.as_dict().items() if v},
            "cost_usd": bucket_cost(buckets, found[1]) if found else None,
            "tool_calls": calls or [], "has_tool_calls": bool(calls),
            "messages": messages if messages is not None else []}


def call(name: str, arguments: str, id_: str = "c") -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def result(text: str) -> list:
    return [{"role": "tool", "tool_call_id": "c", "content": text}]


def session(rounds: list[dict]) -> dict:
    return {"session_id": "s", "rounds": rounds}


class ToolLoopTest(unittest.TestCase):
    def test_same_call_in_rounds_in_a_row_is_one_loop(self) -> None:
        rounds = [rnd(1), rnd(2, calls=[call("grep", '{"q": "x"}')])]
        # The same call, its arguments spelled differently: compared by value.
        spellings = ['{"path": "a.py", "n": 1}', '{"n":1,"path":"a.py"}', '{"path":"a.py","n":1}',
                     '{ "n": 1, "path": "a.py" }', '{"path": "a.py", "n": 1}']
        for n, args in enumerate(spellings, 3):
            rounds.append(rnd(n, calls=[call("read_file", args, f"id{n}")],
                              messages=result("same file")))
        rounds.append(rnd(8, messages=result("same file")))
        found = detect(session(rounds), TABLE)
        self.assertEqual([a.kind for a in found], ["tool_loop"])
        a = found[0]
        self.assertEqual((a.round, a.first_round, a.last_round, a.anchor), (5, 3, 7, "k3"))
        self.assertEqual(a.severity, "warning")   # 5 repeats: under twice the threshold
        self.assertIn('read_file({"n": 1, "path": "a.py"}) was called in 5 rounds in a row (3-7)',
                      a.explanation)
        self.assertAlmostEqual(a.cost_usd, sum(r["cost_usd"] for r in rounds[2:7]))

    def test_same_call_with_changing_results_is_polling_not_a_loop(self) -> None:
        rounds = [rnd(n, calls=[call("kubectl_get", '{"pod": "web"}')],
                      messages=result(f"status {n}") if n > 1 else [])
                  for n in range(1, 8)]
        self.assertEqual(detect(session(rounds), TABLE), [])
        same = [rnd(n, calls=[call("kubectl_get", '{"pod": "web"}')],
                    messages=result("Pending") if n > 1 else []) for n in range(1, 8)]
        self.assertEqual([a.kind for a in detect(session(same), TABLE)], ["tool_loop"])

    def test_different_arguments_are_not_a_loop(self) -> None:
        rounds = [rnd(n, calls=[call("read_file", json.dumps({"path": f"f{n}.py"}))])
                  for n in range(1, 10)]
        self.assertEqual(detect(session(rounds), TABLE), [])

    def test_without_arguments_only_a_long_run_counts(self) -> None:
        # --no-content keeps tool names only: Read six times may be six files.
        names_only = lambda n: rnd(n, calls=[{"function": {"name": "Read"}}])  # noqa: E731
        self.assertEqual(detect(session([names_only(n) for n in range(1, 6)]), TABLE), [])
        found = detect(session([names_only(n) for n in range(1, 7)]), TABLE)
        self.assertEqual([(a.kind, a.severity) for a in found], [("tool_loop", "info")])
        self.assertIn("arguments not stored", found[0].explanation)

    def test_a_loop_is_anchored_at_its_start_wherever_the_scan_begins(self) -> None:
        rounds = [rnd(n, calls=[call("ls", "{}")]) for n in range(1, 13)]
        full = detect(session(rounds), TABLE)
        self.assertEqual([(a.round, a.anchor, a.severity) for a in full], [(3, "k1", "critical")])
        # The monitor passes its first new round: the loop became visible long before.
        self.assertEqual(detect(session(rounds), TABLE, since_round=12), [])
        self.assertEqual([a.anchor for a in detect(session(rounds[:3]), TABLE, since_round=3)],
                         ["k1"])


class RunawayContextTest(unittest.TestCase):
    def growing(self, sizes: list[int]) -> list[dict]:
        return [rnd(n, prompt=p, cached=p // 2) for n, p in enumerate(sizes, 1)]

    def test_growth_past_the_limit_with_the_next_rounds_priced(self) -> None:
        sizes = [20_000 + 15_000 * i for i in range(12)]   # 20k .. 185k
        rounds = self.growing(sizes)
        found = detect(session(rounds), TABLE)
        self.assertEqual([a.kind for a in found], ["runaway_context"])
        a = found[0]
        # First round at or past 100k, at least five rounds into the growing run.
        self.assertEqual((a.round, a.first_round, a.last_round), (7, 1, 12))
        self.assertEqual(a.severity, "warning")
        expected = 0.0
        for step in range(1, 11):
            p = 185_000 + 15_000 * step
            expected += bucket_cost(Buckets(input=round(92_500 * p / 185_000),
                                            cache_read=round(92_500 * p / 185_000), output=100),
                                    TABLE.models["m"])
        self.assertAlmostEqual(a.projected_usd, expected, places=9)
        self.assertIn("from 20,000 to 185,000 tokens (+15,000 a round)", a.explanation)
        self.assertIn("the next 10 rounds cost about", a.explanation)

    def test_a_compacted_context_is_reported_as_over(self) -> None:
        sizes = [60_000 + 10_000 * i for i in range(8)] + [5_000, 6_000]
        a = detect(session(self.growing(sizes)), TABLE)[0]
        self.assertIsNone(a.projected_usd)
        self.assertIn("round 9 started from a smaller context", a.explanation)

    def test_ordinary_growth_under_the_limit_is_quiet(self) -> None:
        self.assertEqual(detect(session(self.growing([2_000 * i for i in range(1, 40)])), TABLE), [])
        # Big but not growing: a large fixed prompt is not a runaway.
        self.assertEqual(detect(session(self.growing([150_000] * 10)), TABLE), [])


class CostOutlierTest(unittest.TestCase):
    def test_one_round_far_above_the_median(self) -> None:
        rounds = [rnd(n, prompt=4000 + 37 * (n % 5)) for n in range(1, 21)]
        rounds[13] = rnd(14, prompt=250_000)
        found = detect(session(rounds), TABLE, Settings(context_limit=10**9))
        self.assertEqual([(a.kind, a.round) for a in found], [("cost_outlier", 14)])
        self.assertIn("its prompt had 250,000 tokens (median 4,074)", found[0].explanation)

    def test_moderately_dearer_rounds_and_model_switches_are_normal(self) -> None:
        rounds = [rnd(n, prompt=4000 * (1 + n % 4)) for n in range(1, 15)]
        rounds += [rnd(n, model="big", prompt=4000) for n in range(15, 25)]   # 100x the price
        self.assertEqual(detect(session(rounds), TABLE), [])

    def test_cache_miss_is_named(self) -> None:
        rounds = [rnd(n, prompt=50_000, cached=49_000, output=10) for n in range(1, 12)]
        miss = rnd(12, prompt=50_000, cache_write=49_000, output=10)
        # An Anthropic-like price: a cache write costs 12.5x a cache read.
        table = PriceTable({"m": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)})
        for r in rounds + [miss]:
            r["cost_usd"] = table.cost("m", Buckets.from_dict(r["buckets"]))
        found = anomalies.cost_outliers(rounds + [miss], Settings(outlier_ratio=5, outlier_mads=3))
        self.assertEqual([a.round for a in found], [12])
        self.assertIn("a prompt-cache miss", found[0].explanation)


class IdleBurstTest(unittest.TestCase):
    def test_idle_then_a_fast_burst(self) -> None:
        at = [T0 + timedelta(minutes=2 * i) for i in range(10)]
        wake = at[-1] + timedelta(hours=3)
        at += [wake + timedelta(seconds=10 * i) for i in range(15)]
        rounds = [rnd(n, at=t) for n, t in enumerate(at, 1)]
        found = detect(session(rounds), TABLE)
        self.assertEqual([(a.kind, a.round, a.first_round, a.last_round) for a in found],
                         [("idle_burst", 20, 11, 25)])
        self.assertIn("Idle for 3 h, then 15 rounds in 2 min 20 s", found[0].explanation)
        self.assertIn("12x its usual pace", found[0].explanation)

    def test_resuming_at_the_usual_pace_is_not_a_burst(self) -> None:
        at = [T0 + timedelta(seconds=20 * i) for i in range(10)]
        wake = at[-1] + timedelta(hours=2)
        at += [wake + timedelta(seconds=20 * i) for i in range(12)]
        self.assertEqual(detect(session([rnd(n, at=t) for n, t in enumerate(at, 1)]), TABLE), [])

    def test_without_history_a_burst_must_be_twice_as_long(self) -> None:
        at = [T0, T0 + timedelta(hours=1)]
        at += [at[-1] + timedelta(seconds=5 * i) for i in range(1, 15)]
        self.assertEqual(detect(session([rnd(n, at=t) for n, t in enumerate(at, 1)]), TABLE), [])
        at += [at[-1] + timedelta(seconds=5 * i) for i in range(1, 8)]
        found = detect(session([rnd(n, at=t) for n, t in enumerate(at, 1)]), TABLE)
        self.assertEqual([a.kind for a in found], ["idle_burst"])


class GeneratedCorpusTest(TempDirTest):
    """Normal agent traffic (tool chains, growing and compacted contexts, cache hits and
    misses, model switches, consumers, interleaving) raises nothing."""

    def test_no_anomaly_on_a_normal_generated_corpus(self) -> None:
        table = load_price_table()
        total = 0
        for seed, sessions, scale in ((11, 250, 1), (12, 120, 3)):
            log = self.tmp / f"access-{seed}.log"
            log.write_bytes(b"".join(loggen.generate(seed=seed, sessions=sessions,
                                                     max_requests=40, content_scale=scale).lines))
            out = self.tmp / f"s{seed}"
            ingest(out, log)
            docs = load_store(out)
            started = time.perf_counter()
            found = [(sid, a.kind, a.explanation) for sid, doc in docs.items()
                     for a in detect(doc, table)]
            elapsed = time.perf_counter() - started
            self.assertEqual(found, [])
            total += sum(len(d["rounds"]) for d in docs.values())
            self.assertLess(elapsed, 5.0)
        self.assertGreater(total, 5000)


if __name__ == "__main__":
    unittest.main()
