"""Whole-pipeline fuzzing (issue 13, item 3): hostile lines through parse -> store ->
index, then every reader over the stores they made, and over stores older versions
could have written (huge integers, 1e308, NaN, years 1 and 9999, strings where numbers
belong). Nothing may crash: the CLI runs with AGENT_SESSION_MONITOR_DEBUG=1 (a bug
raises instead of printing "internal error"), the web app must never answer 500.

    ASM_PIPELINE_FUZZ_CASES=500000 python3 -m unittest tests.test_fuzz_pipeline   # longer
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import sqlite3
import tempfile
import unittest
from pathlib import Path
from unittest import mock
from urllib.parse import quote

from tests.helpers import DATA, TempDirTest, ingest, load_store, write_lines
from tests.loggen import envoy_line, go_json, iter_lines
from tests.test_forgery import genuine_outer
from tests.test_fuzz import mutate
from agent_session_monitor.store.index import Index
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.store.names import is_session_file
from agent_session_monitor.ingest.forgery import HIGRESS_FORMAT
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.values import canonical_time
from agent_session_monitor.pricing.table import load_price_table
from agent_session_monitor.ingest.rounds import build_round
from agent_session_monitor.store.document import Session, new_document
from agent_session_monitor.store.sessions import dump_document, read_document

CASES = int(os.environ.get("ASM_PIPELINE_FUZZ_CASES", "100000"))
SEED = int(os.environ.get("ASM_FUZZ_SEED", "1313"))
READ_TIME = "2026-03-01T00:00:00.000Z"

# Values a field can be pushed to: past what SQLite, a float, JSON or a time zone holds.
HUGE_INTS = [2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 10**400]
EXTREME_NUMBERS = [*HUGE_INTS, -1, -(2**63) - 1, 0, 1e308, -1e308, 1.5, 1e-320, 5e-324,
                   "99999999999999999999", "1e308", "-5", "0x10", " 7", "", "NaN", True, None]
EXTREME_TIMES = ["9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00.000Z", "1-01-01T00:00:00.000Z",
                 "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00-14:00",
                 "9999-12-31T23:59:59.000-12:00", "0001-01-01T00:00:00.000+14:00",
                 "2026-02-30T00:00:00Z", "2026-02-01T25:00:00Z", "1969-12-31T23:59:59Z",
                 "10000-01-01T00:00:00Z", "2026-02-01", "", "-", "now", "\x00",
                 "2026-02-01T09:30:15.123456789Z", "+002026-02-01T00:00:00Z"]
EXTREME_TEXT = ["\x00", "\ud800", "\u202e", "\x1b[2J", "<script>x</script>", "a" * 5000,
                "(unsessioned)", "../../etc", "é" * 100]
TOKEN_KEYS = ("input_token", "output_token", "total_token", "cached_tokens", "reasoning_tokens")
TIMES_BY_ZONE = ["UTC", "Asia/Shanghai", "Pacific/Kiritimati", "Etc/GMT+12", "+14:00",
                 "-12:00", "America/New_York"]


def fixture_lines() -> list[bytes]:
    return [raw.rstrip(b"\n") for name in ("higress-realistic.log", "skill-example-access.log",
                                           "skill-example-access-v2.log")
            for raw in (DATA / name).read_bytes().splitlines()]


def extreme_line(rng: random.Random, n: int) -> bytes:
    """A real-shaped line with one or more fields at an extreme."""
    ai = {"session_id": rng.choice(["s1", "s2", "agent:main:discord:channel:1", "(unsessioned)",
                                    *EXTREME_TEXT[:4]]),
          "model": rng.choice(["gpt-4o", "claude-sonnet-4", "qwen-max", "no-such-model"]),
          "input_token": rng.randint(0, 5000), "output_token": rng.randint(0, 500),
          "messages": [{"role": "user", "content": f"q{n}"}], "answer": f"a{n}"}
    outer = genuine_outer(n, start_time=f"2026-02-{rng.randint(1, 28):02d}T0{rng.randint(0, 9)}"
                                        f":00:00.{rng.randint(0, 999):03d}Z")
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(6)
        if what == 0:
            ai[rng.choice(TOKEN_KEYS)] = rng.choice(EXTREME_NUMBERS)
        elif what == 1:
            outer["start_time"] = rng.choice(EXTREME_TIMES)
        elif what == 2:
            ai[rng.choice(["input_token_details", "output_token_details"])] = rng.choice([
                {"cached_tokens": rng.choice(EXTREME_NUMBERS)},
                {"reasoning_tokens": rng.choice(EXTREME_NUMBERS)},
                {"cache_creation_input_tokens": rng.choice(EXTREME_NUMBERS),
                 "cache_read_input_tokens": rng.choice(EXTREME_NUMBERS)},
                json.dumps({"cached_tokens": 2**64}), "[1]", "{"])
        elif what == 3:
            ai[rng.choice(["chat_round", "llm_first_token_duration", "llm_service_duration",
                           "messages", "question", "answer", "tool_calls", "model", "consumer",
                           "response_type", "extra_key"])] = rng.choice(
                [*EXTREME_NUMBERS, *EXTREME_TEXT, [], {}, [None], "x [truncated] y"])
        elif what == 4:
            ai["session_id"] = rng.choice([*EXTREME_TEXT, "", 7, None, ["a"]])
        else:
            outer[rng.choice(["user_agent", "authority", "path", "x_forwarded_for"])] = \
                rng.choice(EXTREME_TEXT[:6])
    try:
        text = go_json(ai)
    except (ValueError, TypeError):
        text = json.dumps(ai, allow_nan=True)
    head = ['"ai_log":' + json.dumps(text, ensure_ascii=False)]
    body = [f'"{k}":"{outer[k]}"' for k in HIGRESS_FORMAT[1:]]
    # surrogatepass: a lone surrogate in a header becomes the invalid bytes it would be.
    line = ("{" + ",".join(head + body) + "}").encode("utf-8", "surrogatepass")
    return line.replace(b'\\"NaN\\"', b"NaN")   # a bare NaN inside the ai_log


def generated_lines(rng: random.Random, count: int) -> list[bytes]:
    base = fixture_lines()
    out = []
    for n in range(count):
        pick = rng.random()
        if pick < 0.45:
            out.append(mutate(rng, rng.choice(base)))
        elif pick < 0.9:
            out.append(extreme_line(rng, n))
        else:
            out.append(mutate(rng, extreme_line(rng, n)))
    return out


class ParseStoreIndexFuzz(unittest.TestCase):
    """Volume: CASES lines through parse, the round builder, a session, the on-disk form
    read back, and the index row built from it (SQLite, in memory)."""

    def test_generated_lines_never_crash_parse_store_or_index(self):
        rng = random.Random(SEED)
        table = load_price_table()
        base = fixture_lines()
        outcomes = {"request": 0, "bad": 0, "skip": 0}
        tmp = Path(tempfile.mkdtemp(prefix="fuzz-index-"))
        self.addCleanup(lambda: [p.unlink() for p in tmp.iterdir()] and tmp.rmdir())
        index = Index(tmp)
        self.addCleanup(index.close)
        session = Session(new_document("fuzz"), "fuzz.json")
        flushes = 0
        for case in range(CASES):
            pick = rng.random()
            raw = (mutate(rng, rng.choice(base)) if pick < 0.5 else
                   extreme_line(rng, case) if pick < 0.95 else mutate(rng, extreme_line(rng, case)))
            try:
                result = parse_line(raw, READ_TIME)
            except BadLine as bad:
                outcomes["bad"] += 1
                self.assertTrue(bad.kind)
                continue
            except Exception as e:
                self.fail(f"case {case} (seed {SEED}) raised {type(e).__name__}: {e!r}; "
                          f"line {raw[:300]!r}")
            if not isinstance(result, Request):
                outcomes["skip"] += 1
                continue
            outcomes["request"] += 1
            # What a store can hold: every time parses back, every count fits SQLite.
            self.assertIsNotNone(canonical_time(result.timestamp), raw[:300])
            self.assertTrue("1970" <= result.timestamp[:4] < "9000", result.timestamp)
            rnd = build_round(result, f"k{case}", {"fp": "f", "offset": case}, table)
            for name in ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens",
                         "cache_write_tokens"):
                self.assertLess(rnd[name], 2**63, (name, raw[:300]))
            session.add(rnd, result.ai.get("messages"))
            if case % 1000 == 999:
                session.summarise()
                data = dump_document(session.doc)
                (tmp / "fuzz.json").write_bytes(data)
                doc = read_document(tmp / "fuzz.json")
                index.update([("fuzz.json", doc, len(data))])
                session = Session(new_document("fuzz"), "fuzz.json")
                flushes += 1
        self.assertGreater(outcomes["bad"], CASES // 20)
        self.assertGreater(outcomes["request"], CASES // 4)
        self.assertGreater(flushes, 0)


# -- every reader ------------------------------------------------------------------------

def cli(store: Path, *argv: str) -> tuple[int, str, str]:
    from agent_session_monitor.cli import main as cli_main
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_DEBUG": "1"}):
        code = cli_main([*argv, "--data-dir", str(store)], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def session_ids(store: Path) -> list[str]:
    ids = []
    for name in sorted(os.listdir(store)):
        if is_session_file(name):
            try:
                doc = json.loads((store / name).read_bytes())
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("session_id"), str):
                ids.append(doc["session_id"])
    return ids


class ReaderSweep:
    """Every CLI command and every web route over one store; collects what failed."""

    def __init__(self, test: unittest.TestCase, store: Path, rng: random.Random) -> None:
        self.test, self.store, self.rng = test, store, rng

    def run(self, sample: int = 12) -> int:
        ids = session_ids(self.store)
        picked = self.rng.sample(ids, min(sample, len(ids))) if ids else []
        calls = 0
        for tz in ("UTC", "Asia/Shanghai", "+14:00", "-12:00"):
            for argv in (["list", "--tz", tz, "--limit", "0"], ["list", "--json", "--tz", tz],
                         ["list", "--sort-by", "cost"], ["list", "--sort-by", "tokens"],
                         ["list", "--since", "30d", "--tz", tz],
                         ["stats-model", "--tz", tz], ["stats-model", "--json"],
                         ["stats-consumer", "--tz", tz], ["stats-agent"], ["stats-channel"],
                         ["stats-date", "--tz", tz, "--days", "400"], ["stats-date", "--json"],
                         ["export", "--tz", tz], ["export", "--format", "csv"],
                         ["export", "--format", "focus"], ["export", "--granularity", "round"],
                         ["burn", "--tz", tz], ["burn", "--json"],
                         ["burn", "--at", "2026-02-01T10:00:00Z"]):
                self.cli(*argv)
                calls += 1
            for sid in picked:
                for argv in (["show", sid, "--tz", tz], ["show", sid, "--json", "--tz", tz],
                             ["show", sid, "--full-context"], ["show", sid, "--compare", "gpt-4o"],
                             ["url", sid]):
                    self.cli(*argv)
                    calls += 1
        # The MCP server's tools, called as a client would (errors are answers, not
        # crashes; an exception here is a bug).
        from agent_session_monitor.mcp_schema import ToolError
        from agent_session_monitor.mcp_server import Server
        server = Server(self.store, "http://127.0.0.1:8765", None)
        mcp_calls = [(server.top_sessions, {"sort_by": sort}) for sort in ("cost", "tokens", "rounds")]
        mcp_calls += [(server.usage_stats, {"by": by, "tz": tz, "days": 366})
                      for by in ("model", "agent", "channel", "kind", "consumer", "day")
                      for tz in ("Asia/Shanghai", "-12:00")]
        mcp_calls += [(server.session_cost, {"session_id": sid}) for sid in picked]
        for tool, arguments in mcp_calls:
            try:
                json.dumps(tool(arguments), allow_nan=False)
            except ToolError:
                pass
            calls += 1
        from agent_session_monitor.web.routes import WebApp
        for tz in ("Asia/Shanghai", "-12:00", "+14:00", None):
            log = io.StringIO()
            app = WebApp(self.store, tz_name=tz, log=log, max_lag=0)
            targets = ["/", "/?days=366", "/?days=1", "/api/sessions", "/api/stats",
                       "/api/version", "/metrics", "/healthz", "/?q=a&sort=cost"]
            for sid in picked:
                targets += [f"/session?id={quote(sid, safe='')}",
                            f"/api/session?id={quote(sid, safe='')}",
                            f"/api/version?id={quote(sid, safe='')}"]
            for target in targets:
                response = app.handle("GET", target, {"Host": "127.0.0.1:0"})
                self.test.assertNotEqual(response.status, 500,
                                         f"{target} (tz {tz}): {log.getvalue()[-3000:]}")
                calls += 1
        return calls

    def cli(self, *argv: str) -> None:
        try:
            code, _out, err = cli(self.store, *argv)
        except Exception as e:
            import traceback
            self.test.fail(f"cli {argv} raised {type(e).__name__}: {e}\n"
                           f"{traceback.format_exc()[-3000:]}")
        self.test.assertNotIn("internal error", err, argv)
        self.test.assertIn(code, (0, 1, 2), (argv, err))


def monitor_main(*argv: str) -> tuple[int, str, str]:
    from agent_session_monitor.monitor_cli import main
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_DEBUG": "1"}):
        code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


class WholePipelineFuzz(TempDirTest):
    def test_fuzzed_logs_through_the_monitor_then_every_reader(self):
        rng = random.Random(SEED + 1)
        log = self.tmp / "access.log"
        lines = generated_lines(rng, 6000)
        # Real traffic around the hostile lines, so that readers have sessions to show.
        real = [line for _, line in zip(range(400), iter_lines(7, 2_000_000))]
        write_lines(log, [line + b"\n" for line in lines[:3000]] + real
                    + [line + b"\n" for line in lines[3000:]])
        code, out, err = monitor_main("--log-path", str(log), "--output-dir", str(self.out),
                                      "--allow-log-dir", str(self.tmp),
                                      "--session-budget-usd", "0.0001",
                                      "--daily-budget-tokens", "10", "--tz", "Asia/Shanghai")
        self.assertEqual(code, 0, err[-2000:])
        self.assertNotIn("internal error", err)
        docs = load_store(self.out)
        for doc in docs.values():
            for rnd in doc["rounds"]:
                self.assertIsNotNone(canonical_time(rnd["timestamp"]), rnd["timestamp"])
        calls = ReaderSweep(self, self.out, rng).run()
        self.assertGreater(calls, 300)
        for extra in (["--rebuild-index"], ["--reprice"]):
            code, _, err = monitor_main("--output-dir", str(self.out), "--log-path",
                                        str(log), "--allow-log-dir", str(self.tmp), *extra)
            self.assertEqual(code, 0, err)

    def test_fuzzed_lines_through_one_long_lived_follow_mode_monitor(self):
        rng = random.Random(SEED + 2)
        log = self.tmp / "access.log"
        log.touch()
        lines = generated_lines(rng, 3000)
        config = MonitorConfig(log_paths=[str(log)], output_dir=self.out, follow=True)
        with Monitor(config, err=io.StringIO()) as monitor:
            at = 0
            passes = 0
            while at < len(lines):
                step = rng.randint(1, 400)
                chunk = lines[at:at + step]
                data = b"".join(line + b"\n" for line in chunk)
                cut = rng.randrange(len(data) + 1) if rng.random() < 0.3 else len(data)
                write_lines(log, [data[:cut]])        # sometimes half a line for now
                monitor.poll_once()
                write_lines(log, [data[cut:]])
                monitor.poll_once()
                at += step
                passes += 2
        self.assertGreater(passes, 10)
        stored = sum(len(doc["rounds"]) for doc in load_store(self.out).values())
        # The same lines in a fresh cron-mode pass give the same rounds.
        other = self.tmp / "cron"
        ingest(other, log)
        self.assertEqual(stored, sum(len(doc["rounds"]) for doc in load_store(other).values()))
        ReaderSweep(self, self.out, rng).run(sample=4)


# -- stores older versions could have written ---------------------------------------------

ROUND_NUMBER_FIELDS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens",
                       "cache_write_tokens", "total_tokens", "cost_usd", "chat_round",
                       "llm_first_token_duration", "llm_service_duration", "messages_offset",
                       "round")
DOC_FIELDS = ("total_input_tokens", "total_output_tokens", "total_reasoning_tokens",
              "total_cached_tokens", "total_cost_usd", "messages_count", "unpriced_rounds",
              "created_at", "updated_at", "model", "models", "consumers")
ODD_VALUES = [*HUGE_INTS[:6], -1, 1e308, -1e308, float("nan"), float("inf"), 1.5, "12", "abc",
              None, True, [], {}, *EXTREME_TIMES[:5]]


def hostile_copy(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 6)):
        what = rng.randrange(5)
        rounds = doc.get("rounds") or []
        if what == 0 and rounds:
            rng.choice(rounds)[rng.choice(ROUND_NUMBER_FIELDS)] = rng.choice(ODD_VALUES)
        elif what == 1 and rounds:
            rng.choice(rounds)["timestamp"] = rng.choice([*EXTREME_TIMES, 7, None])
        elif what == 2:
            doc[rng.choice(DOC_FIELDS)] = rng.choice(ODD_VALUES)
        elif what == 3 and rounds:
            rnd = rng.choice(rounds)
            rnd[rng.choice(["model", "consumer", "buckets", "key", "context_key", "tool_calls",
                            "messages", "question", "answer", "warnings", "source",
                            "has_tool_calls", "input_token_details", "priced_as"])] = \
                rng.choice([*ODD_VALUES, "x", ["x"], {"cache_read": 2**64}, {"input": "1"}])
        elif what == 4 and rounds:
            rng.choice(rounds).setdefault("buckets", {})[rng.choice(
                ["input", "output", "cache_read", "cache_write", "reasoning"])] = \
                rng.choice(ODD_VALUES)
    return doc


class OlderStores(TempDirTest):
    def test_stores_older_versions_wrote_with_extreme_values_are_read_by_every_reader(self):
        rng = random.Random(SEED + 3)
        log = self.tmp / "access.log"
        write_lines(log, [line for _, line in zip(range(300), iter_lines(11, 1_000_000))])
        ingest(self.out, log)
        names = sorted(n for n in os.listdir(self.out) if is_session_file(n))
        self.assertGreater(len(names), 5)
        for name in names:
            path = self.out / name
            doc = json.loads(path.read_bytes())
            # As an older version (or a hand edit) may have left it: NaN and 1e308 in
            # JSON, a year-1 time with a one-digit year, 2**64 tokens, "12" for a count.
            path.write_text(json.dumps(hostile_copy(doc, rng), allow_nan=True))
        (self.out / ".index.sqlite").unlink()
        code, _, err = monitor_main("--output-dir", str(self.out), "--log-path", str(log),
                                    "--allow-log-dir", str(self.tmp), "--rebuild-index")
        self.assertEqual(code, 0, err)
        calls = ReaderSweep(self, self.out, rng).run(sample=len(names))
        self.assertGreater(calls, 300)
        code, _, err = monitor_main("--output-dir", str(self.out), "--log-path", str(log),
                                    "--allow-log-dir", str(self.tmp), "--reprice")
        self.assertEqual(code, 0, err)
        # The monitor itself goes on writing into such a store.
        write_lines(log, [line for _, line in zip(range(200), iter_lines(12, 600_000))])
        code, _, err = monitor_main("--output-dir", str(self.out), "--log-path", str(log),
                                    "--allow-log-dir", str(self.tmp),
                                    "--daily-budget-usd", "0.01", "--tz", "+14:00")
        self.assertEqual(code, 0, err)
        ReaderSweep(self, self.out, rng).run(sample=6)


if __name__ == "__main__":
    unittest.main()
