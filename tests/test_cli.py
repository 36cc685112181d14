"""scripts/cli.py: every command on the example logs (golden outputs) and on a generated
store (numbers against ground truth), and the error paths users meet.

Goldens live in tests/data/golden/; after an intended output change, regenerate them with
``ASM_UPDATE_GOLDEN=1 python3 -m unittest tests.test_cli`` and read the diff.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from tests import loggen
from tests.helpers import DATA, ROOT

from agent_session_monitor.cli import main
from agent_session_monitor.links import verify
from agent_session_monitor.monitor_cli import main as monitor_main
from agent_session_monitor.reports.reader import StoreReader
from agent_session_monitor.reports.aggregates import range_totals
from agent_session_monitor.reports.timerange import parse_tz

GOLDEN = DATA / "golden"
UPDATE = bool(os.environ.get("ASM_UPDATE_GOLDEN"))
# Round prices per 1M tokens, so that every expected cost below is computed by hand.
PRICES = {"test-a": {"input": 1.0, "output": 2.0, "cache_read": 0.5},
          "test-b": {"input": 3.0, "output": 15.0, "cache_read": 0.3}}
UNPRICED = "mystery-x"


def price_of(model: str, inp: int, out: int, cached: int) -> float | None:
    p = PRICES.get(model)
    if p is None:
        return None
    return ((inp - cached) * p["input"] + cached * p["cache_read"] + out * p["output"]) / 1e6


def log_line(ts: str, session: str | None, model: str, inp: int, out: int, *, cached: int = 0,
             reasoning: int = 0, consumer: str | None = None, request_id: str,
             messages: list | None = None, answer: str | None = None,
             tool_calls: list | None = None) -> str:
    """One Higress access-log line (start_time, request_id, ai_log as a JSON string)."""
    ai = {"model": model, "input_token": inp, "output_token": out, "total_token": inp + out,
          "cached_tokens": cached, "reasoning_tokens": reasoning, "response_type": "normal"}
    if session is not None:
        ai["session_id"] = session
    if consumer:
        ai["consumer"] = consumer
    if messages is not None:
        ai["messages"] = messages
        ai["question"] = messages[-1]["content"]
    if answer is not None:
        ai["answer"] = answer
    if tool_calls:
        ai["tool_calls"] = tool_calls
    # ai_log before every raw header field, as in Higress's format (forgery.py)
    return json.dumps({"start_time": ts, "ai_log": json.dumps(ai), "request_id": request_id,
                       "method": "POST", "path": "/v1/chat/completions",
                       "response_code": "200"}) + "\n"


def build_store(tmp: Path, logs: list[Path], name: str = "sessions") -> Path:
    out = tmp / name
    prices = tmp / "prices.json"
    prices.write_text(json.dumps(PRICES))
    argv = ["--output-dir", str(out), "--allow-log-dir", str(tmp), "--pricing", str(prices), "-q"]
    for log in logs:
        argv += ["--log-path", str(log), "--allow-log-dir", str(log.parent)]
    err = io.StringIO()
    code = monitor_main(argv, out=io.StringIO(), err=err)
    assert code == 0, err.getvalue()
    return out


UNSESSIONED = "(unsessioned)"


def generated_log(tmp: Path) -> tuple[Path, list]:
    """A loggen log over several days (sessions start ~50 min apart), with bad, non-AI,
    duplicate and unsessioned lines, and its ground truth events."""
    lines, events = [], []
    for line, event, _kind in loggen.iter_records(
            seed=3, sessions=70, max_requests=10, bad_every=40, non_ai_every=25,
            unsessioned_every=30, duplicate_every=35, start="2026-02-28T20:00:00Z",
            session_gap_s=3000.0):
        lines.append(line)
        if event is not None:
            events.append(event)
    log = tmp / "access.log"
    log.write_bytes(b"".join(lines))
    return log, events


def event_time(e) -> datetime:
    return datetime.fromisoformat(e.start_time.replace("Z", "+00:00"))


def expected_groups(events: list, key) -> dict:
    """Ground truth per group, each request counted once."""
    groups: dict = {}
    seen = set()
    for e in events:
        if e.request_id in seen:
            continue
        seen.add(e.request_id)
        g = groups.setdefault(key(e), {"sessions": set(), "rounds": 0, "input_tokens": 0,
                                       "output_tokens": 0, "reasoning_tokens": 0,
                                       "cached_tokens": 0, "cache_write_tokens": 0,
                                       "cost": 0.0, "unpriced_rounds": 0})
        g["sessions"].add(e.session_id)
        g["rounds"] += 1
        # The columns every command shows: normalised (input includes the cache, output
        # the reasoning, whatever the provider logged), from the generator's own truth.
        g["input_tokens"] += e.input_total
        g["output_tokens"] += e.output_total
        g["reasoning_tokens"] += e.reasoning_tokens
        g["cached_tokens"] += e.cached_tokens
        g["cache_write_tokens"] += e.cache_write_tokens
        if e.cost_usd is None:
            g["unpriced_rounds"] += 1
        else:
            g["cost"] += e.cost_usd
    return groups


class CliTest(unittest.TestCase):
    """Runs ``main`` in-process with captured streams; no terminal, no $COLUMNS."""

    def setUp(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AGENT_SESSION_MONITOR_") and k != "COLUMNS"}
        patcher = mock.patch.dict(os.environ, env, clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)

    @classmethod
    def make_tmp(cls) -> Path:
        base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
        os.makedirs(base, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="cli-", dir=base))
        cls.addClassCleanup(shutil.rmtree, tmp, True)
        return tmp

    def cli(self, *argv: str, store: Path | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        prefix = ["--data-dir", str(store)] if store is not None else []
        code = main([*prefix, *argv], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, store: Path | None = None) -> str:
        code, out, err = self.cli(*argv, store=store)
        # A window that slid to the latest round says so on stderr: a note, not an error.
        err = "".join(line for line in err.splitlines(True)
                      if not line.startswith("note: no rounds in the "))
        self.assertEqual((code, err), (0, ""), f"cli.py {' '.join(argv)}")
        return out

    def assert_golden(self, name: str, text: str) -> None:
        path = GOLDEN / name
        if UPDATE or not path.exists():
            GOLDEN.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if not UPDATE:
                self.fail(f"golden {path} did not exist: written now, check it and rerun")
        self.assertEqual(text, path.read_text(encoding="utf-8"), f"golden {name} differs")


class ExampleStoreTest(CliTest):
    """The fixture logs (the skill's own example and the realistic Higress lines)."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = cls.make_tmp()
        cls.store = build_store(cls.tmp, [DATA / "higress-realistic.log",
                                          DATA / "skill-example-access-v2.log"])

    def normalised(self, text: str) -> str:
        return text.replace(str(self.tmp), "<TMP>")

    def test_show_session_details_golden(self) -> None:
        for sid, name in (("agent:main:discord:channel:1465367993012981988", "show-tool-loop.txt"),
                          ("sess_claude_42", "show-claude-cache.txt"),
                          ("agent:main:discord:1465367993012981988", "show-skill-example.txt")):
            self.assert_golden(name, self.ok("show", sid, store=self.store))

    def test_show_full_context_rebuilds_each_request(self) -> None:
        sid = "agent:main:discord:channel:1465367993012981988"
        text = self.ok("show", sid, "--full-context", "--round", "2", store=self.store)
        self.assert_golden("show-full-context-round2.txt", text)
        self.assertIn("Full context (4 messages; new in this round from #3)", text)
        self.assertNotIn("Round 1 ", text)
        doc = json.loads(self.ok("show", sid, "--full-context", "--json", store=self.store))
        self.assertEqual([len(r["context"]) for r in doc["rounds"]], [2, 4])
        self.assertEqual(doc["rounds"][1]["context"][:2], doc["rounds"][0]["messages"])

    def test_show_max_chars_cuts_long_texts(self) -> None:
        sid = "agent:main:discord:channel:1465367993012981988"
        cut = self.ok("show", sid, "--max-chars", "10", store=self.store)
        self.assertIn("You are Op… [+31 chars]", cut)
        whole = self.ok("show", sid, "--max-chars", "0", store=self.store)
        self.assertIn("You are OpenClaw. Use tools when helpful.", whole)

    def test_show_unknown_round_is_one_line_error(self) -> None:
        code, out, err = self.cli("show", "sess_claude_42", "--round", "5", store=self.store)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, 'cli.py: error: session "sess_claude_42" has no round 5 '
                              "(it has rounds 1..1)\n")

    def test_show_compare_prices_rounds_on_other_models(self) -> None:
        prices = str(self.tmp / "prices.json")
        doc = json.loads(self.ok("show", "sess_claude_42", "--json", "--compare", "test-a",
                                 "--compare", "no-such-model", "--pricing", prices,
                                 store=self.store))
        # 12 uncached input, 20,480 cache reads, 311 output at test-a's prices.
        expected = (12 * 1.0 + 20480 * 0.5 + 311 * 2.0) / 1e6
        self.assertAlmostEqual(doc["what_if"][0]["cost_usd"], expected, places=12)
        self.assertIsNone(doc["what_if"][1]["cost_usd"])
        text = self.ok("--pricing", prices, "show", "sess_claude_42", "--compare", "test-a",
                       store=self.store)
        self.assertIn("Same tokens on other models", text)

    def test_list_golden(self) -> None:
        self.assert_golden("list.txt", self.ok("list", store=self.store))
        self.assert_golden("list-by-cost.txt", self.ok("list", "--sort-by", "cost", store=self.store))

    def test_stats_golden(self) -> None:
        self.assert_golden("stats-model.txt", self.ok("stats-model", store=self.store))
        self.assert_golden("stats-consumer.txt", self.ok("stats-consumer", store=self.store))
        self.assert_golden("stats-date.txt", self.ok("stats-date", "--days", "3", "--end",
                                                     "2026-02-02", store=self.store))

    def test_export_golden_json_and_csv(self) -> None:
        for name in ("report.json", "report.csv"):
            path = self.tmp / name
            said = self.ok("export", str(path), store=self.store)
            self.assertTrue(said.startswith(f"Wrote {path.suffix[1:].upper()} report to {path}: "))
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                report = json.loads(text)
                self.assertRegex(report.pop("generated_at"), r"^\d{4}-\d\d-\d\dT")
                text = json.dumps(report, indent=2) + "\n"
            self.assert_golden(f"export-{name}", text)

    def test_export_reports_unpriced_models_never_as_zero(self) -> None:
        report = json.loads(self.ok("export", "-", "--format", "json", store=self.store))
        unpriced = {u["model"] for u in report["unpriced_models"]}
        self.assertIn("qwen3-max", unpriced)
        by_model = {m["model"]: m for m in report["by_model"]}
        self.assertIsNone(by_model["qwen3-max"]["cost_usd"])
        self.assertIn("LiteLLM", report["price_table"]["source"])
        text = self.ok("stats-model", store=self.store)
        self.assertRegex(text, r"qwen3-max .* unpriced\n")
        self.assertIn("have no price (not counted as $0): ", text)

    def test_json_on_every_read_command(self) -> None:
        for argv in (["list"], ["stats-model"], ["stats-consumer"], ["stats-date"],
                     ["show", "s-quote"], ["url", "s-quote"], ["export", "-", "--format", "json"]):
            with self.subTest(argv=argv):
                json.loads(self.ok(*argv, "--json", store=self.store))
                json.loads(self.ok("--json", *argv, store=self.store))

    def test_hostile_id_shown_and_url_encoded(self) -> None:
        hostile = "../../tmp/pwned"
        self.assertIn(hostile, self.ok("list", store=self.store))
        self.assertIn(f"Session: {hostile}\n", self.ok("show", hostile, store=self.store))
        link = self.ok("url", hostile, store=self.store).strip()
        self.assertEqual(link, "http://127.0.0.1:8888/session?id=..%2F..%2Ftmp%2Fpwned")
        self.assertEqual(parse_qs(urlsplit(link).query)["id"], [hostile])

    def test_url_signed_link_opens_that_session_only(self) -> None:
        with mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_LINK_SECRET": "s3cret",
                                          "AGENT_SESSION_MONITOR_BASE_URL": "https://mon.example/"}):
            data = json.loads(self.ok("url", "s-quote", "--expires-in", "24h", "--json",
                                      store=self.store))
        link = urlsplit(data["url"])
        self.assertEqual((link.scheme, link.netloc, link.path), ("https", "mon.example", "/session"))
        q = {k: v[0] for k, v in parse_qs(link.query).items()}
        self.assertTrue(verify("s-quote", q["sig"], q["exp"], "s3cret"))
        self.assertFalse(verify("sess_claude_42", q["sig"], q["exp"], "s3cret"))
        expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
        self.assertAlmostEqual((expires - datetime.now(timezone.utc)).total_seconds(), 86400, delta=60)
        self.assertEqual(int(q["exp"]), int(expires.timestamp()))

    def test_url_signed_link_expires_after_30_days_unless_told_never(self) -> None:
        # A signed link is a credential pasted into chats that keep years of history.
        before = time.time()
        data = json.loads(self.ok("--json", "url", "s-quote", "--secret", "k", store=self.store))
        q = {k: v[0] for k, v in parse_qs(urlsplit(data["url"]).query).items()}
        self.assertAlmostEqual(int(q["exp"]) - before, 30 * 86400, delta=30)
        self.assertTrue(verify("s-quote", q["sig"], q["exp"], "k"))
        self.assertFalse(verify("s-quote", q["sig"], q["exp"], "k", now=int(q["exp"]) + 1))
        self.assertEqual(data["expires_at"], datetime.fromtimestamp(int(q["exp"]), timezone.utc)
                         .strftime("%Y-%m-%dT%H:%M:%SZ"))
        data = json.loads(self.ok("--json", "url", "s-quote", "--secret", "k", "--expires-in",
                                  "never", store=self.store))
        q = {k: v[0] for k, v in parse_qs(urlsplit(data["url"]).query).items()}
        self.assertNotIn("exp", q)
        self.assertIsNone(data["expires_at"])
        self.assertTrue(verify("s-quote", q["sig"], None, "k"))
        # Unsigned links cannot expire: "never" is accepted there, a duration is not.
        link = self.ok("url", "s-quote", "--expires-in", "never", store=self.store).strip()
        self.assertEqual(link, "http://127.0.0.1:8888/session?id=s-quote")

    def test_url_usage_errors(self) -> None:
        code, out, err = self.cli("url", "s-quote", "--expires-in", "7d", store=self.store)
        self.assertEqual(code, 2)
        self.assertIn("--expires-in needs a link secret", err)
        code, _, err = self.cli("url", "s-quote", "--base-url", "javascript:alert(1)", store=self.store)
        self.assertEqual(code, 2)
        code, _, err = self.cli("url", "s-quote", "--secret", "k", "--expires-in", "soon",
                                store=self.store)
        self.assertEqual(code, 2)

    def test_url_expiry_beyond_the_calendar_is_a_usage_error(self) -> None:
        # 999999w is year 21192: no expires_at can be written, and a 5,000-digit number
        # is past int()'s digit limit. Both were internal errors.
        for ttl in ("999999w", "99999999d", "9" * 5000, "36501d"):
            code, out, err = self.cli("--json", "url", "s-quote", "--secret", "k",
                                      "--expires-in", ttl, store=self.store)
            self.assertEqual((code, out), (2, ""), (ttl[:20], err))
            self.assertNotIn("internal error", err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
        data = json.loads(self.ok("--json", "url", "s-quote", "--secret", "k", "--expires-in",
                                  "36500d", store=self.store))
        expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
        self.assertAlmostEqual((expires - datetime.now(timezone.utc)).total_seconds(),
                               36500 * 86400, delta=60)

    def test_unknown_session_one_line_with_close_matches(self) -> None:
        code, out, err = self.cli("show", "sess_claude_4", store=self.store)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(self.normalised(err), 'cli.py: error: no session "sess_claude_4" in '
                         "<TMP>/sessions; did you mean: sess_claude_42\n")

    def test_url_of_a_session_not_seen_yet_prints_the_link_and_a_note(self) -> None:
        # The agent asks for its link before the monitor's next pass has seen the session.
        code, out, err = self.cli("url", "sess_claude_4", store=self.store)
        self.assertEqual((code, out), (0, "http://127.0.0.1:8888/session?id=sess_claude_4\n"))
        self.assertEqual(self.normalised(err), 'note: session "sess_claude_4" is not in '
                         "<TMP>/sessions yet; its page waits for its first round (main.py "
                         "writes it on its next pass); did you mean: sess_claude_42\n")
        code, out, err = self.cli("url", "agent:main:new:1", store=self.tmp / "no-store-yet")
        self.assertEqual((code, out), (0, "http://127.0.0.1:8888/session?id=agent:main:new:1\n"))
        self.assertIn("is not in", err)

    def test_usage_errors_exit_2_on_stderr(self) -> None:
        code, out, err = self.cli("list", "--sort-by", "price", store=self.store)
        self.assertEqual((code, out), (2, ""))
        self.assertIn("cli.py list: error: argument --sort-by: invalid choice", err)
        code, out, err = self.cli()
        self.assertEqual(code, 2)
        self.assertIn("a command is needed", err)
        code, _, err = self.cli("stats-date", "--tz", "Mars/Olympus", store=self.store)
        self.assertEqual(code, 2)
        self.assertIn("unknown time zone", err)
        code, _, err = self.cli("export", str(self.tmp / "x.xlsx"), store=self.store)
        self.assertEqual(code, 2)
        self.assertIn("name it .json or .csv", err)

    def test_ctrl_c_exits_130_and_a_bug_is_one_line(self) -> None:
        with mock.patch.object(StoreReader, "open", side_effect=KeyboardInterrupt):
            self.assertEqual(self.cli("list", store=self.store), (130, "", ""))
        with mock.patch.object(StoreReader, "open", side_effect=ZeroDivisionError("boom")):
            code, out, err = self.cli("list", store=self.store)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("cli.py: internal error: ZeroDivisionError: boom"), err)
        self.assertEqual(err.count("\n"), 1)

    def test_export_to_an_unwritable_place_is_one_line(self) -> None:
        code, out, err = self.cli("export", str(self.tmp / "no" / "such" / "dir.json"),
                                  store=self.store)
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, r"^cli.py: error: cannot write .*dir.json: .+\n$")

    def test_help_documents_every_command(self) -> None:
        text = self.ok("--help")
        for name in ("show", "list", "stats-model", "stats-date", "stats-consumer", "export", "url"):
            self.assertIn(name, text)

    def test_data_dir_from_environment(self) -> None:
        with mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_DATA_DIR": str(self.store)}):
            self.assertEqual(self.ok("list"), self.ok("list", store=self.store))
        # After the command too.
        self.assertEqual(self.ok("list", "--data-dir", str(self.store)),
                         self.ok("list", store=self.store))

    def test_scripts_cli_runs_from_a_checkout(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli.py"), "--data-dir",
                               str(self.store), "stats-model"], cwd=str(self.tmp), env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(done.stdout, self.ok("stats-model", store=self.store))

    def test_closed_pipe_exits_quietly(self) -> None:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cli.py"), "--data-dir",
                                 str(self.store), "show", "agent:main:discord:channel:"
                                 "1465367993012981988", "--full-context", "--max-chars", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()   # `| head` that has already gone
        err = proc.stderr.read()
        proc.stderr.close()
        self.assertEqual((proc.wait(timeout=60), err), (0, b""))

    def test_answers_from_index_without_reading_session_files(self) -> None:
        tmp = self.make_tmp()
        store = build_store(tmp, [DATA / "higress-realistic.log"])
        before = {argv: self.ok(*argv, store=store) for argv in
                  (("list",), ("stats-model",), ("stats-date", "--end", "2026-02-01"))}
        for name in os.listdir(store):
            if name.endswith(".json") and not name.startswith("."):
                (store / name).write_text("not json")
        for argv, text in before.items():
            self.assertEqual(self.ok(*argv, store=store), text)


class BundledExampleTest(CliTest):
    """example/access.log with its rotations .1 and .2.gz: what a new user runs first."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = cls.make_tmp()
        cls.store = build_store(cls.tmp, [ROOT / "example" / "access.log"])
        spec = importlib.util.spec_from_file_location("make_example", ROOT / "example" / "make_example.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cls.events = module.build().events

    def test_bundled_example_goldens(self) -> None:
        switcher = next(sid for sid, t in loggen.totals_by_session(self.events).items()
                        if sid and len(t["models"]) > 1)
        day = min(e.start_time for e in self.events)[:10]
        for name, argv in (("list", ["list"]), ("stats-model", ["stats-model"]),
                           ("stats-consumer", ["stats-consumer"]),
                           ("stats-date", ["stats-date", "--days", "2", "--end", day]),
                           ("show-model-switch", ["show", switcher, "--max-chars", "120"]),
                           ("export-csv", ["export", "-", "--format", "csv"]),
                           ("url", ["url", switcher])):
            with self.subTest(command=name):
                self.assert_golden(f"example-{name}.txt", self.ok(*argv, store=self.store))

    def test_bundled_example_numbers_match_its_generator(self) -> None:
        sessions = expected_groups(self.events, lambda e: e.session_id or UNSESSIONED)
        rows = json.loads(self.ok("list", "--json", "--limit", "0", store=self.store))
        self.assertEqual(len(rows), len(sessions))
        for row in rows:
            want = sessions[row["session_id"]]
            for field in ("rounds", "input_tokens", "output_tokens", "reasoning_tokens",
                          "cached_tokens", "cache_write_tokens", "unpriced_rounds"):
                self.assertEqual(row[field], want[field], (row["session_id"], field))
            self.assertAlmostEqual(row["cost_usd"] or 0, want["cost"], places=9)


class GeneratedStoreTest(CliTest):
    """A generated store (tests/loggen.py) whose every number is known from the requests
    that made it: real producers' shapes (OpenAI, Anthropic, Gemini), sessions switching
    models, an unpriced model, five days."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = cls.make_tmp()
        log, cls.events = generated_log(cls.tmp)
        cls.store = build_store(cls.tmp, [log])

    def assert_groups(self, rows: list[dict], key: str, expected: dict) -> None:
        got = {r[key]: r for r in rows}
        self.assertEqual(set(got), set(expected))
        for k, want in expected.items():
            row = got[k]
            for field in ("rounds", "input_tokens", "output_tokens", "reasoning_tokens",
                          "cached_tokens", "cache_write_tokens", "unpriced_rounds"):
                self.assertEqual(row[field], want[field], f"{key}={k} {field}")
            self.assertEqual(row["total_tokens"], row["input_tokens"] + row["output_tokens"])
            self.assertEqual(row["sessions"], len(want["sessions"]), f"{key}={k} sessions")
            if want["unpriced_rounds"] == want["rounds"]:
                self.assertIsNone(row["cost_usd"])
            else:
                self.assertAlmostEqual(row["cost_usd"], want["cost"], places=9)

    def test_stats_model_matches_ground_truth(self) -> None:
        rows = json.loads(self.ok("stats-model", "--json", store=self.store))
        self.assert_groups(rows, "model", expected_groups(self.events, lambda e: e.model))
        self.assertIn(loggen.UNPRICED_MODEL, {r["model"] for r in rows})

    def test_stats_consumer_matches_ground_truth(self) -> None:
        rows = json.loads(self.ok("stats-consumer", "--json", store=self.store))
        self.assert_groups(rows, "consumer", expected_groups(self.events, lambda e: e.consumer))

    def test_stats_date_matches_ground_truth_in_each_zone(self) -> None:
        for zone, tz in (("UTC", timezone.utc), ("Asia/Shanghai", ZoneInfo("Asia/Shanghai")),
                         ("-05:00", timezone(timedelta(hours=-5)))):
            with self.subTest(zone=zone):
                rows = json.loads(self.ok("stats-date", "--days", "8", "--end", "2026-03-05",
                                          "--tz", zone, "--json", store=self.store))
                self.assertEqual([r["day"] for r in rows],
                                 [(date(2026, 2, 26) + timedelta(days=i)).isoformat() for i in range(8)])
                expected = expected_groups(self.events, lambda e: event_time(e).astimezone(tz).date().isoformat())
                self.assertGreaterEqual(len(expected), 3)
                self.assert_groups([r for r in rows if r["rounds"]], "day", expected)
                self.assertTrue(all(r["cost_usd"] == 0 and r["sessions"] == 0
                                    for r in rows if not r["rounds"]))

    def test_list_and_export_match_ground_truth(self) -> None:
        sessions = expected_groups(self.events, lambda e: e.session_id or UNSESSIONED)
        rows = json.loads(self.ok("list", "--limit", "0", "--json", store=self.store))
        self.assert_groups([{**r, "sessions": 1} for r in rows], "session_id", sessions)
        truth = loggen.totals_by_session(self.events)
        for r in rows:
            sid = None if r["session_id"] == UNSESSIONED else r["session_id"]
            self.assertEqual(set(r["models"]), truth[sid]["models"], sid)
        report = json.loads(self.ok("export", "-", "--format", "json", store=self.store))
        self.assert_groups([{**r, "sessions": 1} for r in report["sessions"]], "session_id", sessions)
        total = expected_groups(self.events, lambda e: "all")["all"]
        self.assert_groups([{**report["totals"], "key": "all"}], "key", {"all": total})
        self.assertEqual(report["unpriced_models"][0]["model"], loggen.UNPRICED_MODEL)

    def test_list_sorts_limits_and_filters(self) -> None:
        def ids(*argv: str) -> list[str]:
            return [r["session_id"] for r in json.loads(self.ok("list", "--json", *argv,
                                                                store=self.store))]
        sessions = expected_groups(self.events, lambda e: e.session_id or UNSESSIONED)
        by_tokens = sorted(sessions, key=lambda s: -(sessions[s]["input_tokens"]
                                                     + sessions[s]["output_tokens"]))
        self.assertEqual(ids("--sort-by", "tokens", "--limit", "5"), by_tokens[:5])
        for sort, field in (("rounds", "rounds"), ("cost", "cost_usd"), ("updated", "updated_at")):
            values = [r[field] or 0 for r in json.loads(self.ok(
                "list", "--json", "--sort-by", sort, "--limit", "0", store=self.store))]
            self.assertEqual(values, sorted(values, reverse=True), sort)
        self.assertEqual(len(ids("--limit", "3")), 3)
        self.assertEqual(ids("--limit", "3", "--offset", "3"), ids("--limit", "6")[3:])
        model = "claude-sonnet-4-20250514"
        self.assertEqual(set(ids("--limit", "0", "--model", model)),
                         {e.session_id or UNSESSIONED for e in self.events if e.model == model})
        self.assertEqual(set(ids("--limit", "0", "--consumer", "alice")),
                         {e.session_id or UNSESSIONED for e in self.events if e.consumer == "alice"})
        last: dict = {}
        for e in self.events:
            sid = e.session_id or UNSESSIONED
            last[sid] = max(last.get(sid, event_time(e)), event_time(e))
        cut = datetime(2026, 3, 2, tzinfo=timezone.utc)
        self.assertEqual(set(ids("--limit", "0", "--since", "2026-03-02")),
                         {s for s, m in last.items() if m >= cut})
        text = self.ok("list", "--limit", "3", store=self.store)
        self.assertIn(f"3 of {len(sessions)} sessions, by updated\n", text)

    def test_aggregates_equal_a_fold_over_the_session_files(self) -> None:
        """The index-backed aggregates against an independent fold over every round of
        every session file, bucketed by each round's own timestamp in the zone."""
        from tests.helpers import load_store

        docs = load_store(self.store)
        reader = StoreReader.open(self.store)
        self.addCleanup(reader.close)
        for zone in ("UTC", "Asia/Shanghai", "America/New_York", "+05:45"):
            tz = parse_tz(zone)
            for by in ("model", "consumer", "day"):
                expected: dict = {}
                for doc in docs.values():
                    for r in doc["rounds"]:
                        moment = datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
                        key = {"model": r.get("model"), "consumer": r.get("consumer"),
                               "day": moment.replace(tzinfo=timezone.utc).astimezone(tz).date().isoformat()}[by]
                        acc = expected.setdefault(key, {"rounds": 0, "input": 0, "output": 0,
                                                        "cost": 0.0, "sessions": set()})
                        acc["rounds"] += 1
                        b = r.get("buckets") or {}
                        acc["input"] += sum(b.get(k, 0) for k in ("input", "cache_read",
                                                                  "cache_write", "cache_write_1h"))
                        acc["output"] += b.get("output", 0) + b.get("reasoning", 0)
                        acc["cost"] += r["cost_usd"] or 0.0
                        acc["sessions"].add(doc["session_id"])
                with self.subTest(zone=zone, by=by):
                    rows = {row["key"]: row for row in reader.aggregate(by, tz=tz)}
                    self.assertEqual(set(rows), set(expected))
                    for key, acc in expected.items():
                        row = rows[key]
                        self.assertEqual((row["rounds"], row["input"], row["output"], row["sessions"]),
                                         (acc["rounds"], acc["input"], acc["output"], len(acc["sessions"])))
                        self.assertAlmostEqual(row["cost"] or 0.0, acc["cost"], places=9)
        self.assertEqual(range_totals(reader)["rounds"], sum(d["messages_count"] for d in docs.values()))

    def test_one_scan_for_models_and_consumers_gives_the_same_rows(self) -> None:
        """The overview's and the export's single (model, consumer) scan against the
        per-grouping queries of stats-model and stats-consumer."""
        plain = StoreReader.open(self.store)
        self.addCleanup(plain.close)
        scanned = StoreReader.open(self.store)
        self.addCleanup(scanned.close)
        scanned.scan_models_and_consumers()
        for by in ("model", "consumer"):
            with self.subTest(by=by):
                want, got = plain.aggregate(by), scanned.aggregate(by)
                self.assertGreater(len(want), 1)
                self.assertEqual([r["key"] for r in got], [r["key"] for r in want])
                for w, g in zip(want, got):
                    self.assertEqual({k: v for k, v in g.items() if k != "cost"},
                                     {k: v for k, v in w.items() if k != "cost"})
                    self.assertAlmostEqual(g["cost"] or 0.0, w["cost"] or 0.0, places=9)
                    self.assertEqual(g["cost"] is None, w["cost"] is None)

    def test_generated_goldens(self) -> None:
        self.assert_golden("gen-list.txt", self.ok("list", "--limit", "10", store=self.store))
        self.assert_golden("gen-stats-model.txt", self.ok("stats-model", store=self.store))
        self.assert_golden("gen-stats-date-shanghai.txt", self.ok(
            "stats-date", "--days", "7", "--end", "2026-03-05", "--tz", "Asia/Shanghai",
            store=self.store))
        self.assert_golden("gen-stats-consumer.txt", self.ok("stats-consumer", store=self.store))


class ScenarioStoreTest(CliTest):
    """Hand-built sessions for the cases that break reports: several models in one
    session, midnight in another zone, control characters, an empty and a missing store."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = cls.make_tmp()
        lines = [
            # One session, three models: each round priced with its own model.
            log_line("2026-02-01T10:00:00.000Z", "mixed", "test-a", 1000, 100, cached=400,
                     request_id="m1", consumer="alice"),
            log_line("2026-02-01T10:05:00.000Z", "mixed", "test-b", 2000, 300, cached=1000,
                     request_id="m2", consumer="alice"),
            log_line("2026-02-01T10:06:00.000Z", "mixed", UNPRICED, 500, 50, request_id="m3",
                     consumer="bob"),
            log_line("2026-02-01T10:07:00.000Z", "mixed", "test-a", 3000, 10, request_id="m4",
                     consumer="alice"),
            # Rounds around midnight in Shanghai (+08:00) and in -05:00.
            *(log_line(ts, "night-owl", "test-a", 100 * (i + 1), 10, request_id=f"n{i}")
              for i, ts in enumerate(["2026-02-01T04:50:00.000Z", "2026-02-01T05:10:00.000Z",
                                      "2026-02-01T15:50:00.000Z", "2026-02-01T16:10:00.000Z"])),
            # An id too long for a narrow terminal.
            log_line("2026-02-01T11:30:00.000Z", "agent:main:discord:channel:1465367993012981988"
                     ":thread:98765", "test-a", 10, 5, request_id="l1"),
            # Terminal escapes in an id and in an answer.
            log_line("2026-02-01T11:00:00.000Z", "evil\x1b[2Jid", "test-a", 10, 5, request_id="e1",
                     messages=[{"role": "user", "content": "hi\x1b]0;pwned\x07"}],
                     answer="\x1b[2Jcleared\rX"),
        ]
        log = cls.tmp / "access.log"
        log.write_text("".join(lines))
        cls.store = build_store(cls.tmp, [log])

    def test_mixed_model_session_priced_round_by_round(self) -> None:
        doc = json.loads(self.ok("show", "mixed", "--json", store=self.store))
        costs = [r["cost_usd"] for r in doc["rounds"]]
        expected = [price_of("test-a", 1000, 100, 400), price_of("test-b", 2000, 300, 1000), None,
                    price_of("test-a", 3000, 10, 0)]
        self.assertEqual([c is None for c in costs], [e is None for e in expected])
        for got, want in zip(costs, expected):
            if want is not None:
                self.assertAlmostEqual(got, want, places=12)
        self.assertAlmostEqual(doc["total_cost_usd"], sum(c for c in expected if c), places=12)
        text = self.ok("show", "mixed", store=self.store)
        self.assert_golden("show-mixed-models.txt", text)
        self.assertIn("Cost:      $0.0118*\n", text)
        self.assertIn("Unpriced:  1 round (no price for: mystery-x); not counted as $0\n", text)
        rows = {r["model"]: r for r in json.loads(self.ok("stats-model", "--json", store=self.store))}
        self.assertEqual(rows["test-b"]["rounds"], 1)
        self.assertAlmostEqual(rows["test-b"]["cost_usd"], expected[1], places=12)
        self.assertEqual(rows[UNPRICED]["unpriced_rounds"], 1)
        self.assertIsNone(rows[UNPRICED]["cost_usd"])
        consumers = {r["consumer"]: r for r in json.loads(self.ok("stats-consumer", "--json",
                                                                  store=self.store))}
        self.assertEqual((consumers["alice"]["rounds"], consumers["bob"]["rounds"]), (3, 1))

    def test_session_crossing_midnight_in_other_zones(self) -> None:
        def night_owl_rounds(zone: str) -> dict[str, int]:
            rows = json.loads(self.ok("stats-date", "--days", "3", "--end", "2026-02-02",
                                      "--tz", zone, "--json", store=self.store))
            return {r["day"]: r["rounds"] for r in rows}
        # Only night-owl has rounds outside 10:00-11:30 UTC; the others add 6 on Feb 1.
        self.assertEqual(night_owl_rounds("UTC"), {"2026-01-31": 0, "2026-02-01": 10, "2026-02-02": 0})
        self.assertEqual(night_owl_rounds("Asia/Shanghai"),
                         {"2026-01-31": 0, "2026-02-01": 9, "2026-02-02": 1})
        self.assertEqual(night_owl_rounds("-05:00"),
                         {"2026-01-31": 1, "2026-02-01": 9, "2026-02-02": 0})
        text = self.ok("stats-date", "--days", "3", "--end", "2026-02-02", "--tz", "-05:00",
                       store=self.store)
        self.assert_golden("stats-date-minus-5.txt", text)
        self.assertIn("days in UTC-05:00", text)

    def test_control_characters_escaped_on_the_terminal(self) -> None:
        for argv in (["list"], ["stats-model"], ["show", "evil\x1b[2Jid"],
                     ["show", "evil\x1b[2Ji"], ["url", "evil\x1b[2Ji"]):
            code, out, err = self.cli(*argv, store=self.store)
            for stream in (out, err):
                self.assertNotIn("\x1b", stream, argv)
                self.assertNotIn("\r", stream, argv)
                self.assertNotIn("\x07", stream, argv)
        show = self.ok("show", "evil\x1b[2Jid", store=self.store)
        self.assertIn("Session: evil\\x1b[2Jid\n", show)
        self.assertIn("Answer: \\x1b[2Jcleared\\x0dX\n", show)
        self.assertIn("[user] hi\\x1b]0;pwned\\x07\n", show)
        self.assertIn("evil\\x1b[2Jid", self.ok("list", store=self.store))
        self.assertIn("%1B%5B2Jid", self.ok("url", "evil\x1b[2Jid", store=self.store))
        _, _, err = self.cli("show", "evil\x1b[2Ji", store=self.store)
        self.assertIn('no session "evil\\x1b[2Ji"', err)

    def test_list_ids_whole_or_cut_cleanly(self) -> None:
        whole = self.ok("list", store=self.store)
        self.assertIn("night-owl ", whole)
        with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
            cut = self.ok("list", store=self.store)
            wide = self.ok("list", "--wide", store=self.store)
        self.assertIn("ids cut to fit: --wide shows them whole", cut)
        # Both ends kept: the tail is what tells such ids apart.
        self.assertRegex(cut, r"\nagent:main:\S*…\S*:98765 ")
        self.assertIn("\nnight-owl ", cut)
        self.assertEqual(wide, whole)
        self.assertIn("agent:main:discord:channel:1465367993012981988:thread:98765 ", whole)
        self.assertEqual(len({len(line) for line in cut.splitlines()[:2]}), 1)

    def test_empty_store_prints_empty_output(self) -> None:
        store = self.make_tmp() / "empty"
        store.mkdir()
        code, out, err = self.cli("list", store=store)
        self.assertEqual(code, 0)
        self.assertIn("(no sessions)\n0 of 0 sessions, by updated\n", out)
        self.assertIn("no sessions in", err)
        self.assertEqual(self.cli("list", "--json", store=store)[1], "[]\n")
        self.assertEqual(self.cli("stats-model", "--json", store=store)[1], "[]\n")
        out = self.cli("stats-model", store=store)[1]
        self.assertIn("(no rounds)", out)
        self.assertRegex(out, r"TOTAL +0 +0 +0 +0 +0 +0 +0 +0 +\$0\.00\n")
        rows = json.loads(self.cli("stats-date", "--days", "2", "--json", store=store)[1])
        self.assertEqual([r["rounds"] for r in rows], [0, 0])
        code, _, _ = self.cli("export", str(store / "r.csv"), store=store)
        self.assertEqual(code, 0)
        with open(store / "r.csv", newline="") as f:
            self.assertEqual(list(csv.reader(f)), [[
                "section", "key", "sessions", "rounds", "input_tokens", "output_tokens",
                "reasoning_tokens", "cached_tokens", "cache_write_tokens", "total_tokens",
                "cost_usd",
                "unpriced_rounds", "tool_call_rounds", "models", "created_at", "updated_at",
                "subagent_cost_usd", "spawned_subagent_cost_usd", "cost_with_subagents_usd",
                "agent", "channel", "kind"]])

    def test_missing_store_is_a_clear_one_line_error(self) -> None:
        missing = self.tmp / "nowhere"
        for argv in (["list"], ["stats-model"], ["show", "x"], ["export", "-", "--format", "csv"]):
            code, out, err = self.cli(*argv, store=missing)
            self.assertEqual((code, out), (1, ""))
            self.assertEqual(err.count("\n"), 1)
            self.assertIn(f"no session store at {missing}: run main.py first", err)

    def test_csv_cells_cannot_run_as_formulas(self) -> None:
        tmp = self.make_tmp()
        log = tmp / "access.log"
        log.write_text(log_line("2026-02-01T10:00:00.000Z", "=HYPERLINK(\"http://x\")", "test-a",
                                10, 1, request_id="f1"))
        store = build_store(tmp, [log])
        text = self.ok("export", "-", "--format", "csv", store=store)
        self.assertIn("'=HYPERLINK", text)
        self.assertNotIn(",=HYPERLINK", text)


if __name__ == "__main__":
    unittest.main()
