"""Small things a user sees (issue 15): grammar of counts, the session page's words for
tool results, empty questions, reasoning and warnings, export to stdout, entry-point
names and the 401 page."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import unittest
from collections import Counter
from datetime import timezone

from tests.helpers import ROOT, TempDirTest, make_line, write_lines

from agent_session_monitor.web import session_view
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.ingest.pass_report import PassStats, summary


class Grammar(unittest.TestCase):
    def test_one_of_a_thing_is_singular(self):
        stats = PassStats(files=1, bytes_read=100, lines=1, rounds=1, sessions={"a"},
                          new_sessions=1, unpriced=Counter({"m": 1}), non_ai=1)
        text = summary(stats)
        self.assertIn("1 round stored in 1 session (1 new)", text)
        self.assertIn("1 round of 1 model has no price: m", text)
        self.assertIn("1 non-AI line.", text)
        stats = PassStats(files=2, bytes_read=100, lines=9, rounds=4, sessions={"a", "b"},
                          unpriced=Counter({"m": 2, "n": 1}))
        text = summary(stats)
        self.assertIn("4 rounds stored in 2 sessions", text)
        self.assertIn("3 rounds of 2 models have no price", text)

    def test_an_empty_log_says_it_is_empty(self):
        self.assertEqual(summary(PassStats()), "Nothing new: the log is empty (no line written yet).")
        self.assertIn("1 log file checked", summary(PassStats(files=1)))


def _doc(rounds: list[dict]) -> dict:
    return {"session_id": "s", "rounds": rounds, "created_at": rounds[0]["timestamp"],
            "updated_at": rounds[-1]["timestamp"], "unpriced_rounds": 0, "models": ["m"]}


def _round(n: int, **extra) -> dict:
    return {"round": n, "key": f"k{n}", "timestamp": f"2026-02-01T09:0{n}:00.000Z",
            "model": "m", "cost_usd": 0.001, "input_tokens": 10, "output_tokens": 1, **extra}


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city":"Beijing"}'}}


class PassSessionCounts(TempDirTest):
    """A pass's "stored in N sessions (M new)": N the distinct sessions it added rounds
    to, M those it created, also when its sessions leave the cache and are read back
    from their files mid-pass (a tiny cache, many checkpoints) and over cron slices of
    seeded logs whose sessions come back in later slices."""

    def test_counts_hold_when_sessions_are_read_back_mid_pass(self):
        import random

        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        for seed in range(5):
            rng = random.Random(seed)
            log = self.tmp / f"access-{seed}.log"
            out = self.tmp / f"out-{seed}"
            seen: set = set()
            lines, n = [], 0
            for _slice in range(3):
                touched = set()
                for _ in range(rng.randrange(20, 120)):
                    session = f"s{rng.randrange(40)}"
                    n += 1
                    lines.append(make_line(n, session=session, pad=rng.randrange(300)))
                    touched.add(session)
                write_lines(log, lines)
                lines = []
                config = MonitorConfig(log_paths=[str(log)], output_dir=out,
                                       checkpoint_bytes=rng.choice([2000, 6000, 50000]))
                with Monitor(config, err=io.StringIO()) as monitor:
                    monitor.store.cache_bytes = rng.choice([0, 1500])
                    stats = monitor.poll_once()
                self.assertEqual(len(stats.sessions), len(touched), seed)
                self.assertEqual(stats.new_sessions, len(touched - seen), seed)
                self.assertIn(f"in {len(touched)} sessions ({len(touched - seen)} new)",
                              summary(stats))
                seen |= touched


class SessionPageWords(unittest.TestCase):
    def view(self, rounds: list[dict]) -> list[dict]:
        return session_view.session_page(_doc(rounds), timezone.utc)["rounds"]

    def test_a_tool_call_of_the_last_round_waits_for_its_result(self):
        r = self.view([_round(1, tool_calls=[CALL], has_tool_calls=True)])[0]
        self.assertIsNone(r["tool_calls"][0]["result"])
        self.assertIn("not sent its next request", r["tool_calls"][0]["no_result"])

    def test_a_result_sent_in_the_next_round_is_shown_with_the_call(self):
        rounds = [_round(1, tool_calls=[CALL], has_tool_calls=True),
                  _round(2, messages=[{"role": "assistant", "tool_calls": [CALL]},
                                      {"role": "tool", "tool_call_id": "call_1",
                                       "content": "15°C, clear"}], messages_offset=2)]
        r = self.view(rounds)[0]
        self.assertEqual((r["tool_calls"][0]["result"], r["tool_calls"][0]["result_round"]),
                         ("15°C, clear", 2))

    def test_a_result_not_in_the_stored_messages_is_not_called_missing_yet(self):
        rounds = [_round(1, tool_calls=[CALL], has_tool_calls=True),
                  _round(2, messages="[{'role': 'tool' ... [truncated] ...]", question="15°C")]
        r = self.view(rounds)[0]
        self.assertIn("not among the stored messages", r["tool_calls"][0]["no_result"])
        self.assertNotIn("yet", r["tool_calls"][0]["no_result"])

    def test_an_empty_question_shows_the_tool_result_the_request_ended_with(self):
        rounds = [_round(1, tool_calls=[CALL], has_tool_calls=True),
                  _round(2, question=None, messages=[
                      {"role": "assistant", "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "15°C, clear"}],
                      messages_offset=2)]
        r = self.view(rounds)[1]
        self.assertEqual((r["question_label"], r["question"]),
                         ("Last message: a tool result", "15°C, clear"))

    def test_short_reasoning_is_open_and_long_reasoning_folded(self):
        rounds = [_round(1, reasoning="Check the city first."),
                  _round(2, reasoning="x" * (session_view.SHORT_REASONING + 1))]
        short, long = self.view(rounds)
        self.assertTrue(short["reasoning_open"])
        self.assertFalse(long["reasoning_open"])

    def test_a_salvaged_round_says_what_happened(self):
        r = self.view([_round(1, warnings=["salvaged", "some_new_code"])])[0]
        self.assertIn("not valid JSON", r["warnings"][0])
        self.assertIn("User-Agent", r["warnings"][0])
        self.assertEqual(r["warnings"][1], "some_new_code")   # unknown codes as they are

    def test_an_unpriced_cost_card_is_a_warning_with_a_short_note(self):
        doc = _doc([_round(1, cost_usd=None)])
        doc.update(unpriced_rounds=1, unpriced_models=["my-private-model"], total_cost_usd=None)
        card = [c for c in session_view.session_page(doc, timezone.utc)["cards"] if c["id"] == "cost"][0]
        self.assertEqual((card["value"], card["tone"]), ("unpriced", "warn"))
        self.assertEqual(card["note"], "no price for: my-private-model")


class EntryPoints(TempDirTest):
    def test_export_dash_writes_json_to_stdout(self):
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)])
        self.assertEqual(self.run_monitor(log, extra=["-q"])[0], 0)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli_main(["--data-dir", str(self.out), "export", "-"], out=out, err=err), 0,
                         err.getvalue())
        self.assertEqual(json.loads(out.getvalue())["totals"]["rounds"], 1)
        out = io.StringIO()
        cli_main(["--data-dir", str(self.out), "export", "-", "--format", "csv"], out=out, err=err)
        self.assertTrue(out.getvalue().startswith("section,key,"))

    def test_installed_names_are_what_help_says(self):
        code = ("import sys; sys.argv[0] = '/usr/local/bin/agent-session-web'; "
                "from agent_session_monitor.web.server import build_parser; "
                "print(build_parser().format_usage())")
        usage = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                               text=True).stdout
        self.assertTrue(usage.startswith("usage: agent-session-web"), usage)
        usage = subprocess.run([sys.executable, "scripts/webserver.py", "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout
        self.assertTrue(usage.startswith("usage: webserver.py"), usage)

    def test_webserver_takes_a_negative_offset_after_tz(self):
        from agent_session_monitor.argtypes import join_offsets
        self.assertEqual(join_offsets(["--tz", "-12:00", "--port", "0"]),
                         ["--tz=-12:00", "--port", "0"])
        proc = subprocess.run([sys.executable, "scripts/webserver.py", "--tz", "-12:00", "--port",
                               "99999"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        self.assertNotIn("--tz", proc.stderr)   # the port is refused, the offset accepted
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)

    def test_a_bad_flag_to_main_is_one_line_with_a_hint(self):
        proc = subprocess.run([sys.executable, "main.py", "--bogus"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn("--help", proc.stderr)


class LoginPage(unittest.TestCase):
    def test_the_401_page_does_not_claim_the_server_is_exposed(self):
        from agent_session_monitor.web import render_html
        ctx = render_html.PageContext(css="/a.css", js="/a.js", full_access=False, link_params={})
        page = render_html.login_page(ctx, "/")
        self.assertNotIn("reachable beyond", page)
        self.assertIn("started with an access token", page)


if __name__ == "__main__":
    unittest.main()
