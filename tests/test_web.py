"""The web UI: every route, status codes, headers, escaping of hostile content, the access
token, the Host check, signed per-session links, timeouts and limits.

Servers run in-process on 127.0.0.1, port 0, in a thread, queried with http.client
(CPython's test_httpservers way). The store is made by the real monitor from the shared
fixture plus a log of hostile requests written here (``build_store``, also used by
test_browser.py and tools/screenshots.py).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from html.parser import HTMLParser
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock
from urllib.parse import quote

from tests.helpers import DATA, ROOT, TempDirTest

from agent_session_monitor.store import index as index_module
from agent_session_monitor import links
from agent_session_monitor.web import session_view, views, server as web
from agent_session_monitor.reports import reader as report, records
from agent_session_monitor.errors import MonitorError

AGENT = "agent:main:discord:channel:1465367993012981988"
FIXTURE_HOSTILE_ID = "../../tmp/pwned"
FIXTURE_HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
# Scripts that would leave a trace a test (or a browser's DOM dump) can see.
HOSTILE_ID = "x\"'><script>document.title='PWNED-ID'</script>&amp;"
HOSTILE_MODEL = "<img src=x onerror=\"document.body.setAttribute('data-pwned','model')\">"
SCRIPT_PROMPT = "<script>document.title='PWNED-PROMPT'</script> what is 2+2?"
TOOL_ARGUMENT = "</script><script>document.body.setAttribute('data-pwned','tool')</script>"
TOOL_RESULT = "<svg onload=\"document.body.setAttribute('data-pwned','result')\"></svg>"
ANSWER = "</pre><img src=x onerror=\"document.body.setAttribute('data-pwned','answer')\">4"
REASONING = "<b onmouseover=alert(1)>thinking</b> about <iframe src=javascript:alert(1)>"
UNICODE_ID = "sessão/日本\u202etxt.exe"
LINK_SECRET = "test-link-secret-0123456789"
TOKEN = "test-token-abcdefghijklmnop"


def _line(ai: dict, start: datetime, request_id: str) -> bytes:
    outer = {"ai_log": json.dumps(ai, ensure_ascii=False), "request_id": request_id,
             "start_time": start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z",
             "path": "/v1/chat/completions", "response_code": "200"}
    return json.dumps(outer, ensure_ascii=False).encode() + b"\n"


def hostile_lines(now: datetime) -> list[bytes]:
    """A two-round tool loop whose id, model, prompt, tool call, tool result, answer and
    reasoning all carry markup; and a session with a non-ASCII, slash-bearing id."""
    system = {"role": "system", "content": "You are a test agent."}
    user = {"role": "user", "content": SCRIPT_PROMPT}
    call = {"id": "call_<x>", "type": "function",
            "function": {"name": "run<script>", "arguments": json.dumps({"cmd": TOOL_ARGUMENT})}}
    first = {"session_id": HOSTILE_ID, "model": HOSTILE_MODEL, "input_token": 120,
             "output_token": 30, "messages": [system, user], "question": SCRIPT_PROMPT,
             "answer": None, "reasoning": REASONING, "tool_calls": [call],
             "response_type": "normal", "chat_round": 1, "consumer": "<b>mallory</b>"}
    second_messages = [system, user, {"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "call_<x>", "content": TOOL_RESULT}]
    second = {"session_id": HOSTILE_ID, "model": "gpt-4o", "input_token": 180, "output_token": 12,
              "messages": second_messages, "question": TOOL_RESULT, "answer": ANSWER,
              "reasoning": None, "tool_calls": [], "response_type": "normal", "chat_round": 1,
              "consumer": "<b>mallory</b>"}
    third = {"session_id": UNICODE_ID, "model": "gpt-4o-mini", "input_token": 50,
             "output_token": 5, "messages": [{"role": "user", "content": "olá"}],
             "question": "olá", "answer": "oi"}
    return [_line(first, now - timedelta(days=1, minutes=3), "req-hostile-1"),
            _line(second, now - timedelta(days=1, minutes=2), "req-hostile-2"),
            _line(third, now - timedelta(days=2), "req-unicode-1")]


def build_store(out: Path, work: Path, *, demo_sessions: int = 0, seed: int = 7) -> None:
    """Run the monitor over the shared fixture, the hostile log and (optionally) a
    generated log of ``demo_sessions`` recent sessions, into ``out``."""
    from agent_session_monitor.monitor_cli import main as monitor_main

    now = datetime.now(timezone.utc)
    work.mkdir(parents=True, exist_ok=True)
    logs = [DATA / "higress-realistic.log"]
    hostile = work / "hostile.log"
    hostile.write_bytes(b"".join(hostile_lines(now)))
    logs.append(hostile)
    if demo_sessions:
        from tests import loggen

        start = (now - timedelta(days=13)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [line for line, _event, _kind in loggen.iter_records(
            seed, sessions=demo_sessions, max_requests=24, start=start,
            session_gap_s=12 * 86400 / max(demo_sessions, 1))]
        demo = work / "demo.log"
        demo.write_bytes(b"".join(lines))
        logs.append(demo)
    for log in logs:
        code = monitor_main(["--log-path", str(log), "--output-dir", str(out), "--allow-log-dir",
                             str(log.parent), "--quiet"], out=io.StringIO(), err=io.StringIO())
        if code != 0:
            raise RuntimeError(f"monitor failed on {log} with exit {code}")


class Markup(HTMLParser):
    """Every element and attribute of a page, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


# The elements the renderer writes; anything else in a page came from data.
OWN_TAGS = {"html", "head", "meta", "title", "link", "script", "body", "header", "div", "span",
            "a", "main", "h1", "h2", "h3", "p", "section", "svg", "rect", "line", "polyline",
            "text", "circle", "ul", "li", "table", "caption", "thead", "tbody", "tfoot", "tr",
            "th", "td", "form", "label", "input", "select", "option", "button", "nav", "dl",
            "dt", "dd", "code", "article", "details", "summary", "pre"}


def assert_inert(test: unittest.TestCase, page: str) -> None:
    """No element, handler, inline script or style that the renderer did not write."""
    tags = Markup(page).tags
    test.assertLessEqual({t for t, _ in tags}, OWN_TAGS)
    scripts = [a for t, a in tags if t == "script"]
    test.assertEqual(len(scripts), 1)
    test.assertTrue(scripts[0]["src"].startswith("/static/app.js"))
    for tag, attrs in tags:
        for name, value in attrs.items():
            test.assertFalse(name.startswith("on"), (tag, name))
            test.assertNotEqual(name, "style", tag)
            if name in ("href", "src", "action"):
                test.assertRegex(value, r"^(/(?!/)|#|\?)", (tag, name, value))


class Running:
    """A server in a thread, stopped by :meth:`close`."""

    def __init__(self, data_dir: Path, **options) -> None:
        options.setdefault("log", None)
        self.server = web.make_server(data_dir, "127.0.0.1", 0, **options)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def request(self, path: str, headers: dict | None = None, method: str = "GET",
                host: str | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            if host != "":
                conn.putheader("Host", host or f"127.0.0.1:{self.port}")
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request(path, **kw)

    def json(self, path: str, **kw) -> tuple[int, object]:
        status, _headers, body = self.request(path, **kw)
        return status, json.loads(body)


def session_path(session_id: str, **params: str) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {"id": session_id, **params}.items())
    return f"/session?{query}"


def signed(session_id: str, ttl: int | None = None, api: bool = False) -> str:
    link = links.session_url(session_id, "http://127.0.0.1:1", LINK_SECRET, ttl)
    path = link[len("http://127.0.0.1:1"):]
    return path.replace("/session?", "/api/session?", 1) if api else path


class StoreCase(unittest.TestCase):
    """One store for the class (the monitor runs once), servers per class."""

    servers: dict[str, Running]

    @classmethod
    def setUpClass(cls) -> None:
        base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
        os.makedirs(base, exist_ok=True)
        cls.tmp = Path(tempfile.mkdtemp(prefix="web-", dir=base))
        cls.store = cls.tmp / "sessions"
        build_store(cls.store, cls.tmp / "logs")
        cls.open = Running(cls.store, link_secret=LINK_SECRET)
        cls.locked = Running(cls.store, token=TOKEN, link_secret=LINK_SECRET)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.open.close()
        cls.locked.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def html(self, path: str, server: Running | None = None, status: int = 200, **kw) -> str:
        code, headers, body = (server or self.open).get(path, **kw)
        self.assertEqual(code, status, body[:500])
        self.assertEqual(headers["Content-Type"], "text/html; charset=utf-8")
        return body.decode("utf-8")


class Routes(StoreCase):
    def test_overview_has_cards_charts_tables_and_linked_sessions(self):
        page = self.html("/")
        for card in ("sessions", "rounds", "input", "output", "reasoning", "cached", "cost",
                     "unpriced"):
            self.assertIn(f'data-card="{card}"', page)
        self.assertIn('id="chart-cost"', page)
        self.assertIn('id="chart-models"', page)
        self.assertIn('<table id="t-models"', page)
        self.assertIn('<table id="t-consumers"', page)
        self.assertIn('<table id="t-sessions"', page)
        self.assertIn(f'href="/session?id={quote(AGENT, safe=":")}"', page)
        self.assertIn('name="q"', page)
        self.assertIn("$0.0194", page.replace("\n", ""))   # fixture cost, formatted as the CLI

    def test_overview_numbers_come_from_the_report_module(self):
        reader = report.StoreReader.open(self.store)
        try:
            totals = reader.totals()
        finally:
            reader.close()
        page = self.html("/")
        self.assertRegex(page, rf'data-card="sessions"><div class="label">Sessions</div>'
                               rf'<div class="value">{totals["sessions"]:,}<')
        self.assertIn(f'<div class="value">{totals["input"]:,}</div>', page)

    def test_session_page_shows_every_round_with_tool_call_result_and_context(self):
        page = self.html(session_path(AGENT))
        self.assertEqual(page.count('<article class="round"'), 2)
        self.assertIn("get_weather", page)
        self.assertIn("&quot;city&quot;: &quot;Beijing&quot;", page)  # pretty-printed arguments
        self.assertIn("Result (sent in round 2)", page)
        self.assertIn("{&quot;temp_c&quot;:15,&quot;sky&quot;:&quot;clear&quot;}", page)
        self.assertIn("Full context (4 messages)", page)
        self.assertIn("Messages new in this round (2, from #3)", page)
        self.assertIn('id="chart-rounds"', page)
        self.assertIn("Download JSON", page)
        self.assertIn("What&#x27;s the weather in Beijing? Answer &lt;short&gt; &amp; precise.", page)

    def test_session_page_suggests_cheaper_models_and_badges_anomalous_rounds(self):
        page = self.html(session_path(AGENT))
        panel = page[page.index('id="p-insights"') - 40:page.index('id="rounds"')]
        self.assertNotIn("hidden", panel[:80])
        self.assertIn("Same tokens on cheaper models (actual: $0.008365)", panel)
        self.assertIn('<table id="t-suggest"', panel)
        status, data = self.open.json("/api/session?view=1&id=" + quote(AGENT))
        self.assertTrue(data["view"]["insights"]["suggestions"]["rows"])
        fake = {"anomalies": [{"kind": "loop", "badge": "<LOOP>", "round": 2, "severity": "high",
                               "explanation": "same <call> 3 times"}],
                "suggestions": [], "suggestions_basis": "", "caveat": ""}
        doc = self.open.json("/api/session?id=" + quote(AGENT))[1]
        view = session_view.session_page(doc, insights=fake)
        self.assertEqual([r["badges"] for r in view["rounds"]], [[], ["<LOOP>"]])
        from agent_session_monitor.web import render_html, render_session
        html = render_session.session_page(render_html.PageContext(), view)
        self.assertIn('<span class="tag warn">&lt;LOOP&gt;</span>', html)
        self.assertIn('<a href="#r2">round 2</a> same &lt;call&gt; 3 times', html)
        assert_inert(self, html)

    def test_overview_shows_the_burn_rate_from_the_index(self):
        page = self.html("/")
        self.assertIn('id="p-burn"', page)
        for card in ("burn-rate", "burn-today", "burn-projected", "burn-active"):
            self.assertIn(f'data-card="{card}"', page)
        status, data = self.open.json("/api/stats")
        self.assertEqual(set(data["burn"]), {"at", "window_minutes", "active_minutes", "recent",
                                             "today", "active_count", "active_sessions", "note"})

    def test_full_context_without_javascript_via_context_parameter(self):
        page = self.html(session_path(AGENT, context="2"))
        block = page[page.index('id="r2-context"'):]
        self.assertIn(" open", page[page.index('<details class="field ctx"'):page.index('id="r2-context"')])
        self.assertEqual(block.count('<div class="msg '), 4)

    def test_unpriced_round_says_unpriced_never_zero_dollars(self):
        page = self.html(session_path("long-session"))
        self.assertIn("unpriced", page)
        self.assertNotIn("$0.00<", page)
        self.assertIn("Messages (logged truncated by the gateway)", page)

    def test_unknown_session_is_a_404_page_with_close_matches(self):
        page = self.html(session_path("sess_claude_4"), status=404)
        self.assertIn("Unknown session", page)
        self.assertIn('href="/session?id=sess_claude_42"', page)
        self.assertNotIn("Traceback", page)

    def test_unknown_path_is_404_and_missing_id_is_400(self):
        self.html("/nope", status=404)
        self.html("/session", status=400)
        self.html("/static/../web.py", status=404)
        self.html("/static/app.js/", status=404)

    def test_api_sessions_pages_sorts_filters_and_searches(self):
        status, data = self.open.json("/api/sessions")
        self.assertEqual(status, 200)
        self.assertEqual(data["total"], 8)
        self.assertEqual(len(data["sessions"]), 8)
        self.assertEqual(set(data["sessions"][0]), {*records.session_record(
            {k: None for k in report.SESSION_COLUMNS}).keys(), "url"})
        _, page2 = self.open.json("/api/sessions?per_page=25&page=2")
        self.assertEqual(page2["page"], 1)   # clamped to the last page
        _, by_cost = self.open.json("/api/sessions?sort=cost")
        costs = [s["cost_usd"] or 0 for s in by_cost["sessions"]]
        self.assertEqual(costs, sorted(costs, reverse=True))
        _, found = self.open.json("/api/sessions?q=CLAUDE")
        self.assertEqual([s["session_id"] for s in found["sessions"]], ["sess_claude_42"])
        _, by_model = self.open.json("/api/sessions?model=qwen3-max")
        self.assertEqual([s["session_id"] for s in by_model["sessions"]], ["long-session"])
        _, by_consumer = self.open.json("/api/sessions?consumer=" + quote("<b>mallory</b>"))
        self.assertEqual([s["session_id"] for s in by_consumer["sessions"]], [HOSTILE_ID])
        _, view = self.open.json("/api/sessions?view=1&per_page=25")
        self.assertEqual(len(view["view"]["rows"]), 8)

    def test_api_session_is_the_stored_document_and_downloads_as_attachment(self):
        status, doc = self.open.json("/api/session?id=" + quote(AGENT))
        self.assertEqual(status, 200)
        self.assertEqual(doc["session_id"], AGENT)
        self.assertEqual(len(doc["rounds"]), 2)
        status, headers, body = self.open.get("/api/session?download=1&id=" + quote(AGENT))
        self.assertEqual(status, 200)
        self.assertRegex(headers["Content-Disposition"],
                         r'^attachment; filename="session-[A-Za-z0-9._-]+\.json"$')
        self.assertEqual(json.loads(body)["session_id"], AGENT)

    def test_api_session_view_after_n_sends_only_newer_rounds(self):
        _, data = self.open.json("/api/session?view=1&after=1&id=" + quote(AGENT))
        view = data["view"]
        self.assertEqual([r["n"] for r in view["rounds"]], [2])
        self.assertEqual(len(view["keys"]), 2)
        self.assertTrue(view["chart"]["shapes"])

    def test_api_session_context_is_the_rebuilt_request(self):
        _, data = self.open.json("/api/session?context=2&id=" + quote(AGENT))
        roles = [m["role"] for m in data["context"]["messages"]]
        self.assertEqual(roles, ["system", "user", "assistant", "tool"])
        self.assertEqual([m["new"] for m in data["context"]["messages"]], [False, False, True, True])
        status, _ = self.open.json("/api/session?context=9&id=" + quote(AGENT))
        self.assertEqual(status, 404)

    def test_api_stats_matches_the_report_aggregates(self):
        status, data = self.open.json("/api/stats?days=7")
        self.assertEqual(status, 200)
        reader = report.StoreReader.open(self.store)
        try:
            totals = records.usage_record(reader.totals(), "")
            models = [records.usage_record(r, "model") for r in reader.aggregate("model")]
        finally:
            reader.close()
        self.assertEqual(data["totals"], totals)
        self.assertEqual(data["by_model"], models)
        self.assertEqual(len(data["by_day"]), 7)
        self.assertIn({"model": FIXTURE_HOSTILE_MODEL, "rounds": 1}, data["unpriced_models"])
        self.assertNotIn("view", data)
        _, with_view = self.open.json("/api/stats?view=1")
        self.assertEqual([c["id"] for c in with_view["view"]["cards"]][:2], ["sessions", "rounds"])

    def test_api_errors_are_json(self):
        status, headers, body = self.open.get("/api/session?id=nope")
        self.assertEqual(status, 404)
        self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
        self.assertEqual(json.loads(body)["status"], 404)

    def test_healthz_and_static_files(self):
        status, headers, body = self.open.get("/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        status, headers, body = self.open.get("/static/app.js")
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "text/javascript; charset=utf-8")
        self.assertNotRegex(body, rb"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|"
                                  rb"\beval\(|new Function")
        status, headers, _ = self.open.get("/static/app.css")
        self.assertEqual(headers["Content-Type"], "text/css; charset=utf-8")
        page = self.html("/")
        for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', page):
            self.assertEqual(self.open.get(asset.replace("&amp;", "&"))[0], 200, asset)

    def test_head_sends_the_headers_of_get_without_a_body(self):
        _, get_headers, get_body = self.open.get("/")
        status, headers, body = self.open.request("/", method="HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers["Content-Length"], str(len(get_body)))

    def test_other_methods_are_405(self):
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE"):
            status, headers, _ = self.open.request("/", method=method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers["Allow"], "GET, HEAD")

    def test_is_a_threading_server(self):
        self.assertIsInstance(self.open.server, web.ThreadingHTTPServer)


class Headers(StoreCase):
    PATHS = ("/", session_path(AGENT), "/api/sessions", "/api/session?id=" + quote(AGENT),
             "/api/stats", "/healthz", "/static/app.js", "/static/app.css", "/nope",
             session_path("nope"), "/favicon.ico")

    def test_every_response_has_the_security_headers(self):
        for path in self.PATHS:
            for server in (self.open, self.locked):
                status, headers, _ = server.get(path)
                with self.subTest(path=path, status=status):
                    csp = headers["Content-Security-Policy"]
                    self.assertIn("script-src 'self'", csp)
                    self.assertNotIn("unsafe-inline", csp)
                    self.assertIn("default-src 'none'", csp)
                    self.assertIn("frame-ancestors 'none'", csp)
                    self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
                    self.assertEqual(headers["Referrer-Policy"], "no-referrer")
                    self.assertIsNotNone(headers["Content-Length"])
                    if status != 204:
                        self.assertIn("charset=utf-8", headers["Content-Type"])

    def test_parser_errors_have_the_headers_too(self):
        status, headers, _ = self.open.request("/" + "a" * 9000)
        self.assertEqual(status, 414)
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")

    def test_content_length_matches_the_body(self):
        for path in self.PATHS:
            _, headers, body = self.open.get(path)
            self.assertEqual(int(headers["Content-Length"]), len(body), path)

    def test_conversation_pages_and_api_are_not_stored(self):
        for path in ("/", session_path(AGENT), "/api/session?id=" + quote(AGENT),
                     "/api/sessions", "/api/stats", signed(AGENT)):
            _, headers, _ = self.open.get(path)
            self.assertEqual(headers["Cache-Control"], "no-store", path)

    def test_pages_have_no_inline_script_or_style(self):
        for path in ("/", session_path(AGENT), session_path(HOSTILE_ID), "/nope",
                     session_path(AGENT, context="2")):
            page = self.html(path, status=404 if path == "/nope" else 200)
            assert_inert(self, page)
            self.assertNotIn("<style", page)


class Escaping(StoreCase):
    def assert_no_markup_from_data(self, page: str) -> None:
        assert_inert(self, page)

    def test_fixture_hostile_id_and_model_are_inert_text_on_the_overview(self):
        page = self.html("/")
        self.assert_no_markup_from_data(page)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", page)
        self.assertIn(f'href="/session?id={quote(FIXTURE_HOSTILE_ID, safe="")}"', page)
        self.assertIn("../../tmp/pwned</a>", page)

    def test_hostile_session_id_is_escaped_in_text_attributes_and_links(self):
        page = self.html("/")
        self.assertIn("x&quot;&#x27;&gt;&lt;script&gt;document.title=&#x27;PWNED-ID&#x27;"
                      "&lt;/script&gt;&amp;amp;", page)
        self.assertIn(quote(HOSTILE_ID, safe=""), page)
        session = self.html(session_path(HOSTILE_ID))
        self.assert_no_markup_from_data(session)
        self.assertIn('data-api="/api/session?id=' + quote(HOSTILE_ID, safe=""), session)

    def test_script_prompt_tool_argument_result_answer_reasoning_are_escaped(self):
        page = self.html(session_path(HOSTILE_ID))
        self.assert_no_markup_from_data(page)
        self.assertIn("&lt;script&gt;document.title=&#x27;PWNED-PROMPT&#x27;&lt;/script&gt;", page)
        # </script> inside a tool argument, pretty-printed, stays text.
        self.assertIn("&lt;/script&gt;&lt;script&gt;document.body.setAttribute(", page)
        self.assertIn("run&lt;script&gt;", page)
        self.assertIn("&lt;svg onload=", page)
        self.assertIn("&lt;/pre&gt;&lt;img src=x onerror=", page)
        self.assertIn("&lt;b onmouseover=alert(1)&gt;thinking&lt;/b&gt;", page)
        self.assertIn("&lt;b&gt;mallory&lt;/b&gt;", page)
        self.assertIn("Result (sent in round 2)", page)

    def test_json_api_cannot_be_read_as_markup(self):
        for path in ("/api/session?id=" + quote(HOSTILE_ID), "/api/sessions", "/api/stats?view=1",
                     "/api/session?view=1&id=" + quote(HOSTILE_ID)):
            status, headers, body = self.open.get(path)
            self.assertEqual(status, 200)
            self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
            self.assertNotIn(b"<", body, path)
            self.assertNotIn(b">", body, path)
        _, doc = self.open.json("/api/session?id=" + quote(HOSTILE_ID))
        self.assertEqual(doc["session_id"], HOSTILE_ID)   # still the same data once parsed

    def test_non_ascii_and_bidi_id_round_trips_through_its_link(self):
        page = self.html("/")
        href = f'/session?id={quote(UNICODE_ID, safe="")}'
        self.assertIn(f'href="{href}"', page)
        session = self.html(href)
        self.assertIn("sessão/日本", session)


class Storage(StoreCase):
    def test_overview_reads_the_index_not_the_session_files(self):
        calls = []
        real_report, real_index = report.read_document, index_module.read_document

        def counting(real):
            def read(path):
                calls.append(Path(path).name)
                return real(path)
            return read

        with mock.patch.object(report, "read_document", counting(real_report)), \
                mock.patch.object(index_module, "read_document", counting(real_index)):
            self.html("/")
            self.open.json("/api/stats?view=1")
            self.open.json("/api/sessions")
            self.assertEqual(calls, [])
            self.html(session_path(AGENT))
            self.assertEqual(len(calls), 1)

    def test_nothing_outside_the_data_directory_is_read(self):
        outside = self.tmp / "secret.json"
        outside.write_text(json.dumps({"session_id": "../secret", "rounds": []}))
        for sid in ("../secret", "../secret.json", "/etc/passwd", "..", ".state", ".index.sqlite",
                    "..\\secret", "%2e%2e/secret"):
            status, _, body = self.open.get(session_path(sid))
            self.assertEqual(status, 404, sid)
            self.assertNotIn(b"rounds", body)
        self.assertEqual(self.open.get("/static/..%2fweb.py")[0], 404)
        self.assertEqual(self.open.get("/static//etc/passwd")[0], 404)


class FreshData(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.store = self.out

    def test_new_sessions_appear_on_the_next_request(self):
        from tests.helpers import make_line
        from agent_session_monitor.monitor_cli import main as monitor_main

        log = self.tmp / "access.log"
        log.write_bytes(make_line(1, session="first"))
        argv = ["--log-path", str(log), "--output-dir", str(self.store), "--allow-log-dir",
                str(self.tmp), "--quiet"]
        self.assertEqual(monitor_main(argv, out=io.StringIO(), err=io.StringIO()), 0)
        server = Running(self.store)
        self.addCleanup(server.close)
        self.assertEqual(server.json("/api/sessions")[1]["total"], 1)
        with open(log, "ab") as f:
            f.write(make_line(2, session="second"))
        self.assertEqual(monitor_main(argv, out=io.StringIO(), err=io.StringIO()), 0)
        self.assertEqual(server.json("/api/sessions")[1]["total"], 2)
        self.assertEqual(server.get(session_path("second"))[0], 200)

    def _monitor(self, *lines: bytes) -> None:
        from agent_session_monitor.monitor_cli import main as monitor_main

        log = self.tmp / "access.log"
        with open(log, "ab") as f:
            f.writelines(lines)
        argv = ["--log-path", str(log), "--output-dir", str(self.store), "--allow-log-dir",
                str(self.tmp), "--quiet"]
        self.assertEqual(monitor_main(argv, out=io.StringIO(), err=io.StringIO()), 0)

    def test_overview_aggregates_are_computed_once_while_the_index_is_unchanged(self):
        from tests.helpers import make_line

        self._monitor(make_line(1, session="first"))
        server = Running(self.store, max_lag=0)
        self.addCleanup(server.close)
        real = views.overview_data
        with mock.patch.object(views, "overview_data", side_effect=real) as computed:
            for path in ("/", "/", "/api/stats", "/api/stats?view=1"):
                self.assertEqual(server.get(path)[0], 200)
            self.assertEqual(computed.call_count, 1)
            self._monitor(make_line(2, session="second"))
            server.get("/")
            self.assertEqual(computed.call_count, 2)

    def test_with_no_lag_allowed_every_commit_shows_at_once(self):
        from tests.helpers import make_line

        self._monitor(make_line(1, session="first"))
        server = Running(self.store, max_lag=0)
        self.addCleanup(server.close)
        self.assertEqual(server.json("/api/stats")[1]["totals"]["sessions"], 1)
        self._monitor(make_line(2, session="second"))
        self.assertEqual(server.json("/api/stats")[1]["totals"]["sessions"], 2)

    def test_within_the_lag_the_previous_totals_are_served_while_new_ones_are_computed(self):
        from tests.helpers import make_line

        self._monitor(make_line(1, session="first"))
        server = Running(self.store, max_lag=60)
        self.addCleanup(server.close)
        self.assertEqual(server.json("/api/stats")[1]["totals"]["sessions"], 1)
        self._monitor(make_line(2, session="second"))
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline:
            seen.append(server.json("/api/stats")[1]["totals"]["sessions"])
            if seen[-1] == 2:
                break
            time.sleep(0.05)
        self.assertEqual(seen[-1], 2)       # the background computation landed
        self.assertEqual(sorted(set(seen)), sorted(set(seen), key=seen.index))  # never back
        # The session list is never cached: it is right on the first request.
        self.assertEqual(server.json("/api/sessions")[1]["total"], 2)

    def test_a_store_without_index_is_still_served(self):
        build_store(self.store, self.tmp / "logs")
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.store / ".index.sqlite") + suffix).unlink(missing_ok=True)
        server = Running(self.store)
        self.addCleanup(server.close)
        self.assertEqual(server.json("/api/sessions")[1]["total"], 8)
        self.assertEqual(server.get(session_path(AGENT))[0], 200)

    def test_a_missing_store_is_a_clear_503_not_a_traceback(self):
        server = Running(self.tmp / "nowhere")
        self.addCleanup(server.close)
        status, _, body = server.get("/")
        self.assertEqual(status, 503)
        self.assertIn(b"run main.py first", body)
        self.assertEqual(server.get("/healthz")[0], 503)


class AccessToken(StoreCase):
    def test_non_loopback_bind_without_token_refuses_to_start(self):
        for host in ("0.0.0.0", "::", "192.0.2.10", "example.com"):
            with self.assertRaises(MonitorError) as caught:
                web.make_server(self.store, host, 0)
            self.assertEqual(caught.exception.exit_code, 2)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("AGENT_SESSION_MONITOR_TOKEN", None)
            code = web.main(["--host", "0.0.0.0", "--port", "0", "--data-dir", str(self.store)])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.getvalue().strip().splitlines()), 1)
        self.assertIn("--token", err.getvalue())

    def test_non_loopback_bind_with_token_from_the_environment_starts(self):
        with mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_TOKEN": TOKEN}):
            server = web.make_server(self.store, "0.0.0.0", 0,
                                     token=os.environ["AGENT_SESSION_MONITOR_TOKEN"])
        server.server_close()

    def test_without_token_every_page_needs_it(self):
        for path in ("/", session_path(AGENT), "/api/sessions", "/api/stats",
                     "/api/session?id=" + quote(AGENT)):
            status, headers, body = self.locked.get(path)
            self.assertEqual(status, 401, path)
            if path.startswith("/api/"):
                self.assertEqual(headers["WWW-Authenticate"], 'Bearer realm="agent-session-monitor"')
            else:
                self.assertIn(b'name="token"', body)
                for secret in (b"get_weather", b"3,730", b"sess_claude_42", b"$0.0"):
                    self.assertNotIn(secret, body)
        self.assertEqual(self.locked.get("/healthz")[0], 200)
        self.assertEqual(self.locked.get("/static/app.css")[0], 200)

    def test_bearer_token_is_checked(self):
        self.assertEqual(self.locked.get("/", headers={"Authorization": f"Bearer {TOKEN}"})[0], 200)
        for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}",
                      "Bearer ünïcode"):
            self.assertEqual(self.locked.get("/", headers={"Authorization": wrong})[0], 401, wrong)

    def test_token_in_query_becomes_a_strict_httponly_cookie_and_leaves_the_url(self):
        status, headers, body = self.locked.get(session_path(AGENT, token=TOKEN))
        self.assertEqual(status, 200)
        page = body.decode()
        target = f"/session?id={quote(AGENT, safe='')}"
        self.assertIn(f'<meta http-equiv="refresh" content="0;url={target}">', page)
        self.assertIn(f'<a href="{target}">Continue</a>', page)
        self.assertNotIn(TOKEN, page)
        cookie = headers["Set-Cookie"]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        self.assertIn("Path=/", cookie)
        self.assertNotIn(TOKEN, cookie)
        value = cookie.split(";")[0]
        self.assertEqual(self.locked.get("/", headers={"Cookie": value})[0], 200)
        self.assertEqual(self.locked.get("/", headers={"Cookie": "other=1; " + value})[0], 200)
        self.assertEqual(self.locked.get("/", headers={"Cookie": value + "0"})[0], 401)
        self.assertEqual(self.locked.get("/?token=wrong")[0], 401)

    def test_the_token_never_reaches_the_log(self):
        log = io.StringIO()
        server = Running(self.store, token=TOKEN, log=log)
        self.addCleanup(server.close)
        server.get(f"/?token={TOKEN}")
        server.get(signed(AGENT))
        self.assertNotIn(TOKEN, log.getvalue())
        self.assertNotIn(signed(AGENT).split("sig=")[1], log.getvalue())
        self.assertIn("[redacted]", log.getvalue())

    def test_host_header_is_checked_against_dns_rebinding(self):
        port = self.open.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            self.assertEqual(self.open.get("/", host=host)[0], 200, host)
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}",
                     "127.0.0.1", f"localhost.evil.example:{port}", f"10.0.0.1:{port}",
                     "", "a b", f"[::1]x:{port}"):
            status, _, body = self.open.get("/", host=host)
            self.assertEqual(status, 400, host)
            self.assertNotIn(b"1465367993012981988", body)

    def test_ipv6_loopback_bind_answers_for_its_bracketed_host(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6 on this machine")
        try:
            server = web.make_server(self.store, "::1", 0, log=None)
        except OSError as e:
            self.skipTest(f"cannot bind ::1: {e}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        port = server.server_address[1]
        for host, status in ((f"[::1]:{port}", 200), (f"localhost:{port}", 200),
                             (f"[::2]:{port}", 400), ("evil.example", 400)):
            conn = http.client.HTTPConnection("::1", port, timeout=5)
            conn.putrequest("GET", "/healthz", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            self.assertEqual(conn.getresponse().status, status, host)
            conn.close()

    def test_allowed_host_option_adds_names(self):
        # A proxy's name makes the server reachable from elsewhere: it needs the token.
        server = Running(self.store, token=TOKEN,
                         allowed_hosts=["monitor.example.com", "proxy.example:8443"])
        self.addCleanup(server.close)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        self.assertEqual(server.get("/", host="monitor.example.com", headers=auth)[0], 200)
        self.assertEqual(server.get("/", host="monitor.example.com:443", headers=auth)[0], 200)
        self.assertEqual(server.get("/", host="proxy.example:8443", headers=auth)[0], 200)
        self.assertEqual(server.get("/", host="proxy.example:8444", headers=auth)[0], 400)
        self.assertEqual(server.get("/", host="evil.example", headers=auth)[0], 400)


class SignedLinks(StoreCase):
    def test_a_valid_link_opens_that_session_page_and_json_only(self):
        page = self.html(signed(AGENT), server=self.locked)
        self.assertIn("get_weather", page)
        self.assertNotIn("← Overview", page)
        self.assertIn("&amp;sig=", page)        # the page's own links and API carry it
        status, data = self.locked.json(signed(AGENT, api=True))
        self.assertEqual((status, data["session_id"]), (200, AGENT))
        status, data = self.locked.json(signed(AGENT, api=True) + "&view=1&after=0")
        self.assertEqual(len(data["view"]["rounds"]), 2)
        status, data = self.locked.json(signed(AGENT, api=True) + "&context=2")
        self.assertEqual(status, 200)
        status, headers, _ = self.locked.get(signed(AGENT, api=True) + "&download=1")
        self.assertEqual(status, 200)
        self.assertIn("attachment", headers["Content-Disposition"])

    def test_an_expiring_link_works_until_it_expires(self):
        self.assertEqual(self.locked.get(signed(AGENT, ttl=3600))[0], 200)
        expired = links.session_url(AGENT, "http://h", LINK_SECRET, ttl_seconds=-10)[len("http://h"):]
        status, _, body = self.locked.get(expired)
        self.assertEqual(status, 403)
        self.assertIn(b"expired", body)
        self.assertNotIn(b"get_weather", body)

    def test_a_tampered_link_is_refused(self):
        good = signed(AGENT, ttl=3600)
        sig = good.split("sig=")[1]
        flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        longer_exp = re.sub(r"exp=(\d+)", lambda m: f"exp={int(m.group(1)) + 86400}", good)
        for path in (good.replace(sig, flipped), longer_exp, good.split("&exp=")[0] + "&sig=" + sig,
                     good.replace("sig=", "sig=00"), good + "&id=other",
                     good.replace("id=", "id=other&id=", 1)):
            status, _, body = self.locked.get(path)
            self.assertIn(status, (400, 401, 403), path)
            self.assertNotIn(b"get_weather", body)

    def test_a_link_for_one_session_opens_no_other(self):
        sig_part = signed(AGENT).split("&", 1)[1]
        other = session_path("sess_claude_42") + "&" + sig_part
        status, _, body = self.locked.get(other)
        self.assertEqual(status, 403)
        self.assertNotIn(b"summarise the repo", body)
        status, _ = self.locked.json("/api/session?id=sess_claude_42&" + sig_part)
        self.assertEqual(status, 403)

    def test_a_link_opens_neither_the_overview_nor_the_lists(self):
        sig_part = signed(AGENT).split("&", 1)[1]
        for path in ("/?" + "id=" + quote(AGENT) + "&" + sig_part, "/api/sessions?" + sig_part,
                     "/api/stats?id=" + quote(AGENT) + "&" + sig_part):
            status, _, body = self.locked.get(path)
            self.assertEqual(status, 401, path)
            self.assertNotIn(b"sess_claude_42", body)

    def test_a_link_for_an_unknown_session_is_404_without_suggestions(self):
        status, _, body = self.locked.get(signed("sess_claude_4"))
        self.assertEqual(status, 404)
        self.assertNotIn(b"sess_claude_42", body)

    def test_links_need_a_secret_on_the_server(self):
        server = Running(self.store, token=TOKEN)
        self.addCleanup(server.close)
        status, _, body = server.get(signed(AGENT))
        self.assertEqual(status, 403)
        self.assertIn(b"no link secret", body)


class Connections(StoreCase):
    def test_a_silent_connection_is_closed_after_the_timeout(self):
        server = Running(self.store, timeout=0.5)
        self.addCleanup(server.close)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # never finishes
            started = time.monotonic()
            self.assertEqual(sock.recv(1024), b"")
            self.assertLess(time.monotonic() - started, 3)

    def test_a_slow_client_does_not_block_others(self):
        with socket.create_connection(("127.0.0.1", self.open.port), timeout=5) as sock:
            sock.sendall(b"GET / HTT")
            started = time.monotonic()
            self.assertEqual(self.open.get("/healthz")[0], 200)
            self.assertLess(time.monotonic() - started, 2)

    def test_connection_limit_answers_503_beyond_it(self):
        server = Running(self.store, max_connections=1, timeout=2, admit_wait=0.3)
        self.addCleanup(server.close)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HT")
            time.sleep(0.2)
            started = time.monotonic()
            self.assertEqual(server.get("/healthz")[0], 503)
            # It waited for a slot first, and no longer than it was told to.
            self.assertGreaterEqual(time.monotonic() - started, 0.3)

    def test_a_client_arriving_as_a_slot_frees_is_served_not_refused(self):
        server = Running(self.store, max_connections=1, timeout=5, admit_wait=3)
        self.addCleanup(server.close)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"GET / HT")
        time.sleep(0.2)
        # The only slot is taken; it frees half a second after the next client arrives.
        threading.Timer(0.5, sock.close).start()
        self.assertEqual(server.get("/healthz")[:1], (200,))

    def test_oversized_request_line_and_headers_are_refused(self):
        self.assertEqual(self.open.get("/?q=" + "a" * 9000)[0], 414)
        headers = {f"X-Filler-{i}": "b" * 1000 for i in range(40)}
        self.assertEqual(self.open.get("/healthz", headers=headers)[0], 431)

    def test_keep_alive_serves_several_requests_on_one_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.open.port, timeout=5)
        self.addCleanup(conn.close)
        for path in ("/healthz", "/api/stats", "/"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)


class EntryPoint(StoreCase):
    def test_webserver_script_prints_its_url_and_serves(self):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "webserver.py"), "--data-dir", str(self.store),
             "--port", "0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait, 5)
        self.addCleanup(proc.kill)
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        self.assertIsNotNone(m, line + proc.stderr.read() if proc.poll() is not None else line)
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=5)
        conn.request("GET", "/healthz")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()


if __name__ == "__main__":
    unittest.main()
