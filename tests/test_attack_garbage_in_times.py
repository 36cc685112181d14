"""Attack: garbage inside an otherwise valid event time.

``datetime.fromisoformat`` (3.11) reads any character between the date and the time and
ignores a NUL or a control character before the zone, so a ``start_time`` of
``2026-11-30T10:00:00\\u0000Z`` was stored as 10:00:00, unflagged. A time holding
anything the ISO-8601 forms read here do not (values.canonical_time) is ``bad_time``:
kept, flagged, with the read time, exactly like year 9999. Generated: every position of
many valid times of every accepted form x a set of garbage characters (NUL, every C0
control, DEL, Unicode spaces and separators, a BOM, other scripts' digits, letters), as a
JSON escape and as raw bytes (the raw ones break the line, which is salvaged), through
the parser and through a whole monitor pass.
"""

from __future__ import annotations

import json
import random
import unittest
from datetime import datetime, timedelta, timezone

from tests.helpers import TempDirTest, load_store, write_lines
from tests.test_forgery import genuine_ai, genuine_outer
from tests.loggen import envoy_line, go_json
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import Request
from agent_session_monitor.values import canonical_time, format_time, utc_now

READ_TIME = "2026-12-01T00:00:00.000Z"
GARBAGE = ([chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u00a0", "\u2007", "\u2028",
           "\u2029", "\u3000", "\ufeff", "\uff10", "\u0661", "\u0967", "x", "/", "\ufffd"])


def valid_times(rng: random.Random, n: int) -> list[tuple[str, str, bool]]:
    """(text, the stored UTC form, naive) for ``n`` random times of every accepted form."""
    out = []
    for _ in range(n):
        moment = datetime(rng.randint(1971, 8998), rng.randint(1, 12), rng.randint(1, 28),
                          rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                          rng.randrange(1000) * 1000)
        text = moment.strftime("%Y-%m-%d") + rng.choice("Tt ") + moment.strftime("%H:%M:%S")
        if moment.microsecond or rng.random() < 0.3:
            text += rng.choice(".,") + f"{moment.microsecond // 1000:03d}" + "0" * rng.randint(0, 6)
        zone = rng.choice(["Z", "z", "+00:00", "+05:30", "-0800", "+14", "", ""])
        if zone in ("", "Z", "z"):
            utc = moment
        else:
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
            utc = moment - sign * offset
        if not 1970 <= utc.year < 9000:
            continue
        out.append((text + zone, format_time(utc.replace(tzinfo=timezone.utc)), zone == ""))
    return out


def garbled(rng: random.Random, text: str) -> str:
    at = rng.randint(0, len(text))
    junk = rng.choice(GARBAGE)
    if rng.random() < 0.3 and any(c.isdigit() for c in text):
        # Replace a digit by another script's digit: int() reads it, a log never has it.
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        i = rng.choice(digits)
        return text[:i] + chr(0xFF10 + int(text[i])) + text[i + 1:]
    return text[:at] + junk + text[at:]


def line_with_time(time_text: str, n: int, raw: bool) -> bytes:
    """A Higress line whose start_time is ``time_text``: JSON-escaped (a valid line), or
    pasted raw as Envoy would (a control character then breaks the line's JSON)."""
    # A raw line break ends the line itself (the log's own framing, not this test's).
    raw = raw and not any(c in time_text for c in "\n\r")
    value = time_text if raw else json.dumps(time_text)[1:-1]
    return envoy_line(genuine_outer(n, start_time=value), go_json(genuine_ai(n))).rstrip(b"\n")


class GarbageInsideATime(unittest.TestCase):
    def test_every_accepted_form_reads_as_its_utc_time(self):
        rng = random.Random(30)
        cases = valid_times(rng, 3000)
        for text, stored, naive in cases:
            self.assertEqual(canonical_time(text), (stored, naive), text)
        self.assertGreater(len(cases), 2500)
        # Envoy's own form is kept as it is.
        self.assertEqual(canonical_time("2026-11-30T10:00:00.123Z"),
                         ("2026-11-30T10:00:00.123Z", False))

    def test_a_time_with_any_garbage_character_is_not_a_time(self):
        rng = random.Random(31)
        cases = 0
        for text, _stored, _naive in valid_times(rng, 1500):
            for _ in range(4):
                bad = garbled(rng, text)
                self.assertIsNone(canonical_time(bad), repr(bad))
                cases += 1
        for bad in ("2026-11-30T10:00:00\x00Z", "2026-11-30T10:00:00Z\x00", " 2026-11-30T10:00:00Z",
                    "2026-11-30T10:00:00\tZ", "2026-11-30X10:00:00Z", "2026-11-30T10:00:00\n",
                    "2\uff1026-11-30T10:00:00.000Z", "20261130T100000Z", "2026-11-30T24:00:00Z",
                    "2026-11-30T10:00:60Z", "2026-02-30T10:00:00Z", "2026-11-30T10:00:00+24:00"):
            self.assertIsNone(canonical_time(bad), repr(bad))
        self.assertGreater(cases, 5000)

    def test_a_garbled_start_time_is_bad_time_with_the_read_time_never_a_lost_round(self):
        rng = random.Random(32)
        cases = 0
        for n, (text, _stored, _naive) in enumerate(valid_times(rng, 600)):
            bad = garbled(rng, text)
            for raw in (False, True):
                if raw and "\\" in json.dumps(bad) and not any(ord(c) < 0x20 for c in bad):
                    continue   # only control characters are left raw by Envoy's TEXT mode
                req = parse_line(line_with_time(bad, n, raw), READ_TIME)
                with self.subTest(time=bad, raw=raw):
                    self.assertIsInstance(req, Request)
                    self.assertEqual((req.session_id, req.input_token), ("alice", 1000 + n))
                    self.assertEqual(req.timestamp, READ_TIME)
                    self.assertIn("bad_time", req.warnings)
                    self.assertIn("time_from_read", req.warnings)
                cases += 1
        self.assertGreater(cases, 600)


class GarbageTimesThroughTheMonitor(TempDirTest):
    def test_every_garbled_time_is_stored_flagged_with_the_read_time(self):
        rng = random.Random(33)
        lines, good = [], {}
        for n, (text, stored, _naive) in enumerate(valid_times(rng, 300)):
            if n % 3:
                lines.append(line_with_time(garbled(rng, text), n, n % 2 == 0) + b"\n")
            else:
                lines.append(line_with_time(text, n, False) + b"\n")
                good[1000 + n] = stored
        log = self.tmp / "access.log"
        write_lines(log, lines)
        before = utc_now()
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        after = utc_now()
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(len(rounds), len(lines))
        for r in rounds:
            if r["input_tokens"] in good:
                self.assertEqual(r["timestamp"], good[r["input_tokens"]])
                self.assertNotIn("bad_time", r.get("warnings", []))
            else:
                self.assertIn("bad_time", r["warnings"])
                self.assertIsNotNone(canonical_time(r["timestamp"]))
                self.assertTrue(before <= r["timestamp"] <= after, r["timestamp"])  # read time


if __name__ == "__main__":
    unittest.main()
