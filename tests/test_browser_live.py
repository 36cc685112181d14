"""Live pages in a real browser: a page open in headless Chromium (kept open over the
DevTools pipe, tests/cdp.py) while the test appends a log line and runs a monitor pass.
The new round must appear on the session page and the overview without a reload, and
the page of a session not seen yet must turn into that session when its first round
arrives. Skipped with the reason when chromium is missing (a failure in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from urllib.parse import quote

from tests.cdp import Browser
from tests.helpers import ROOT, ingest, make_line, require_tool, write_lines
from tests.test_browser import CHROMIUM, browser_tmp, chromium_found
from tests.test_web import Running

SESSION = "agent:main:discord:channel:42"
ROUNDS = "document.querySelectorAll('#rounds > article.round').length"


class LivePages(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = None
        if not chromium_found():
            return
        cls.tmp = browser_tmp("live-")
        cls.store = cls.tmp / "sessions"
        cls.log = cls.tmp / "access.log"
        cls.n = 0
        cls.append(SESSION, 2)
        cls.server = Running(cls.store)
        cls.browser = Browser(CHROMIUM, cls.tmp / "profile")

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.tmp is not None:
            cls.browser.close()
            cls.server.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def append(cls, session: str, count: int = 1) -> None:
        """``count`` new rounds of ``session`` in the log, then one monitor pass."""
        lines = []
        for _ in range(count):
            cls.n += 1
            lines.append(make_line(cls.n, session=session))
        write_lines(cls.log, lines)
        ingest(cls.store, cls.log)

    def setUp(self) -> None:
        require_tool(self, "chromium", chromium_found())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def test_session_page_shows_a_new_round_without_reloading(self):
        b = self.browser
        b.open(self.url("/session?id=" + quote(SESSION, safe=":")))
        before = b.eval(ROUNDS)
        self.assertGreaterEqual(before, 2)
        b.eval("window.stayed = 'yes'")   # gone if the page reloads
        b.wait("document.body.getAttribute('data-refreshed')")   # its first poll ran
        self.append(SESSION)
        seconds = b.wait(f"{ROUNDS} === {before + 1}", timeout=10)
        self.assertEqual(b.eval("window.stayed"), "yes", "the page reloaded")
        self.assertLess(seconds, 10)
        # The new round is a whole card: its numbers, and the cards above updated too.
        self.assertIn(f"answer {self.n}", b.eval("document.querySelector('#rounds').innerText"))
        self.assertEqual(b.eval("document.querySelector('[data-card=rounds] .value')"
                                ".textContent"), str(before + 1))
        self.assertEqual([m for m in b.console if "rror" in m], [])

    def test_overview_shows_a_new_session_without_reloading(self):
        b = self.browser
        b.open(self.url("/"))
        value = "document.querySelector('[data-card=sessions] .value').textContent"
        before = int(b.eval(value).replace(",", ""))
        b.eval("window.stayed = 'yes'")
        b.wait("document.body.getAttribute('data-refreshed')")
        self.append("agent:main:telegram:dm:777")
        b.wait(f"{value} === '{before + 1}'", timeout=10)
        b.wait("document.querySelector('#t-sessions').innerText.includes('agent:main:telegram:dm:777')",
               timeout=5)
        self.assertEqual(b.eval("window.stayed"), "yes", "the page reloaded")

    def test_the_search_box_finds_a_session_by_what_it_said(self):
        b = self.browser
        self.append("agent:main:whatsapp:dm:5", 1)
        said = f"answer {self.n}"      # that round's answer, in no other session
        b.open(self.url("/"))
        rows = "document.querySelectorAll('#t-sessions tbody tr').length"
        b.wait(f"{rows} > 1")
        b.eval("const q = document.getElementById('q'); q.value = " + repr(said) + ";"
               "q.dispatchEvent(new Event('input', {bubbles: true}))")
        b.wait(f"{rows} === 1", timeout=10)
        self.assertIn("agent:main:whatsapp:dm:5", b.eval("document.querySelector('#t-sessions')"
                                                         ".innerText"))
        self.assertIn("q=answer", b.eval("location.search"))

    def test_page_of_a_session_not_seen_yet_waits_for_its_first_round(self):
        b = self.browser
        new = "agent:main:slack:channel:C0NEW"
        b.open(self.url("/session?id=" + quote(new, safe=":")))
        self.assertIn("waiting for its first round", b.eval("document.body.innerText"))
        b.wait("document.body.getAttribute('data-refreshed')")
        self.append(new)
        b.wait(f"{ROUNDS} === 1", timeout=10)
        self.assertIn(new, b.eval("document.querySelector('#session-id').textContent"))


def _label_check(chart: str) -> str:
    """JS: the texts of a chart's axis labels that are cut by its edges (should be [])."""
    return ("(() => { const svg = document.querySelector(" + repr(chart) + "); "
            "const box = svg.getBoundingClientRect(); return Array.from(svg.querySelectorAll("
            "'text.ax')).filter(t => { const r = t.getBoundingClientRect(); "
            "return r.left < box.left - 0.5 || r.right > box.right + 0.5; })"
            ".map(t => t.textContent); })()")


class PhoneLayout(unittest.TestCase):
    """390 px wide (a phone): charts, the Insights table and the cost card fit and say
    what they must. Screenshots go to $ASM_SCREENSHOTS when set, to be looked at."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = None
        if not chromium_found():
            return
        cls.tmp = browser_tmp("phone-")
        cls.store = cls.tmp / "sessions"
        example = ROOT / "example"
        ingest(cls.store, example / "access.log")
        # A store of one cheap round: its cost axis is in ten-thousandths of a dollar.
        cls.cheap = cls.tmp / "cheap"
        log = cls.tmp / "cheap.log"
        write_lines(log, [make_line(1, session="cheap", input_token=300)])
        ingest(cls.cheap, log)
        cls.server, cls.cheap_server = Running(cls.store), Running(cls.cheap)
        cls.browser = Browser(CHROMIUM, cls.tmp / "profile", 390, 844)
        cls.shots = Path(os.environ["ASM_SCREENSHOTS"]) if os.environ.get("ASM_SCREENSHOTS") else None

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.tmp is not None:
            cls.browser.close()
            cls.server.close()
            cls.cheap_server.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self) -> None:
        require_tool(self, "chromium", chromium_found())

    def open(self, path: str, server=None) -> None:
        self.browser.open(f"http://127.0.0.1:{(server or self.server).port}{path}")
        self.browser.wait("document.body.getAttribute('data-refreshed')")

    def shot(self, name: str, selector: str) -> None:
        if self.shots:
            self.shots.mkdir(parents=True, exist_ok=True)
            self.browser.screenshot(self.shots / f"{name}.png", selector=selector)

    def test_the_page_never_scrolls_sideways(self):
        for path in ("/", "/session?id=support/web/OHafUozD13ka",
                     "/session?id=support:web:tYjc9LVC2JSx"):
            self.open(quote(path, safe="/?=:"))
            self.assertEqual(self.browser.eval("document.documentElement.scrollWidth"), 390, path)

    def test_a_short_sessions_chart_fits_with_both_axes_and_round_one(self):
        b = self.browser
        self.open("/session?id=" + quote("support/web/OHafUozD13ka", safe=""))
        self.shot("session-chart-390", "#p-rounds")
        box = "document.querySelector('#p-rounds .chart-scroll')"
        self.assertLessEqual(b.eval(f"{box}.scrollWidth"), b.eval(f"{box}.clientWidth"))
        self.assertEqual(b.eval(f"{box}.scrollLeft"), 0)
        self.assertEqual(b.eval(_label_check("#chart-rounds")), [])
        labels = b.eval("Array.from(document.querySelectorAll('#chart-rounds text.ax'))"
                        ".map(t => t.textContent)")
        self.assertIn("1", labels)                                   # round 1 is there
        self.assertTrue([t for t in labels if t.startswith("$")])   # the cost axis too

    def test_cost_axis_labels_keep_their_dollar_sign(self):
        b = self.browser
        self.open("/", self.cheap_server)
        self.shot("overview-cost-390", "#p-cost")
        labels = b.eval("Array.from(document.querySelectorAll('#chart-cost text.ax'))"
                        ".map(t => t.textContent).filter(t => t.startsWith('$'))")
        self.assertTrue(any(len(t) >= 7 for t in labels), labels)   # "$0.0002"-long ones
        self.assertEqual(b.eval(_label_check("#chart-cost")), [])

    def test_the_insights_table_shows_cost_and_saving(self):
        b = self.browser
        self.open("/session?id=" + quote("support:web:tYjc9LVC2JSx", safe=":"))
        self.shot("session-insights-390", "#p-insights")
        table = "document.querySelector('#t-suggest')"
        self.assertLessEqual(b.eval(f"{table}.scrollWidth"),
                             b.eval(f"{table}.parentNode.clientWidth"))
        heads = b.eval(f"Array.from({table}.querySelectorAll('th')).filter(t => t.offsetWidth)"
                       ".map(t => t.textContent)")
        self.assertEqual(heads, ["Model", "Would cost", "Saving"])

    def test_an_unpriced_cost_card_is_not_green_and_its_note_is_whole(self):
        b = self.browser
        self.open("/session?id=" + quote("support:web:MyeuPH7M3EHM", safe=":"))
        self.shot("session-cards-unpriced-390", "#cards")
        card = "document.querySelector('#cards [data-card=cost]')"
        self.assertEqual(b.eval(f"{card}.querySelector('.value').textContent"), "unpriced")
        color = b.eval(f"getComputedStyle({card}.querySelector('.value')).color")
        green = b.eval("(() => { const d = document.createElement('div'); "
                       "d.style.color = 'var(--k-cost)'; document.body.append(d); "
                       "const c = getComputedStyle(d).color; d.remove(); return c; })()")
        self.assertNotEqual(color, green)
        note = f"{card}.querySelector('.note')"
        self.assertLessEqual(b.eval(f"{note}.scrollHeight"), b.eval(f"{note}.clientHeight") + 1)
        self.assertIn("my-private-model", b.eval(f"{note}.textContent"))


class VersionEndpoint(unittest.TestCase):
    """/api/version: what pages poll every second (no browser needed)."""

    def setUp(self) -> None:
        base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
        os.makedirs(base, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="version-", dir=base))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store, self.log = self.tmp / "sessions", self.tmp / "access.log"
        write_lines(self.log, [make_line(1, session=SESSION)])
        ingest(self.store, self.log)

    def version(self, server: Running, query: str = "", **kw) -> tuple[int, str | None]:
        status, _, body = server.get("/api/version" + query, **kw)
        return status, json.loads(body).get("version")

    def test_changes_exactly_when_the_monitor_commits(self):
        server = Running(self.store)
        self.addCleanup(server.close)
        store_v = self.version(server)[1]
        mine = "?id=" + quote(SESSION, safe=":")
        session_v = self.version(server, mine)[1]
        other = "?id=agent:main:other"
        self.assertEqual(self.version(server, other), (200, "none"))
        for outside in ("../../../etc/passwd", ".state.json", ".index.sqlite", "/etc/passwd"):
            self.assertEqual(self.version(server, "?id=" + quote(outside, safe="")), (200, "none"))
        self.assertEqual(self.version(server), (200, store_v))   # nothing new: unchanged
        write_lines(self.log, [make_line(2, session="agent:main:other")])
        ingest(self.store, self.log)
        self.assertNotEqual(self.version(server)[1], store_v)
        self.assertNotEqual(self.version(server, other)[1], "none")
        self.assertEqual(self.version(server, mine)[1], session_v)   # not that session
        write_lines(self.log, [make_line(3, session=SESSION)])
        ingest(self.store, self.log)
        self.assertNotEqual(self.version(server, mine)[1], session_v)

    def test_needs_the_token_or_a_signed_link_for_that_session(self):
        from agent_session_monitor.links import session_url

        server = Running(self.store, token="t" * 20, link_secret="s3cret")
        self.addCleanup(server.close)
        self.assertEqual(self.version(server)[0], 401)
        self.assertEqual(self.version(server, "?id=" + quote(SESSION))[0], 401)
        link = session_url(SESSION, "http://x", "s3cret")
        query = link[link.index("?"):]
        self.assertEqual(self.version(server, query)[0], 200)
        forged = query.replace(quote(SESSION, safe=":"), "agent:main:other")
        self.assertEqual(self.version(server, forged)[0], 403)
        self.assertEqual(self.version(server, headers={"Authorization": "Bearer " + "t" * 20})[0],
                         200)


if __name__ == "__main__":
    unittest.main()
