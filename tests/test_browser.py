"""The web UI in a real browser: headless Chromium (the Debian ``chromium`` package) loads
the overview and a session page of hostile content and dumps the DOM after its scripts
ran. The pages must show the data (the script ran: auto-refresh fetched the JSON API and
rebuilt tables, a round card and a full context from it) and no injected script may have
run (each hostile string would set the title or a ``data-pwned`` attribute).

Virtual time (``--virtual-time-budget``) lets the 30 s auto-refresh fire at once.
Skipped, with the reason, when chromium is not installed (a failure in CI instead).
"""

from __future__ import annotations

import html
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest
from pathlib import Path
from unittest import mock

from tests.helpers import ROOT, require_tool
from tests.test_web import (AGENT, FIXTURE_HOSTILE_MODEL, HOSTILE_ID, HOSTILE_MODEL,
                            SCRIPT_PROMPT, TOOL_RESULT, Markup, OWN_TAGS, Running, build_store,
                            session_path)

from agent_session_monitor.web import render_session

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr")


def chromium_found() -> bool:
    return os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


def dump_dom(url: str, profile: Path, budget_ms: int = 40_000) -> tuple[str, str]:
    """The DOM after load and ``budget_ms`` of virtual time; and the browser's log."""
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise AssertionError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, proc.stderr


def console(log: str) -> list[str]:
    """Script errors and CSP refusals the page caused (Chromium logs them as CONSOLE)."""
    return [line for line in log.splitlines()
            if "CONSOLE" in line or "Refused to" in line or "Uncaught" in line]


def browser_tmp(prefix: str) -> Path:
    """A fresh folder for one browser test class (under $ASM_TEST_TMP or .test-tmp)."""
    base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
    os.makedirs(base, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class BrowserCase(unittest.TestCase):
    store: Path | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = None
        if not chromium_found():
            return
        cls.tmp = browser_tmp("browser-")
        cls.store = cls.tmp / "sessions"
        build_store(cls.store, cls.tmp / "logs")
        cls.server = Running(cls.store)

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.tmp is not None:
            cls.server.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self) -> None:
        require_tool(self, "chromium", chromium_found())
        self.profile = Path(tempfile.mkdtemp(prefix="profile-", dir=self.tmp))

    def load(self, path: str) -> tuple[str, str]:
        return dump_dom(f"http://127.0.0.1:{self.server.port}{path}", self.profile)

    def assert_no_injected_script_ran(self, dom: str) -> None:
        """Each hostile string would set the title or a data-pwned attribute if it ran
        (its text, escaped, is expected in the page: only elements count)."""
        title = html.unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1))
        self.assertTrue(title.endswith("Agent Session Monitor"), title)
        tags = Markup(dom).tags
        for tag, attrs in tags:
            self.assertNotIn("data-pwned", attrs, tag)
            self.assertFalse([n for n in attrs if n.startswith("on")], tag)
        self.assertLessEqual({t for t, _ in tags}, OWN_TAGS)
        self.assertEqual([a.get("src", "")[:14] for t, a in tags if t == "script"], ["/static/app.js"])

    def serve(self, pages: dict[str, tuple[bytes, str | None]]) -> str:
        """A plain server for test pages: path -> (body, Content-Security-Policy or None)."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body, csp = pages.get(self.path, (b"not found", None))
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                if csp:
                    self.send_header("Content-Security-Policy", csp)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def body_attrs(self, dom: str) -> dict:
        return next(a for t, a in Markup(dom).tags if t == "body")


class Pages(BrowserCase):
    def test_overview_renders_and_refreshes_in_place_without_running_hostile_content(self):
        dom, log = self.load("/")
        self.assertIn('data-js="ready"', dom)
        self.assertEqual(self.body_attrs(dom).get("data-refreshed"), "1")   # JSON fetched, applied
        self.assertRegex(dom, r'id="status"[^>]*>Updated \d\d:\d\d:\d\d')
        # The sessions table and the model table were rebuilt from JSON, hostile names as text.
        table = dom[dom.index('id="t-sessions"'):]
        self.assertIn("PWNED-ID", table)
        self.assertIn(HOSTILE_MODEL.replace("<", "&lt;").replace(">", "&gt;")[:30], table)
        self.assertIn(FIXTURE_HOSTILE_MODEL.replace("<", "&lt;").replace(">", "&gt;"), dom)
        self.assertIn(AGENT, table)
        self.assertIn('<svg class="chart" id="chart-cost"', dom)
        self.assert_no_injected_script_ran(dom)
        self.assertEqual(console(log), [])

    def test_session_page_of_hostile_content_renders_rounds_context_and_new_rounds(self):
        real = render_session.session_page

        def one_round_behind(ctx, view, **kw):
            # The page as rendered just before round 2 arrived: the refresh must add it.
            return real(ctx, {**view, "rounds": view["rounds"][:1]}, **kw)

        with mock.patch.object(render_session, "session_page", one_round_behind):
            dom, log = self.load(session_path(HOSTILE_ID) + "#r2-context")
        self.assertEqual(self.body_attrs(dom).get("data-refreshed"), "1")
        self.assertEqual(dom.count('<article class="round"'), 2)
        card = dom[dom.index('<article class="round" id="r2"'):]
        # Round 2 was built by app.js from the JSON: its answer and tool result are text.
        self.assertIn("&lt;/pre&gt;&lt;img src=x onerror=", card)
        self.assertIn("Result (sent in round 2)", dom)
        self.assertIn("&lt;svg onload=", dom)
        self.assertIn("&lt;script&gt;document.title='PWNED-PROMPT'&lt;/script&gt;", dom)
        self.assertIn("&lt;/script&gt;&lt;script&gt;document.body.setAttribute(", dom)
        self.assert_no_injected_script_ran(dom)
        self.assertEqual(console(log), [])

    def test_full_context_opens_from_the_link_fragment(self):
        dom, log = self.load(session_path(HOSTILE_ID) + "#r2-context")
        block = dom[dom.index('id="r2-context"'):]
        self.assertIn('data-loaded="1"', dom[dom.index('<details class="field ctx"'):dom.index('id="r2-context"') + 40])
        self.assertEqual(block[:block.index("</details>")].count('<div class="msg '), 4)
        self.assertIn(SCRIPT_PROMPT.replace("<", "&lt;").replace(">", "&gt;"), block)
        self.assertIn(TOOL_RESULT.replace("<", "&lt;").replace(">", "&gt;"), block)
        self.assert_no_injected_script_ran(dom)
        self.assertEqual(console(log), [])

    def test_session_page_works_through_a_signed_link(self):
        from agent_session_monitor import links
        from tests.test_web import LINK_SECRET, TOKEN

        locked = Running(self.store, token=TOKEN, link_secret=LINK_SECRET)
        self.addCleanup(locked.close)
        link = links.session_url(AGENT, f"http://127.0.0.1:{locked.port}", LINK_SECRET, 600)
        dom, log = dump_dom(link, self.profile)
        self.assertEqual(self.body_attrs(dom).get("data-refreshed"), "1")  # its API, signed
        self.assertIn("get_weather", dom)
        self.assertNotIn("← Overview", dom)
        self.assertEqual(console(log), [])


    def test_a_token_link_followed_from_another_site_logs_the_browser_in(self):
        """As from a chat app: a cross-site navigation to ?token=, whose HTTP redirect
        would not carry the SameSite=Strict cookie (localhost and 127.0.0.1 are two
        sites)."""
        from tests.test_web import TOKEN

        locked = Running(self.store, token=TOKEN)
        self.addCleanup(locked.close)
        target = f"http://127.0.0.1:{locked.port}/?token={TOKEN}"
        page = (f'<!doctype html><a id="go" href="{target}">open</a>'
                '<script>location.href = document.getElementById("go").href</script>').encode()
        base = self.serve({"/": (page, None)})
        dom, log = dump_dom(base.replace("127.0.0.1", "localhost") + "/", self.profile)
        self.assertEqual(self.body_attrs(dom).get("data-page"), "overview")
        self.assertEqual(self.body_attrs(dom).get("data-refreshed"), "1")  # fetch sent the cookie
        self.assertNotIn(TOKEN, dom)
        self.assertEqual(console(log), [])

class ContentSecurityPolicy(BrowserCase):
    def test_the_servers_csp_blocks_inline_script(self):
        """An inline script (what an escaping bug would let through) does not run under
        the policy this server sends, while the same page without it does run it."""
        _status, headers, _ = self.server.get("/")
        csp = headers["Content-Security-Policy"]
        page = (b"<!doctype html><html><head><title>untouched</title></head><body>"
                b"<script>document.title='INLINE-RAN';"
                b"document.body.setAttribute('data-pwned','inline')</script>"
                b"<img src=x onerror=\"document.body.setAttribute('data-pwned','handler')\">"
                b"</body></html>")
        base = self.serve({"/without": (page, None), "/with-csp": (page, csp)})
        control, _ = dump_dom(base + "/without", self.profile, 2000)
        self.assertIn("<title>INLINE-RAN</title>", control)     # the probe does detect a run
        dom, log = dump_dom(base + "/with-csp", self.profile, 2000)
        self.assertIn("<title>untouched</title>", dom)
        self.assertNotIn("data-pwned", self.body_attrs(dom))   # neither script nor handler ran
        self.assertTrue(any("Content Security Policy" in line for line in console(log)), log[-2000:])


if __name__ == "__main__":
    unittest.main()
