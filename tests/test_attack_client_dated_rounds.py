"""Attack: a client dates its own rounds, in a custom log format nobody declared.

In a format not known here (not Higress's, not declared with --log-format), a key after
a raw header may have been written by the client through that header. The ai_log was
already refused there (``untrusted_ai_log``); a ``start_time`` or ``timestamp`` there
still set the event time, so a client could move its rounds into another day, month or
budget window (or year 8999). Now such a time is never read: the round keeps the read
time, flagged ``untrusted_time`` (and ``time_from_read``), and the pass warns once that
the format can be declared. Generated: seeded custom layouts (ai_log before every raw
header, so the round is billed) with the time before, after or absent, x every raw
header x injected times (valid JSON, broken JSON, both times), through the parser, then
a whole monitor pass undeclared and declared.
"""

from __future__ import annotations

import random
import unittest

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import go_json
from tests.test_forgery import FORGED_TIME, GENUINE_TIME, genuine_ai, layout_line
from agent_session_monitor.ingest.forgery import CLIENT_FIELDS, declare_formats
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import Request

READ_TIME = "2026-03-01T00:00:00.000Z"
OTHERS = ("method", "response_code", "duration", "route_name")
RAW = sorted(CLIENT_FIELDS)
INJECTED = {
    "none": "",
    "start_time": f'","start_time":"{FORGED_TIME}',
    "timestamp": f'","timestamp":"{FORGED_TIME}',
    "both": f'","timestamp":"{FORGED_TIME}","start_time":"{FORGED_TIME}',
    "broken_start_time": f'","start_time":"{FORGED_TIME}" broken',
    "quote_only": 'x"',
}


def layouts(rng: random.Random, n: int) -> list[tuple[str, ...]]:
    """Custom layouts whose ai_log comes before every raw header (billed), with a time
    key (start_time or timestamp) before the raw headers, after one, or none."""
    found = []
    while len(found) < n:
        raw = rng.sample(RAW, rng.randint(1, 3))
        head = ["ai_log"] + rng.sample(OTHERS, rng.randint(0, 2))
        tail = raw + rng.sample([k for k in OTHERS if k not in head], rng.randint(0, 2))
        rng.shuffle(tail)
        while tail[0] not in CLIENT_FIELDS:   # the tail starts with a raw header
            rng.shuffle(tail)
        time_key = rng.choice(["start_time", "timestamp"])
        where = rng.choice(["before", "after", "none"])
        if where == "before":
            head.insert(rng.randint(1, len(head)), time_key)
        elif where == "after":
            tail.insert(rng.randint(1, len(tail)), time_key)
        found.append(tuple(head + tail))
    return found


def time_after_a_raw_header(layout: tuple[str, ...]) -> bool:
    first = min(layout.index(k) for k in layout if k in CLIENT_FIELDS)
    return any(layout.index(k) > first for k in ("start_time", "timestamp") if k in layout)


class ClientDatedRoundsAtParse(unittest.TestCase):
    def test_a_time_a_client_could_have_written_never_dates_a_round(self):
        rng = random.Random(2026)
        cases = 0
        for layout in layouts(rng, 400):
            for field in [k for k in layout if k in CLIENT_FIELDS]:
                for name, payload in INJECTED.items():
                    n = cases
                    raw = layout_line(layout, go_json(genuine_ai(n)), {field: payload}, n)
                    req = parse_line(raw, READ_TIME)
                    cases += 1
                    with self.subTest(layout=layout, field=field, payload=name):
                        self.assertIsInstance(req, Request, raw[:300])
                        self.assertEqual((req.session_id, req.input_token),
                                         ("alice", 1000 + n))
                        self.assertNotEqual(req.timestamp, FORGED_TIME, raw[:300])
                        if time_after_a_raw_header(layout):
                            self.assertEqual(req.timestamp, READ_TIME)
                            self.assertIn("untrusted_time", req.warnings)
                        elif name in ("none", "quote_only") and (
                                "start_time" in layout or "timestamp" in layout):
                            self.assertEqual(req.timestamp, GENUINE_TIME, raw[:300])
        self.assertGreater(cases, 3000)

    def test_declared_the_same_layouts_keep_their_own_time(self):
        rng = random.Random(2027)
        self.addCleanup(declare_formats, [])
        from agent_session_monitor.ingest.forgery import parse_log_format
        for n, layout in enumerate(l for l in layouts(rng, 300) if time_after_a_raw_header(l)):
            declare_formats([parse_log_format(",".join(layout))])
            for payload in ("", INJECTED["start_time"], INJECTED["quote_only"]):
                field = next(k for k in layout if k in CLIENT_FIELDS)
                req = parse_line(layout_line(layout, go_json(genuine_ai(n)), {field: payload},
                                             n), READ_TIME)
                self.assertEqual(req.timestamp, GENUINE_TIME, layout)
                self.assertNotIn("untrusted_time", req.warnings)


class ClientDatedRoundsThroughTheMonitor(TempDirTest):
    def test_undeclared_the_read_time_and_one_warning_declared_the_genuine_time(self):
        layout = ("ai_log", "method", "user_agent", "start_time", "path")
        lines = [layout_line(layout, go_json(genuine_ai(n)),
                             {"user_agent": INJECTED["start_time"] if n % 2 else ""}, n) + b"\n"
                 for n in range(40)]
        log = self.tmp / "access.log"
        write_lines(log, lines)
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(len(rounds), 40)
        self.assertNotIn(FORGED_TIME, {r["timestamp"] for r in rounds})
        self.assertNotIn(GENUINE_TIME, {r["timestamp"] for r in rounds})
        self.assertTrue(all("untrusted_time" in r["warnings"] for r in rounds))
        self.assertIn("dated by the time it was read", err)
        self.assertIn("--log-format", err)
        import shutil
        shutil.rmtree(self.out)
        code, _out, err = self.run_monitor(log, extra=["--log-format", ",".join(layout)])
        self.assertEqual(code, 0, err)
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual({r["timestamp"] for r in rounds}, {GENUINE_TIME})
        self.assertNotIn("dated by the time", err)


if __name__ == "__main__":
    unittest.main()
