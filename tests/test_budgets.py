"""Budgets driven through a real store: each threshold alerts exactly once, across a
restart between two crossings, a re-read of the same log and a lost state file; days of
event time in --tz; consumers; the store's token budget and the live lines; old data
recorded quietly; undelivered alerts delivered by the next run; burn rates."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

from tests.helpers import ROOT, TempDirTest, write_lines
from tests.webhook_server import WebhookServer

from agent_session_monitor.finops import monitor_hooks as finops
from agent_session_monitor import links, monitor_cli
from agent_session_monitor.finops.alerts import parse_sink
from agent_session_monitor.finops.budget_watch import FinOpsConfig
from agent_session_monitor.finops.budgets import Budget
from agent_session_monitor.reports.burn import burn
from agent_session_monitor.errors import EXIT_USAGE, MonitorError
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.reports.timerange import parse_tz

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def line(n: int, *, session: str = "s1", at: datetime | None = None, inp: int = 200,
         out: int = 100, model: str = "gpt-4o", consumer: str | None = None,
         tool_calls: list | None = None, messages: list | None = None) -> bytes:
    """A Higress line: ``inp + out`` tokens, request id ``r<n>``, at ``at``."""
    ai = {"model": model, "input_token": inp, "output_token": out, "session_id": session,
          "messages": messages or [{"role": "user", "content": f"question {n}"}]}
    if consumer:
        ai["consumer"] = consumer
    if tool_calls:
        ai["tool_calls"] = tool_calls
    moment = at or NOW - timedelta(minutes=30) + timedelta(seconds=n)
    # ai_log before the raw X-Request-Id, as in Higress's format (forgery.py)
    return (json.dumps({"start_time": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                        "ai_log": json.dumps(ai), "request_id": f"r{n}"}) + "\n").encode()


class BudgetStore(TempDirTest):
    """Runs of the monitor over one log and store, each run a restart."""

    def setUp(self) -> None:
        super().setUp()
        self.server = WebhookServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.log = self.tmp / "access.log"
        self.log.write_bytes(b"")

    def config(self, **kwargs) -> FinOpsConfig:
        kwargs.setdefault("sinks", [parse_sink(f"{self.server.base}/ok/hook")])
        kwargs.setdefault("max_age", 0)
        kwargs.setdefault("backoff", 0.05)
        return FinOpsConfig(**kwargs)

    def run_monitor(self, config: FinOpsConfig, *lines: bytes, logs: list | None = None,
                    clock=None) -> str:
        """Append ``lines``, run one pass with ``config`` attached, close; stderr."""
        write_lines(self.log, lines)
        err = io.StringIO()
        paths = [str(p) for p in (logs or [self.log])]
        with Monitor(MonitorConfig(log_paths=paths, output_dir=self.out), err=err) as monitor:
            handle = finops.attach(monitor, config, clock=clock or (lambda: NOW.timestamp()))
            monitor.poll_once()
            self.live = handle.live_text()   # as the follow loop draws it, after a pass
            handle.close(wait=10)
        return err.getvalue()

    def alerts(self, prefix: str = "/ok/hook") -> list[dict]:
        return [r.json for r in self.server.to(prefix)]

    def state(self) -> dict:
        state = json.loads((self.out / ".state.json").read_text())
        for name, empty in (("fired", "{}"), ("outbox", "[]")):   # kept as compact strings
            state["alerts"][name] = json.loads(state["alerts"].get(name) or empty)
        return state


class ThresholdTest(BudgetStore):
    def test_each_threshold_once_across_restart_and_rereads(self) -> None:
        config = self.config(budgets=[Budget("session", "tokens", 1000)])
        # 300 tokens a round: 30%, 60% (50 fires), restart, 90% (80 fires), 120% (100).
        self.run_monitor(config, line(1))
        self.assertEqual(self.alerts(), [])
        err = self.run_monitor(config, line(2))
        self.assertIn("alert [info] Session budget: 50% used: Session s1 has used 600 tokens "
                      "of its 1,000 tokens budget (60%; reached 50%).", err)
        self.run_monitor(config, line(3))           # a restart between two crossings
        self.run_monitor(config, line(4))
        self.assertEqual([a["data"]["thresholds"] for a in self.alerts()], [[50], [80], [100]])
        self.assertEqual([a["severity"] for a in self.alerts()], ["info", "warning", "critical"])
        self.assertEqual(self.alerts()[-1]["title"], "Session budget exceeded")
        # The same log again under another name (a copy, a rotation): rounds already
        # stored, nothing new, nothing fired.
        copy = self.tmp / "access.log.copy"
        shutil.copy(self.log, copy)
        self.run_monitor(config, logs=[self.log, copy])
        # The state lost altogether: the log is re-read from the start, and every round
        # is recognised as stored.
        for name in (".state.json", ".state.json.bak"):
            (self.out / name).unlink()
        self.run_monitor(config)
        self.assertEqual(len(self.alerts()), 3)
        keys = sorted(self.state()["alerts"]["fired"]) if (self.out / ".state.json").exists() else []
        self.assertEqual(keys, [])   # that run fired nothing (and remembered nothing new)

    def test_several_thresholds_in_one_commit_are_one_alert(self) -> None:
        config = self.config(budgets=[Budget("session", "usd", 0.001)])
        err = self.run_monitor(config, line(1, inp=1000, out=100))   # $0.0035
        (alert,) = self.alerts()
        self.assertEqual(alert["data"]["thresholds"], [50, 80, 100])
        self.assertEqual(alert["text"], "Session s1 has used $0.003500 of its $0.001000 budget "
                                        "(350%; reached 50%, 80%, 100%).")
        self.assertEqual(err.count("alert ["), 1)
        fired = self.state()["alerts"]["fired"]
        self.assertEqual(sorted(k.split("|")[4] for k in fired), ["100", "50", "80"])
        # Raising the budget re-arms its thresholds (the key holds the limit).
        self.run_monitor(self.config(budgets=[Budget("session", "usd", 0.005)]),
                         line(2, inp=100, out=0))                     # $0.00375: 75%
        self.assertEqual([a["data"]["thresholds"] for a in self.alerts()], [[50, 80, 100], [50]])

    def test_daily_budget_uses_the_event_day_in_the_time_zone(self) -> None:
        late = datetime(2026, 3, 1, 15, 30, tzinfo=timezone.utc)      # 23:30 at +08:00
        early = datetime(2026, 3, 1, 16, 30, tzinfo=timezone.utc)     # 00:30 next day there
        lines = [line(1, at=late, inp=500), line(2, at=early, inp=500, session="s2")]
        shanghai = self.config(budgets=[Budget("day", "tokens", 1000)], tz=parse_tz("+08:00"))
        self.run_monitor(shanghai, *lines)
        self.assertEqual(sorted((a["data"]["subject"], a["data"]["thresholds"]) for a in self.alerts()),
                         [("2026-03-01", [50]), ("2026-03-02", [50])])
        self.assertIn("2026-03-01 (UTC+08:00) has used 600 tokens of its 1,000 tokens daily "
                      "budget (60%; reached 50%).", self.alerts()[0]["text"]
                      + self.alerts()[1]["text"])

    def test_same_lines_in_utc_are_one_day(self) -> None:
        late = datetime(2026, 3, 1, 15, 30, tzinfo=timezone.utc)
        early = datetime(2026, 3, 1, 16, 30, tzinfo=timezone.utc)
        self.run_monitor(self.config(budgets=[Budget("day", "tokens", 1000)]),
                         line(1, at=late, inp=500), line(2, at=early, inp=500, session="s2"))
        self.assertEqual([(a["data"]["subject"], a["data"]["thresholds"]) for a in self.alerts()],
                         [("2026-03-01", [50, 80, 100])])

    def test_consumer_daily_budgets_each_and_one_of_their_own(self) -> None:
        config = self.config(budgets=[Budget("consumer_day", "tokens", 500),
                                      Budget("consumer_day", "tokens", 5000, "bob")])
        self.run_monitor(config, line(1, consumer="alice", inp=500),
                         line(2, consumer="bob", session="s2", inp=500),
                         line(3, session="s3", inp=500))
        found = sorted((a["data"]["subject"], a["data"]["thresholds"]) for a in self.alerts())
        # bob's own 5,000 replaces the 500 every other consumer gets; no consumer counts too.
        self.assertEqual(found, [("(none)\n2026-03-02", [50, 80, 100]),
                                 ("alice\n2026-03-02", [50, 80, 100])])
        alice = next(a for a in self.alerts() if a["data"]["subject"].startswith("alice"))
        self.assertEqual(alice["text"], "Consumer alice on 2026-03-02 (UTC) has used 600 tokens of "
                                        "its 500 tokens daily budget (120%; reached 50%, 80%, 100%).")

    def test_store_token_budget_and_the_live_lines(self) -> None:
        config = self.config(budgets=[Budget("total", "tokens", 2000),
                                      Budget("day", "usd", 1.0)])
        recent = NOW - timedelta(minutes=10)
        self.run_monitor(config, *(line(n, session=f"s{n}", at=recent + timedelta(seconds=n))
                                   for n in range(1, 5)))
        (alert,) = self.alerts()
        self.assertEqual(alert["text"], "The store has used 1,200 tokens of its 2,000 tokens "
                                        "budget (60%; reached 50%).")
        text = self.live.splitlines()
        self.assertEqual(text[0], "Budget: 1,200 / 2,000 tokens (60.0%)")
        self.assertEqual(text[1], "Today 2026-03-02 (UTC): $0.006000 / $1.0000 (0.6%)")
        # 1,200 tokens and $0.006 in the last hour; 12 hours left at that pace.
        self.assertEqual(text[2], "Burn: 20 tokens/min, $0.006000/hour (last 60 min); today "
                                  "$0.006000, projected $0.0780 by midnight UTC; 4 active sessions")
        self.assertTrue(text[3].startswith("Fastest: s"), text[3])
        self.assertEqual(text[4], "Last alert: Token budget: 50% used")

    def test_old_data_is_recorded_without_alerting(self) -> None:
        config = self.config(budgets=[Budget("session", "tokens", 100)], max_age=24 * 3600)
        old = NOW - timedelta(days=3)
        err = self.run_monitor(config, line(1, at=old))
        self.assertEqual(self.alerts(), [])
        self.assertIn("note: 1 budget threshold(s) or anomalies in data older than "
                      "--alert-max-age were recorded without alerting", err)
        self.assertEqual(len(self.state()["alerts"]["fired"]), 3)
        self.run_monitor(config, line(2))   # new data, but those thresholds are spent
        self.assertEqual(self.alerts(), [])

    def test_a_replay_of_old_logs_fires_once_with_no_age_limit(self) -> None:
        config = self.config(budgets=[Budget("session", "tokens", 100)])
        old = datetime(2025, 1, 5, 10, 0, tzinfo=timezone.utc)
        real_clock = time.time
        self.run_monitor(config, line(1, at=old), clock=real_clock)
        self.run_monitor(config, line(2, at=old + timedelta(minutes=1)), clock=real_clock)
        self.assertEqual([a["data"]["thresholds"] for a in self.alerts()], [[50, 80, 100]])
        self.assertEqual(set(self.state()["alerts"]["fired"].values()), {"2025-01-05"})

    def test_levels_not_edges_a_missed_crossing_fires_at_the_next_commit(self) -> None:
        # The first run has no budget watch (or died before its hook ran).
        write_lines(self.log, [line(1, inp=900)])
        with Monitor(MonitorConfig(log_paths=[str(self.log)], output_dir=self.out),
                     err=io.StringIO()) as monitor:
            monitor.poll_once()
        config = self.config(budgets=[Budget("session", "tokens", 1000)])
        self.run_monitor(config)                 # nothing new: nothing evaluated
        self.assertEqual(self.alerts(), [])
        self.run_monitor(config, line(2, inp=10, out=10))
        self.assertEqual([a["data"]["thresholds"] for a in self.alerts()], [[50, 80, 100]])


class OutboxTest(BudgetStore):
    def test_an_alert_the_webhook_refused_is_delivered_by_the_next_run_once(self) -> None:
        sink = [parse_sink(f"{self.server.base}/switch")]
        config = self.config(budgets=[Budget("session", "tokens", 100)], sinks=sink, retries=1)
        self.server.down = True
        err = self.run_monitor(config, line(1))
        self.assertEqual(len(self.server.to("/switch")), 2)            # tried, retried
        self.assertIn("note: 1 alert(s) not yet delivered everywhere", err)
        outbox = self.state()["alerts"]["outbox"]
        self.assertEqual([e["sinks"] for e in outbox], [[sink[0].id]])
        self.assertNotIn("/switch", json.dumps(outbox))               # no URL in the state
        self.server.down = False
        self.run_monitor(config)                                       # no new line at all
        self.run_monitor(config)
        hits = self.server.to("/switch")
        self.assertEqual(len(hits), 3)
        self.assertEqual(hits[-1].json["data"]["thresholds"], [50, 80, 100])
        self.assertEqual(self.state()["alerts"]["outbox"], [])

    def test_the_record_is_saved_before_anything_is_sent(self) -> None:
        # A run that dies right after its pass (no close, senders still busy): the state
        # on disk already has the threshold and the alert owed.
        self.server.down = True
        config = self.config(budgets=[Budget("session", "tokens", 100)],
                             sinks=[parse_sink(f"{self.server.base}/switch")], retries=0)
        write_lines(self.log, [line(1)])
        with Monitor(MonitorConfig(log_paths=[str(self.log)], output_dir=self.out),
                     err=io.StringIO()) as monitor:
            finops.attach(monitor, config)
            saved = []
            monitor.on_commit.append(lambda written, m: saved.append(self.state()["alerts"]))
            monitor.poll_once()
        self.assertEqual(len(saved[0]["fired"]), 3)
        self.assertEqual(len(saved[0]["outbox"]), 1)
        self.server.down = False
        self.run_monitor(config)
        self.assertEqual([r.json["data"]["thresholds"] for r in self.server.to("/switch")
                          if not self.server.down][-1:], [[50, 80, 100]])
        self.assertEqual(self.state()["alerts"]["outbox"], [])


class AnomalyAlertTest(BudgetStore):
    def tool_loop_alert(self, **config) -> dict:
        config = self.config(anomaly_kinds=frozenset({"tool_loop"}),
                             base_url="https://mon.example", **config)
        call = [{"id": "c1", "type": "function",
                 "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]
        history = [{"role": "user", "content": "fix it"}]
        lines = []
        for n in range(1, 7):
            lines.append(line(n, tool_calls=call, messages=list(history)))
            history += [{"role": "assistant", "content": None, "tool_calls": call},
                        {"role": "tool", "tool_call_id": "c1", "content": "same content"}]
        self.run_monitor(config, *lines[:2])
        self.assertEqual(self.alerts(), [])
        self.run_monitor(config, *lines[2:4])
        self.run_monitor(config, *lines[4:])
        (alert,) = self.alerts()
        return alert

    def test_a_tool_loop_is_alerted_once_with_a_link(self) -> None:
        alert = self.tool_loop_alert()
        self.assertEqual(alert["title"], "Agent anomaly: tool-call loop")
        self.assertEqual(alert["url"], "https://mon.example/session?id=s1")
        # Seen in the second run, once round 4 brought round 3's result back.
        self.assertIn('read_file({"path": "a.py"}) was called in 4 rounds in a row (1-4)',
                      alert["text"])
        self.assertEqual(alert["data"]["kind"], "tool_loop")

    def test_a_signed_link_in_an_alert_expires_after_30_days(self) -> None:
        # Alerts land in shared channels that keep their history: the link they carry
        # is a credential for the conversation, so it expires like cli.py url's.
        before = time.time()
        alert = self.tool_loop_alert(link_secret="k")
        q = {k: v[0] for k, v in parse_qs(urlsplit(alert["url"]).query).items()}
        self.assertAlmostEqual(int(q["exp"]) - before, 30 * 86400, delta=60)
        self.assertTrue(links.verify("s1", q["sig"], q["exp"], "k"))
        self.assertFalse(links.verify("s1", q["sig"], q["exp"], "k", now=int(q["exp"]) + 1))


class FlagsTest(TempDirTest):
    def parse(self, *argv: str) -> argparse.Namespace:
        return monitor_cli.build_parser().parse_args(list(argv))   # finops flags wired in

    def test_flags_become_a_config(self) -> None:
        args = self.parse("--budget", "1000000", "--session-budget-usd", "5",
                          "--daily-budget-tokens", "9000000", "--consumer-daily-budget-usd", "20",
                          "--consumer-daily-budget-usd", "ci-bot=100", "--alert-webhook",
                          "https://hooks.slack.com/services/a/b/c", "--alert-webhook",
                          "telegram://1:abc@42", "--alert-on-anomaly", "loop,cost",
                          "--tz", "Asia/Shanghai", "--budget-thresholds", "90,25",
                          "--alert-max-age", "2h", "--base-url", "http://h:8888/")
        config = finops.config_from_args(args)
        self.assertEqual(config.budgets, [Budget("total", "tokens", 1000000),
                                          Budget("session", "usd", 5.0),
                                          Budget("day", "tokens", 9000000),
                                          Budget("consumer_day", "usd", 20.0),
                                          Budget("consumer_day", "usd", 100.0, "ci-bot")])
        self.assertEqual([s.kind for s in config.sinks], ["slack", "telegram"])
        self.assertEqual(config.anomaly_kinds, frozenset({"tool_loop", "cost_outlier"}))
        self.assertEqual((config.thresholds, config.max_age, config.base_url, str(config.tz)),
                         ((25, 90), 7200.0, "http://h:8888", "Asia/Shanghai"))
        self.assertTrue(config.active)
        self.assertFalse(finops.config_from_args(self.parse()).active)

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (["--alert-webhook", "file:///etc/passwd"], ["--alert-on-anomaly", "nope"],
                     ["--consumer-daily-budget-usd", "bob=x"], ["--budget-thresholds", "0"],
                     ["--tz", "Mars/Base"], ["--alert-max-age", "soon"]):
            with self.subTest(argv=argv), self.assertRaises(MonitorError) as caught:
                finops.config_from_args(self.parse(*argv))
            self.assertEqual(caught.exception.exit_code, EXIT_USAGE)

    def test_main_py_alerts_once_from_the_command_line(self) -> None:
        log = self.tmp / "access.log"
        write_lines(log, [line(1), line(2)], "wb")
        with WebhookServer() as server:
            argv = ["--log-path", str(log), "--output-dir", str(self.out), "--allow-log-dir",
                    str(self.tmp), "--session-budget-tokens", "500", "--alert-max-age", "0",
                    "--alert-webhook", f"{server.base}/ok/x", "-q"]
            for _ in range(2):   # the second run re-reads nothing and must not alert again
                err = io.StringIO()
                self.assertEqual(monitor_cli.main(argv, out=io.StringIO(), err=err), 0, err.getvalue())
            self.assertEqual([r.json["data"]["thresholds"] for r in server.to("/ok/x")],
                             [[50, 80, 100]])


class BurnTest(BudgetStore):
    def test_rates_today_and_active_sessions(self) -> None:
        lines = [line(1, at=NOW - timedelta(hours=5), inp=10_000, out=0),          # today, old
                 line(2, at=NOW - timedelta(minutes=40), inp=1000, out=200),
                 line(3, at=NOW - timedelta(minutes=5), inp=1000, out=200, session="s2"),
                 line(4, at=NOW - timedelta(days=1), inp=99_999, out=0, session="s3")]
        self.run_monitor(self.config(budgets=[Budget("day", "tokens", 10**9)]), *lines)
        with Monitor(MonitorConfig(log_paths=[str(self.log)], output_dir=self.out),
                     err=io.StringIO()) as monitor:
            data = burn(monitor.index.db, now=NOW)
        recent, today = data["recent"], data["today"]
        # The window starts at the quarter-hour of 11:00: 60 minutes, rounds 2 and 3.
        self.assertEqual((recent["minutes"], recent["tokens"], recent["rounds"]), (60.0, 2400, 2))
        cost = (1000 * 2.5 + 200 * 10) / 1e6
        self.assertAlmostEqual(recent["usd_per_hour"], 2 * cost)
        self.assertAlmostEqual(recent["tokens_per_min"], 40.0)
        self.assertEqual((today["day"], today["tokens"], today["rounds"]), ("2026-03-02", 12_400, 3))
        self.assertEqual((today["elapsed_hours"], today["remaining_hours"]), (12.0, 12.0))
        self.assertAlmostEqual(today["projected_cost_usd"], today["cost_usd"] + 12 * 2 * cost)
        self.assertEqual(today["projected_tokens"], 12_400 + 40 * 60 * 12)
        self.assertEqual([s["session_id"] for s in data["active_sessions"]], ["s2"])
        s2 = data["active_sessions"][0]
        self.assertAlmostEqual(s2["usd_per_hour"], cost * 60 / 5)   # since it began, 5 min ago


class WatchImportedOnlyWhereItHasWork(TempDirTest):
    """A cron pass without budget or alert flags neither imports nor starts the watch
    (its start-up is what a cron pass pays for every appended line); with a flag, or
    with --follow, it is there and alerts."""

    SCRIPT = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
              "from agent_session_monitor import monitor_cli; "
              "code = monitor_cli.main(sys.argv[2:]); "
              "print(json.dumps([code, sorted(m for m in sys.modules if '.finops.' in m "
              "or '.reports.' in m)]))")

    def run_pass(self, *flags: str) -> tuple[int, list, str]:
        log = self.tmp / "access.log"
        if not log.exists():
            write_lines(log, [line(n, inp=100, out=20) for n in range(1, 4)])
        proc = subprocess.run(
            [sys.executable, "-c", self.SCRIPT, str(ROOT), "--log-path", str(log),
             "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q", *flags],
            capture_output=True, text=True, timeout=120)
        code, modules = json.loads(proc.stdout)
        return code, modules, proc.stderr

    def test_a_plain_pass_imports_no_watch_and_a_budget_flag_does(self) -> None:
        code, modules, err = self.run_pass()
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn("agent_session_monitor.finops.budget_watch", modules)
        self.assertNotIn("agent_session_monitor.finops.anomalies", modules)
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(state["counters"]["rounds_stored"], 3)
        self.assertEqual(state["alerts"], {})
        # The same store, the same rounds, a budget: the watch runs and says so.
        write_lines(self.tmp / "access.log", [line(4, inp=100, out=20)])
        code, modules, err = self.run_pass("--session-budget-tokens", "300",
                                           "--alert-max-age", "0", "--alert-on-anomaly")
        self.assertEqual(code, 0)
        self.assertIn("agent_session_monitor.finops.budget_watch", modules)
        self.assertIn("agent_session_monitor.finops.anomalies", modules)
        self.assertIn("Session budget exceeded", err)
        self.assertTrue(json.loads(json.loads(
            (self.out / ".state.json").read_text())["alerts"]["fired"]))

    def test_a_plain_pass_imports_no_budget_alert_or_report_module(self) -> None:
        code, modules, err = self.run_pass()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(modules, ["agent_session_monitor.finops.monitor_hooks"])   # the flags
        # A flag that only shapes the watch (no budget, no webhook): checked, then Idle.
        code, modules, err = self.run_pass("--tz", "+08:00", "--budget-thresholds", "90")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("agent_session_monitor.finops.budgets", modules)
        self.assertNotIn("agent_session_monitor.finops.budget_watch", modules)

    def test_every_bad_budget_or_alert_value_is_still_a_usage_error_in_a_plain_pass(self):
        for flags, said in ((["--budget-thresholds", "abc"], "--budget-thresholds"),
                            (["--tz", "Nowhere/Atlantis"], "Nowhere/Atlantis"),
                            (["--alert-max-age", "soon"], "--alert-max-age"),
                            (["--alert-webhook", "ftp://example.invalid/x"], "--alert-webhook"),
                            (["--consumer-daily-budget-usd", "team=lots"],
                             "--consumer-daily-budget-usd")):
            with self.subTest(flags=flags):
                code, _modules, err = self.run_pass(*flags)
                self.assertEqual(code, EXIT_USAGE, err)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn(said, err)

    def test_an_unknown_anomaly_kind_is_still_a_usage_error(self) -> None:
        code, modules, err = self.run_pass("--alert-on-anomaly", "loop,nonsense")
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("unknown kind 'nonsense'", err)


if __name__ == "__main__":
    import unittest

    unittest.main()
