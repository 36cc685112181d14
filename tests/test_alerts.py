"""Alert sinks against a real local HTTP server: each service's payload field by field,
escaping of hostile content, retries, final failures logged, and a hanging or failing
webhook that never slows ingestion beyond its timeout budget."""

from __future__ import annotations

import io
import json
import time
import unittest

from tests.helpers import TempDirTest, make_line, write_lines
from tests.webhook_server import WebhookServer

from agent_session_monitor.finops import monitor_hooks as finops
from agent_session_monitor.finops.alerts import (
    Alert, discord_escape, parse_sink, payload_for, slack_escape,
)
from agent_session_monitor.finops.budget_watch import FinOpsConfig
from agent_session_monitor.finops.budgets import Budget
from agent_session_monitor.finops.delivery import Delivery
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

HOSTILE = "<!channel> @everyone *bold* [x](https://evil.example) <script>&amp;"
ALERT = Alert(key="budget|session|usd|5|80|s1", kind="budget", severity="warning",
              title="Session budget: 80% used",
              text=f"Session {HOSTILE} has used $4.10 of its $5.00 budget (82%; reached 80%).",
              fields=(("Session", HOSTILE), ("Used", "$4.10 (82%)"), ("Budget", "$5.00")),
              session_id=HOSTILE, url="https://mon.example/session?id=a%3Cb&sig=1",
              created_at="2026-03-02T09:00:00Z", data={"percent": 82.0})


def sent(server: WebhookServer, sinks: list[str], alert: Alert = ALERT, **options):
    """Deliver ``alert`` to each sink URL; returns (delivery results, stderr text)."""
    err = io.StringIO()
    delivery = Delivery([parse_sink(s) for s in sinks], err=err, **options)
    delivery.submit(alert)
    delivery.close(wait=10)
    return delivery.results(), err.getvalue()


class SinkParsingTest(unittest.TestCase):
    def test_kind_from_the_host_or_the_prefix(self) -> None:
        cases = {
            "https://hooks.slack.com/services/T0/B0/xyz": ("slack", "https://hooks.slack.com/services/T0/B0/xyz", None),
            "https://discord.com/api/webhooks/1/abc": ("discord", "https://discord.com/api/webhooks/1/abc", None),
            "https://api.telegram.org/bot123:AbC-_d/sendMessage?chat_id=-1001": (
                "telegram", "https://api.telegram.org/bot123:AbC-_d/sendMessage", "-1001"),
            "telegram://123:AbC@@my_channel": ("telegram", "https://api.telegram.org/bot123:AbC/sendMessage",
                                               "@my_channel"),
            "telegram://123:AbC@42": ("telegram", "https://api.telegram.org/bot123:AbC/sendMessage", "42"),
            "https://example.com/hook": ("json", "https://example.com/hook", None),
            "slack:http://127.0.0.1:9/x": ("slack", "http://127.0.0.1:9/x", None),
            "discord:https://proxy.example/d": ("discord", "https://proxy.example/d", None),
            "json:https://hooks.slack.com/services/x": ("json", "https://hooks.slack.com/services/x", None),
            "telegram:http://127.0.0.1:9/bot1:a/sendMessage?chat_id=7": (
                "telegram", "http://127.0.0.1:9/bot1:a/sendMessage", "7"),
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                sink = parse_sink(text)
                self.assertEqual((sink.kind, sink.url, sink.chat_id), expected)

    def test_bad_values_are_refused_with_the_accepted_forms(self) -> None:
        for text in ("file:///etc/passwd", "ftp://x/y", "hooks.slack.com/services/x",
                     "https://api.telegram.org/bot1:a/sendMessage", "telegram://nope@42",
                     "telegram://123:abc@"):
            with self.subTest(text=text), self.assertRaises(ValueError):
                parse_sink(text)

    def test_labels_and_ids_never_hold_the_secret(self) -> None:
        sink = parse_sink("https://hooks.slack.com/services/T0/B0/s3cr3t")
        self.assertEqual(sink.label, "slack webhook at hooks.slack.com")
        self.assertNotIn("s3cr3t", sink.id)
        self.assertEqual(sink.id, parse_sink("https://hooks.slack.com/services/T0/B0/s3cr3t").id)


class PayloadTest(unittest.TestCase):
    """What each service receives, field by field, through a real HTTP server."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = WebhookServer().__enter__()
        cls.addClassCleanup(cls.server.__exit__, None, None, None)
        base = cls.server.base
        cls.results, cls.err = sent(cls.server, [
            f"slack:{base}/ok/slack", f"discord:{base}/discord/1/tok",
            f"telegram:{base}/bot123:ABC/sendMessage?chat_id=-100200", f"{base}/ok/generic"])

    def one(self, prefix: str):
        requests = self.server.to(prefix)
        self.assertEqual(len(requests), 1, prefix)
        r = requests[0]
        self.assertEqual(r.headers["Content-Type"], "application/json; charset=utf-8")
        self.assertTrue(r.headers["User-Agent"].startswith("agent-session-monitor/"))
        return r.json

    def test_every_sink_reports_delivery(self) -> None:
        self.assertEqual(sorted(o.ok for o in self.results), [True] * 4)
        self.assertEqual(self.err, "")

    def test_slack_incoming_webhook_payload(self) -> None:
        p = self.one("/ok/slack")
        self.assertEqual(set(p), {"text", "blocks"})
        esc = slack_escape(HOSTILE)
        self.assertEqual(p["text"], f"⚠️ Session budget: 80% used: Session {esc} has used $4.10 "
                                    "of its $5.00 budget (82%; reached 80%).")
        header, section, fields, actions = p["blocks"]
        self.assertEqual(header, {"type": "header", "text": {
            "type": "plain_text", "text": "⚠️ Session budget: 80% used", "emoji": True}})
        self.assertEqual(section, {"type": "section", "text": {"type": "mrkdwn", "text":
                         f"Session {esc} has used $4.10 of its $5.00 budget (82%; reached 80%)."}})
        self.assertEqual(fields["type"], "section")
        self.assertEqual(fields["fields"][0], {"type": "mrkdwn", "text": f"*Session*\n{esc}"})
        self.assertEqual(fields["fields"][1], {"type": "mrkdwn", "text": "*Used*\n$4.10 (82%)"})
        self.assertEqual(actions, {"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Open session"},
            "url": ALERT.url}]})
        # No raw control sequence survives: no mention, no link, no tag.
        self.assertNotIn("<!channel>", json.dumps(p))
        self.assertNotIn("<script>", json.dumps(p))
        self.assertIn("&lt;!channel&gt;", p["text"])
        self.assertIn("&amp;amp;", p["text"])

    def test_discord_webhook_payload(self) -> None:
        p = self.one("/discord/1/tok")
        self.assertEqual(set(p), {"content", "embeds", "allowed_mentions"})
        self.assertEqual(p["allowed_mentions"], {"parse": []})
        self.assertEqual(p["content"], discord_escape("⚠️ Session budget: 80% used"))
        (embed,) = p["embeds"]
        self.assertEqual(embed["title"], "⚠️ Session budget: 80% used")
        self.assertEqual(embed["description"], discord_escape(ALERT.text))
        self.assertIn(r"\@everyone", embed["description"])
        self.assertIn(r"\[x\]\(https", embed["description"])
        self.assertIn(r"\*bold\*", embed["description"])
        self.assertEqual(embed["color"], 0xF1C40F)
        self.assertEqual(embed["url"], ALERT.url)
        self.assertEqual(embed["timestamp"], "2026-03-02T09:00:00Z")
        self.assertEqual(embed["footer"], {"text": "agent-session-monitor"})
        self.assertEqual(embed["fields"][0], {"name": "Session", "value": discord_escape(HOSTILE),
                                              "inline": True})
        self.assertEqual([f["name"] for f in embed["fields"]], ["Session", "Used", "Budget"])

    def test_telegram_send_message_payload(self) -> None:
        p = self.one("/bot123:ABC/sendMessage")
        self.assertEqual(set(p), {"chat_id", "text", "parse_mode", "disable_web_page_preview"})
        self.assertEqual((p["chat_id"], p["parse_mode"], p["disable_web_page_preview"]),
                         ("-100200", "HTML", True))
        lines = p["text"].split("\n")
        self.assertEqual(lines[0], "⚠️ <b>Session budget: 80% used</b>")
        self.assertEqual(lines[1], "Session &lt;!channel&gt; @everyone *bold* [x](https://evil.example) "
                                   "&lt;script&gt;&amp;amp; has used $4.10 of its $5.00 budget "
                                   "(82%; reached 80%).")
        self.assertEqual(lines[3], "<b>Used:</b> $4.10 (82%)")
        self.assertEqual(lines[-1], '<a href="https://mon.example/session?id=a%3Cb&amp;sig=1">'
                                    "Open session</a>")

    def test_generic_json_payload(self) -> None:
        p = self.one("/ok/generic")
        self.assertEqual(p, {"source": "agent-session-monitor", "id": ALERT.id, "key": ALERT.key,
                             "kind": "budget", "severity": "warning", "title": ALERT.title,
                             "text": ALERT.text, "fields": [list(f) for f in ALERT.fields],
                             "session_id": HOSTILE, "url": ALERT.url,
                             "created_at": "2026-03-02T09:00:00Z", "data": {"percent": 82.0}})

    def test_payload_for_respects_length_limits(self) -> None:
        long = Alert(key="k", kind="test", severity="info", title="t", text="x" * 10_000,
                     fields=(("f", "y" * 5000),))
        discord = payload_for(parse_sink("discord:http://h/x"), long)
        self.assertEqual(len(discord["embeds"][0]["description"]), 4096)
        self.assertEqual(len(discord["embeds"][0]["fields"][0]["value"]), 1024)
        telegram = payload_for(parse_sink("telegram://1:a@5"), long)
        self.assertLessEqual(len(telegram["text"]), 4096)
        # Cut before escaping: never half an entity, which Telegram would refuse.
        amp = Alert(key="k", kind="test", severity="info", title="t", text="&" * 5000)
        text = payload_for(parse_sink("telegram://1:a@5"), amp)["text"]
        self.assertLessEqual(len(text), 4096)
        self.assertTrue(text.endswith("&amp;…"), text[-20:])
        slack = payload_for(parse_sink("slack:http://h/x"), amp)
        self.assertLessEqual(len(slack["blocks"][1]["text"]["text"]), 3000)
        self.assertTrue(slack["blocks"][1]["text"]["text"].endswith("&amp;…"))


class RetryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = WebhookServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)

    def test_transient_failures_are_retried_with_backoff(self) -> None:
        results, err = sent(self.server, [f"{self.server.base}/flaky"], backoff=0.1)
        self.assertEqual([(o.ok, o.final) for o in results], [(True, True)])
        hits = self.server.to("/flaky")
        self.assertEqual(len(hits), 3)
        self.assertGreaterEqual(hits[1].at - hits[0].at, 0.09)
        self.assertGreaterEqual(hits[2].at - hits[1].at, 0.19)   # doubled
        self.assertEqual(err, "")

    def test_retry_after_of_a_429_is_honoured(self) -> None:
        results, _ = sent(self.server, [f"{self.server.base}/limited"], backoff=0.01)
        self.assertTrue(results[0].ok)
        hits = self.server.to("/limited")
        self.assertEqual(len(hits), 2)
        self.assertGreaterEqual(hits[1].at - hits[0].at, 0.28)

    def test_a_client_error_is_final_and_logged_with_the_alert(self) -> None:
        for path in ("/bad", "/moved"):
            with self.subTest(path=path):
                results, err = sent(self.server, [f"{self.server.base}{path}"], backoff=0.01)
                self.assertEqual([(o.ok, o.final) for o in results], [(False, True)])
                self.assertEqual(len(self.server.to(path)), 1)   # not retried, not followed
                self.assertIn("alert not delivered to json webhook at 127.0.0.1: HTTP", err)
                self.assertIn("Session budget: 80% used", err)   # the alert itself, not lost

    def test_a_dead_webhook_is_retried_then_reported_as_put_off(self) -> None:
        results, err = sent(self.server, [f"{self.server.base}/fail"], backoff=0.01, retries=2)
        self.assertEqual([(o.ok, o.final) for o in results], [(False, False)])
        self.assertEqual(len(self.server.to("/fail")), 3)
        self.assertIn("HTTP 500", err)
        self.assertIn("(tried 3 times); kept to retry later", err)

    def test_nothing_listening_is_a_network_error(self) -> None:
        results, err = sent(self.server, ["json:http://127.0.0.1:9/"], backoff=0.01, retries=1)
        self.assertFalse(results[0].ok)
        self.assertIn("cannot reach it", err)

    def test_a_hanging_webhook_never_blocks_submit_and_close_is_bounded(self) -> None:
        err = io.StringIO()
        delivery = Delivery([parse_sink(f"{self.server.base}/hang")], err=err, timeout=0.3,
                            retries=1, backoff=0.05, queue_size=5)
        started = time.monotonic()
        for i in range(50):
            delivery.submit(Alert(key=f"k{i}", kind="test", severity="info", title=f"t{i}", text="x"))
        # A submit that waited on the webhook would cost its 0.3 s timeout each: 15 s.
        self.assertLess(time.monotonic() - started, 1.0)
        started = time.monotonic()
        self.assertFalse(delivery.close(wait=0.5))
        self.assertLess(time.monotonic() - started, 2.0)
        outcomes = delivery.results()
        self.assertTrue(all(not o.ok and not o.final for o in outcomes))
        self.assertIn("queue full", err.getvalue())


class IngestionNotDelayedTest(TempDirTest):
    """A budget crossed on every session, alerts to a webhook that hangs and one that
    answers 500: the pass takes as long as without webhooks, and close() stays within
    its budget (twice the timeout, plus a second)."""

    def run_pass(self, sinks: list[str], n: int = 60) -> tuple[float, float, str]:
        log = self.tmp / f"access-{len(sinks)}.log"
        write_lines(log, [make_line(i, session=f"s{i % 30}") for i in range(n)], "wb")
        out = self.tmp / f"store-{len(sinks)}"
        err = io.StringIO()
        config = FinOpsConfig(budgets=[Budget("session", "tokens", 150)],
                              sinks=[parse_sink(s) for s in sinks], max_age=0, timeout=1.0,
                              retries=3, backoff=0.2)
        with Monitor(MonitorConfig(log_paths=[str(log)], output_dir=out), err=err) as monitor:
            handle = finops.attach(monitor, config)
            started = time.monotonic()
            monitor.poll_once()
            ingest = time.monotonic() - started
            started = time.monotonic()
            handle.close()
            closing = time.monotonic() - started
        return ingest, closing, err.getvalue()

    def test_hanging_and_failing_webhooks_do_not_slow_ingestion(self) -> None:
        with WebhookServer() as server:
            quiet, _, _ = self.run_pass([])
            ingest, closing, err = self.run_pass([f"{server.base}/hang", f"{server.base}/fail"])
            self.assertLess(ingest, quiet + 0.5, (ingest, quiet))
            self.assertLess(closing, 2 * 1.0 + 1 + 0.5)
            lines = err.splitlines()
            # 30 sessions over budget: 19 alerts, then one summary (at most 20 a commit).
            self.assertEqual(sum(1 for x in lines if x.startswith(
                "alert [critical] Session budget exceeded")), 19)
            self.assertIn("alert [critical] 11 more alerts: 11 more budget thresholds", err)
            self.assertIn("not yet delivered everywhere; the next run retries them", err)


if __name__ == "__main__":
    unittest.main()
