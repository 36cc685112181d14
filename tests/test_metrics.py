"""GET /metrics: the Prometheus exposition equals the store's totals, never labels a
session, escapes what a client put in a model or consumer name, follows the server's
access rules, passes promtool's lint, and a real Prometheus scrapes it."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import unittest
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

from tests.helpers import TempDirTest, ingest, load_store, require_tool, write_lines
from tests import loggen

from agent_session_monitor.web import metrics
from agent_session_monitor.web.server import make_server
from agent_session_monitor.web.routes import WebApp

TOKEN = "metrics-test-token-0123456789"
KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text: str) -> dict:
    """name -> list of (labels dict, value); checks HELP and TYPE precede each family."""
    families: dict[str, list] = {}
    declared: dict[str, set] = defaultdict(set)
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):   # only \n ends a line (not U+2028, not \r)
        if line.startswith("# "):
            parts = line.split(" ", 3)
            declared[parts[2]].add(parts[1])
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, inner, value = m.groups()
        assert declared[name] == {"HELP", "TYPE"}, f"{name} lacks HELP or TYPE"
        labels = {}
        if inner:
            consumed = 0
            for lm in LABEL.finditer(inner):
                assert lm.start() == consumed, f"bad label syntax in {line!r}"
                consumed = lm.end()
                raw = lm.group(2)
                labels[lm.group(1)] = re.sub(r'\\(.)', lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), raw)
            assert consumed == len(inner), f"bad label syntax in {line!r}"
        families.setdefault(name, []).append((labels, float(value)))
    return families


def store_truth(out: Path) -> dict:
    """(model, consumer) -> sums, from the session files themselves (not the index)."""
    truth: dict = defaultdict(lambda: defaultdict(float))
    costs: dict = defaultdict(list)
    for doc in load_store(out).values():
        for r in doc["rounds"]:
            key = (r.get("model") or "", r.get("consumer") or "")
            b = r.get("buckets") or {}
            t = truth[key]
            t["input"] += sum(b.get(k, 0) for k in ("input", "cache_read", "cache_write",
                                                      "cache_write_1h"))
            t["output"] += b.get("output", 0) + b.get("reasoning", 0)
            t["cache_read"] += b.get("cache_read", 0)
            t["cache_write"] += b.get("cache_write", 0) + b.get("cache_write_1h", 0)
            t["reasoning"] += b.get("reasoning", 0)
            t["rounds"] += 1
            t["unpriced"] += r.get("cost_usd") is None
            t["tools"] += bool(r.get("has_tool_calls"))
            if r.get("cost_usd") is not None:
                costs[key].append(r["cost_usd"])
    for key, values in costs.items():
        truth[key]["cost"] = math.fsum(values)
    return truth


def hostile_line(n: int, model: str, consumer: str, session: str) -> bytes:
    ai = {"model": model, "input_token": 100 + n, "output_token": 7, "session_id": session,
          "consumer": consumer, "question": "q", "answer": "a"}
    outer = {"ai_log": json.dumps(ai), "request_id": f"hostile-{n}",
             "start_time": f"2026-02-01T10:00:{n:02d}.000Z"}
    return json.dumps(outer).encode() + b"\n"


class MetricsContent(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        gen = loggen.generate(seed=18, sessions=40, max_requests=12, unsessioned_every=9)
        self.log = self.tmp / "access.log"
        write_lines(self.log, gen.lines, "wb")
        # Names a client controls, chosen to break a naive exposition writer.
        self.hostile = ['we"ird\\model\nx{a="b"} 1', "模型-ü\r\x00", "\u2028 # TYPE", ""]
        write_lines(self.log, [hostile_line(i, m, c, f"h{i}") for i, (m, c) in enumerate(
            [(m, c) for m in self.hostile[:3] for c in ('con"sumer\\', "alice")])])
        ingest(self.out, self.log)
        self.gen = gen

    def scrape(self, app: WebApp | None = None, headers: dict | None = None):
        app = app or WebApp(self.out)
        return app.handle("GET", "/metrics", {"Host": "127.0.0.1:0", **(headers or {})})

    def test_every_counter_equals_the_session_files_sums_per_model_and_consumer(self):
        response = self.scrape()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.content_type, metrics.CONTENT_TYPE)
        fam = parse_exposition(response.body.decode("utf-8"))
        truth = store_truth(self.out)
        got: dict = defaultdict(lambda: defaultdict(float))
        for labels, value in fam["asm_tokens_total"]:
            got[(labels["model"], labels["consumer"])][labels["kind"]] += value
        for name, field in (("asm_rounds_total", "rounds"), ("asm_unpriced_rounds_total", "unpriced"),
                            ("asm_tool_call_rounds_total", "tools"), ("asm_cost_usd_total", "cost")):
            for labels, value in fam[name]:
                got[(labels["model"], labels["consumer"])][field] += value
        self.assertEqual(set(got), set(truth))
        # An unpriced model has no cost sample at all (unknown, never $0).
        costed = {(l["model"], l["consumer"]) for l, _ in fam["asm_cost_usd_total"]}
        for key, t in truth.items():
            self.assertEqual(key in costed, t["rounds"] > t["unpriced"], key)
        for key, t in truth.items():
            for field in (*KINDS, "rounds", "unpriced", "tools"):
                self.assertEqual(got[key][field], t[field], (key, field))
            self.assertAlmostEqual(got[key]["cost"], t.get("cost", 0.0), places=9, msg=key)
        # And the total cost is loggen's own ground truth (priced independently).
        expected = math.fsum(e.cost_usd for e in self.gen.events if e.cost_usd is not None)
        hostile_cost = sum(v for labels, v in fam["asm_cost_usd_total"]
                           if labels["model"] in self.hostile)
        self.assertAlmostEqual(sum(v for _, v in fam["asm_cost_usd_total"]) - hostile_cost,
                               expected, places=9)
        self.assertEqual(sum(v for _, v in fam["asm_rounds_total"]),
                         len(self.gen.events) + 6)

    def test_the_agent_label_is_the_session_keys_agent(self):
        from agent_session_monitor.session_keys import parse_session_key
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        by_agent: dict = defaultdict(float)
        for labels, value in fam["asm_rounds_total"]:
            by_agent[labels["agent"]] += value
        truth: dict = defaultdict(float)
        for doc in load_store(self.out).values():
            key = parse_session_key(None if doc.get("unsessioned") else doc["session_id"])
            truth[key.agent or ""] += len(doc["rounds"])
        self.assertEqual(dict(by_agent), dict(truth))
        self.assertGreater(by_agent.get("main", 0), 0)

    def test_hostile_model_and_consumer_names_round_trip_through_escaping(self):
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        models = {labels["model"] for labels, _ in fam["asm_rounds_total"]}
        consumers = {labels["consumer"] for labels, _ in fam["asm_rounds_total"]}
        for m in self.hostile[:3]:
            self.assertIn(m, models)
        self.assertIn('con"sumer\\', consumers)

    def test_no_series_is_labelled_by_session(self):
        text = self.scrape().body.decode("utf-8")
        fam = parse_exposition(text)
        names = {k for samples in fam.values() for labels, _ in samples for k in labels}
        self.assertLessEqual(names, {"model", "consumer", "agent", "kind", "version",
                                     "pricing_epoch"})
        for doc in load_store(self.out).values():
            if not doc.get("unsessioned"):
                self.assertNotIn(doc["session_id"], text)
        # Series grow with models x consumers, never with sessions.
        self.assertLess(len(fam["asm_rounds_total"]), len(load_store(self.out)))

    def test_health_reports_passes_lines_bad_lines_and_bytes_behind(self):
        write_lines(self.log, [b"not json at all\n", b'{"ai_log": "{"}\n'])
        ingest(self.out, self.log)
        write_lines(self.log, [b"x" * 1000 + b"\n"])   # written, not read yet
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(fam["asm_passes_total"][0][1], state["counters"]["passes"])
        self.assertEqual(fam["asm_lines_read_total"][0][1], state["counters"]["lines_read"])
        bad = {labels["kind"]: v for labels, v in fam["asm_bad_lines_total"]}
        self.assertEqual(bad, {k: float(v) for k, v in state["counters"]["bad_lines"].items()})
        self.assertEqual(sum(bad.values()), 2)
        self.assertEqual(fam["asm_bytes_behind"][0][1], 1001)
        self.assertAlmostEqual(fam["asm_last_pass_timestamp_seconds"][0][1], time.time(), delta=120)
        self.assertEqual(fam["asm_alerts_sent_total"][0][1], 0)

    def test_what_an_operator_alerts_on_comes_from_the_state_counters(self):
        # Rounds the monitor stored and lines with no ai_log (the ai-statistics plugin
        # switched off shows as non-AI lines rising while rounds stop), rounds stored with
        # a flag, and file events (a log unreadable, refused, truncated, lines lost),
        # each by kind: every one equals .state.json's counter, across passes.
        from tests.test_forgery import PAYLOADS, inject
        write_lines(self.log, [b'{"ai_log":"-","start_time":"2026-02-01T10:00:00Z"}\n'] * 7
                    + [inject(n, {"user_agent": PAYLOADS["second_ai_log"]}) for n in range(3)]
                    + [b'{"ai_log":"{\\"session_id\\":\\"x\\",\\"input_token\\":1}"}\n'])
        ingest(self.out, self.log)
        write_lines(self.log, [hostile_line(99, "gpt-4o", "alice", "after-truncation")], "wb")
        ingest(self.out, self.log)
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        c = json.loads((self.out / ".state.json").read_text())["counters"]
        self.assertEqual(fam["asm_stored_rounds_total"], [({}, c["rounds_stored"])])
        self.assertEqual(fam["asm_non_ai_lines_total"], [({}, c["non_ai_lines"])])
        self.assertGreaterEqual(c["non_ai_lines"], 7)
        for family, group in (("asm_round_warnings_total", "warnings"),
                              ("asm_file_events_total", "file_events")):
            got = {labels["kind"]: v for labels, v in fam[family]}
            self.assertEqual(got, {k: float(v) for k, v in c[group].items()}, family)
        self.assertIn("forged", dict((l["kind"], v) for l, v in fam["asm_round_warnings_total"]))
        self.assertIn("time_from_read",
                      dict((l["kind"], v) for l, v in fam["asm_round_warnings_total"]))
        self.assertTrue(c["file_events"], c)
        # Hostile state values never become samples a scraper chokes on.
        state = json.loads((self.out / ".state.json").read_text())
        state["counters"].update(rounds_stored="12", non_ai_lines=True,
                                 warnings={"a\nb\"c": 2**70, "ok": -1, "x": "3"},
                                 file_events=[1, 2])
        (self.out / ".state.json").write_text(json.dumps(state))
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        self.assertEqual(fam["asm_stored_rounds_total"], [({}, 0)])
        self.assertEqual(fam["asm_non_ai_lines_total"], [({}, 0)])
        self.assertNotIn("asm_file_events_total", {k for k, v in fam.items() if v})

    def test_alert_delivery_counts_come_from_the_state(self):
        state = json.loads((self.out / ".state.json").read_text())
        state["alerts"]["counts"] = {"sent": 5, "failed": 2}
        (self.out / ".state.json").write_text(json.dumps(state))
        fam = parse_exposition(self.scrape().body.decode("utf-8"))
        self.assertEqual(fam["asm_alerts_sent_total"][0][1], 5)
        self.assertEqual(fam["asm_alerts_failed_total"][0][1], 2)

    def test_a_corrupt_state_file_still_serves_the_usage_counters(self):
        (self.out / ".state.json").write_bytes(b"\xff{not json")
        response = self.scrape()
        self.assertEqual(response.status, 200)
        fam = parse_exposition(response.body.decode("utf-8"))
        self.assertEqual(fam["asm_last_pass_timestamp_seconds"][0][1], 0)
        self.assertTrue(fam["asm_rounds_total"])

    def test_the_token_is_needed_when_one_is_set_and_a_signed_link_does_not_open_it(self):
        app = WebApp(self.out, token=TOKEN, link_secret="s" * 32)
        self.assertEqual(self.scrape(app).status, 401)
        self.assertEqual(self.scrape(app, {"Authorization": "Bearer wrong"}).status, 401)
        self.assertEqual(self.scrape(app, {"Authorization": f"Bearer {TOKEN}"}).status, 200)
        r = app.handle("GET", "/metrics?id=h1&sig=abc&exp=99999999999", {"Host": "127.0.0.1:0"})
        self.assertEqual(r.status, 401)

    def test_the_counters_follow_new_rounds_exactly_with_max_lag_0(self):
        app = WebApp(self.out, max_lag=0)
        before = parse_exposition(self.scrape(app).body.decode())
        write_lines(self.log, [hostile_line(50, "late-model", "bob", "late")])
        ingest(self.out, self.log)
        after = parse_exposition(self.scrape(app).body.decode())
        self.assertEqual(rounds(after), rounds(before) + 1)

    def test_after_a_commit_a_scrape_gets_the_last_value_and_a_later_one_the_new(self):
        app = WebApp(self.out)   # default: recomputed in the background after a change
        before = rounds(parse_exposition(self.scrape(app).body.decode()))
        write_lines(self.log, [hostile_line(51, "late-model", "bob", "late")])
        ingest(self.out, self.log)
        first = rounds(parse_exposition(self.scrape(app).body.decode()))
        self.assertIn(first, (before, before + 1))   # never lower: counters do not go back
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if rounds(parse_exposition(self.scrape(app).body.decode())) == before + 1:
                break
            time.sleep(0.05)
        else:
            self.fail("the background refresh never served the new round")

    def test_a_flood_of_client_chosen_model_names_is_folded_not_a_series_each(self):
        from agent_session_monitor.web import metrics as m
        old = m.MAX_LABEL_SETS
        m.MAX_LABEL_SETS = 10
        self.addCleanup(setattr, m, "MAX_LABEL_SETS", old)
        write_lines(self.log, [hostile_line(i % 60, f"model-{i}", "flood", f"flood-{i}")
                               for i in range(200)])
        ingest(self.out, self.log)
        fam = parse_exposition(self.scrape(WebApp(self.out, max_lag=0)).body.decode())
        self.assertEqual(len(fam["asm_rounds_total"]), 10)
        self.assertEqual(len(fam["asm_tokens_total"]), 10 * 5)
        folded = fam["asm_label_sets_folded"][0][1]
        self.assertGreater(folded, 190)
        # Nothing is lost: the totals are the store's.
        truth = store_truth(self.out)
        self.assertEqual(rounds(fam), sum(t["rounds"] for t in truth.values()))
        self.assertEqual(sum(v for l, v in fam["asm_tokens_total"] if l["kind"] == "input"),
                         sum(t["input"] for t in truth.values()))
        other = [l for l, _ in fam["asm_rounds_total"] if l["model"] == m.OTHER]
        self.assertEqual(len(other), 1)

    def test_promtool_accepts_the_exposition(self):
        require_tool(self, "promtool")
        result = subprocess.run(["promtool", "check", "metrics"], input=self.scrape().body,
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_without_a_store_only_health_is_served(self):
        response = WebApp(self.tmp / "none").handle("GET", "/metrics", {"Host": "127.0.0.1:0"})
        self.assertEqual(response.status, 200)
        fam = parse_exposition(response.body.decode())
        self.assertNotIn("asm_rounds_total", fam)
        self.assertIn("asm_last_pass_timestamp_seconds", fam)


def rounds(fam: dict) -> float:
    return sum(v for _, v in fam["asm_rounds_total"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealPrometheus(TempDirTest):
    """A real Prometheus (Debian's package) scrapes the server and reads the values back
    through its HTTP query API."""

    def test_prometheus_scrapes_and_its_query_api_returns_the_store_totals(self):
        require_tool(self, "prometheus")
        gen = loggen.generate(seed=7, sessions=25, max_requests=10)
        log = self.tmp / "access.log"
        write_lines(log, gen.lines, "wb")
        ingest(self.out, log)
        server = make_server(self.out, "127.0.0.1", 0, token=TOKEN, max_lag=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        port = server.server_address[1]
        prom_port = free_port()
        config = self.tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: asm\n"
            f"    authorization:\n      credentials: {TOKEN}\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
        prom_log = open(self.tmp / "prom.log", "wb")
        self.addCleanup(prom_log.close)
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=prom_log)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)

        def query(expr: str) -> list:
            url = (f"http://127.0.0.1:{prom_port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": expr}))
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]

        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline:
            try:
                result = query("sum(asm_rounds_total)")
            except OSError:
                result = []
            if result:
                break
            if proc.poll() is not None:
                self.fail("prometheus exited: " + (self.tmp / "prom.log").read_text()[-2000:])
            time.sleep(0.5)
        self.assertTrue(result, "no scrape within 60 s: "
                        + (self.tmp / "prom.log").read_text()[-2000:])
        up = query('up{job="asm"}')
        self.assertEqual(up[0]["value"][1], "1")
        truth = store_truth(self.out)
        self.assertEqual(float(result[0]["value"][1]), sum(t["rounds"] for t in truth.values()))
        cost = float(query("sum(asm_cost_usd_total)")[0]["value"][1])
        self.assertAlmostEqual(cost, math.fsum(e.cost_usd for e in gen.events
                                               if e.cost_usd is not None), places=9)
        by_kind = {r["metric"]["kind"]: float(r["value"][1])
                   for r in query("sum by (kind) (asm_tokens_total)")}
        for kind in KINDS:
            self.assertEqual(by_kind[kind], sum(t[kind] for t in truth.values()), kind)
        by_model = {r["metric"].get("model", ""): float(r["value"][1])
                    for r in query("sum by (model) (asm_unpriced_rounds_total)")}
        self.assertEqual(by_model.get(loggen.UNPRICED_MODEL, 0),
                         sum(t["unpriced"] for k, t in truth.items() if k[0] == loggen.UNPRICED_MODEL))
        # What the report quotes: the values read back.
        if os.environ.get("ASM_SHOW_PROMETHEUS"):
            print("prometheus read back:", result, cost, by_kind)


if __name__ == "__main__":
    unittest.main()
