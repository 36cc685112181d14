"""Hostile and extreme values in a line (issue 13, items 3, 6, 9 and 11): each attack is
generated over many instances and run through the parser and the monitor."""

from __future__ import annotations

import itertools
import json
import random
import unittest

from tests.helpers import TempDirTest, ingest, load_store, write_lines
from tests.loggen import envoy_line, go_json
from tests.test_forgery import FIELDS, GENUINE_TIME, READ_TIME, genuine_ai, genuine_outer
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state

CONTROL = [bytes([c]) for c in range(32) if c != 10]   # a raw newline ends the line
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3(", b"\xe2\x28\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
            b"\xc0\xaf", b"\x80"]


def line_of(ai: dict, n: int = 0, **outer: str) -> bytes:
    return envoy_line(genuine_outer(n, **outer), go_json(ai)).rstrip(b"\n")


class RawControlCharacters(unittest.TestCase):
    def test_raw_nul_or_control_char_inside_any_ai_log_string_is_a_bad_line(self):
        # Go's json.Marshal escapes them all: a raw one inside the ai_log is never the
        # plugin's, and a session id holding a NUL must never be created.
        cases = 0
        for char, key in itertools.product(CONTROL, ("session_id", "model", "answer", "x")):
            ai = {**genuine_ai(), "answer": "fine", "x": "y"}
            ai[key] = f"{ai[key]}MARK"
            raw = line_of(ai).replace(b"MARK", char)
            with self.subTest(char=char, key=key):
                with self.assertRaises(BadLine) as cm:
                    parse_line(raw, READ_TIME)
                self.assertIn(cm.exception.kind, ("raw_control_char", "bad_json"))
                cases += 1
        # The legacy form (ai_log as an object) too.
        for char in CONTROL:
            raw = b'{"ai_log":{"session_id":"a' + char + b'b","input_token":1}}'
            with self.assertRaises(BadLine):
                parse_line(raw, READ_TIME)
        self.assertEqual(cases, 31 * 4)

    def test_raw_control_char_in_a_header_keeps_the_paid_round(self):
        for char, field in itertools.product(CONTROL, FIELDS):
            if char in (b"\r", b"\x00"):
                continue   # a CR before the newline is CRLF; NUL runs are copytruncate padding
            raw = line_of(genuine_ai(3), 3, **{field: "a" + "MARK" + "b"}).replace(b"MARK", char)
            with self.subTest(char=char, field=field):
                req = parse_line(raw, READ_TIME)
                self.assertIsInstance(req, Request)
                self.assertEqual((req.session_id, req.input_token), ("alice", 1003))
                self.assertIn("raw_control_char", req.warnings)


class InvalidUtf8(unittest.TestCase):
    def test_invalid_utf8_in_every_header_field_keeps_the_paid_round(self):
        rng = random.Random(11)
        for n, (bad, field) in enumerate(itertools.product(BAD_UTF8, FIELDS)):
            value = "caf" + "MARK" + rng.choice(["", "é", "/v1"])
            raw = line_of(genuine_ai(n), n, **{field: value}).replace(b"MARK", bad)
            with self.subTest(bad=bad, field=field):
                req = parse_line(raw, READ_TIME)
                self.assertIsInstance(req, Request)
                self.assertEqual((req.session_id, req.input_token), ("alice", 1000 + n))
                self.assertEqual(req.timestamp, GENUINE_TIME)
                self.assertIn("bad_utf8", req.warnings)
                for value in req.gateway.values():
                    value.encode("utf-8")   # no lone surrogate reaches the store

    def test_invalid_utf8_inside_the_ai_log_is_a_bad_line(self):
        for bad in BAD_UTF8:
            ai = {**genuine_ai(), "answer": "xMARKy"}
            raw = line_of(ai).replace(b"MARK", bad)
            with self.assertRaises(BadLine) as cm:
                parse_line(raw, READ_TIME)
            self.assertEqual(cm.exception.kind, "bad_utf8")


def go_cut(value: object, rng: random.Random) -> str:
    """A value as the plugin's value_length_limit leaves it: Go's fmt.Sprint form cut
    by byte, "head [truncated] tail" (a cut inside a character shows U+FFFD)."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    data = text.encode()
    head, tail = rng.randint(1, max(1, len(data) // 2)), rng.randint(1, max(1, len(data) // 3))
    return (data[:head].decode("utf-8", "replace") + " [truncated] "
            + data[-tail:].decode("utf-8", "replace"))


CALLS = [{"id": "call_1", "type": "function",
          "function": {"name": "write_file", "arguments": json.dumps({"path": "a.py", "text": "é" * 300})}}]


class CutFields(TempDirTest):
    def test_cut_tool_calls_question_answer_reasoning_are_kept_flagged_never_null(self):
        rng = random.Random(6)
        lines, expected = [], {}
        fields = ("tool_calls", "question", "answer", "reasoning")
        for n in range(120):
            ai = {**genuine_ai(n), "tool_calls": CALLS, "question": "what " * 50,
                  "answer": "done " * 80, "reasoning": "think " * 60}
            cut = set(rng.sample(fields, rng.randint(1, 4)))
            for name in cut:
                ai[name] = go_cut(ai[name], rng)
            expected[1000 + n] = (cut, {name: ai[name] for name in fields})
            lines.append(line_of(ai, n) + b"\n")
        write_lines(self.tmp / "access.log", lines)
        ingest(self.out, self.tmp / "access.log")
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(len(rounds), 120)
        for rnd in rounds:
            cut, logged = expected[rnd["input_tokens"]]
            self.assertTrue(rnd["has_tool_calls"])
            self.assertIn("truncated_by_gateway", rnd["warnings"])
            for name in fields:
                self.assertEqual(rnd.get(f"{name}_truncated", False), name in cut, name)
                if name in cut:
                    self.assertEqual(rnd[name], logged[name])   # kept as logged
        # Every reader shows them (the cut text, not a character-by-character list).
        import io
        from agent_session_monitor.cli import main as cli_main
        out = io.StringIO()
        self.assertEqual(cli_main(["show", "alice", "--data-dir", str(self.out)], out=out,
                                 err=io.StringIO()), 0)
        self.assertIn("Tool calls (logged truncated by the gateway)", out.getvalue())
        self.assertNotIn("Tool calls (4", out.getvalue())

    def test_cut_tool_calls_in_privacy_mode_still_count_as_tool_calls(self):
        rng = random.Random(7)
        from agent_session_monitor.ingest.parse import parse_line as parse
        from agent_session_monitor.pricing.table import load_price_table
        from agent_session_monitor.ingest.rounds import build_round
        req = parse(line_of({**genuine_ai(), "tool_calls": go_cut(CALLS, rng)}), READ_TIME)
        rnd = build_round(req, "k", {}, load_price_table(), store_content=False)
        self.assertTrue(rnd["has_tool_calls"])
        self.assertTrue(rnd["tool_calls_truncated"])
        self.assertEqual(rnd["tool_calls"], [])   # no content in privacy mode (not the cut text)


class ReservedBucket(TempDirTest):
    def test_client_sending_the_reserved_unsessioned_id_gets_a_session_of_its_own(self):
        import io
        from urllib.parse import quote
        from agent_session_monitor.cli import main as cli_main
        from agent_session_monitor.store.names import UNSESSIONED_ID
        from agent_session_monitor.ingest.ai_log import CLIENT_SUFFIX
        from agent_session_monitor.web.routes import WebApp
        rng = random.Random(9)
        sent = [UNSESSIONED_ID, UNSESSIONED_ID + CLIENT_SUFFIX,
                UNSESSIONED_ID + CLIENT_SUFFIX + CLIENT_SUFFIX, UNSESSIONED_ID + " ",
                UNSESSIONED_ID + "x", "(unsessioned", "unsessioned", "~unsessioned"]
        lines, truth = [], {}
        for n in range(160):
            ai = genuine_ai(n)
            if n % 5 == 0:
                del ai["session_id"]         # a genuine unsessioned request
                truth.setdefault(None, []).append(1000 + n)
            else:
                ai["session_id"] = rng.choice(sent)
                truth.setdefault(ai["session_id"], []).append(1000 + n)
            lines.append(line_of(ai, n) + b"\n")
        write_lines(self.tmp / "access.log", lines)
        ingest(self.out, self.tmp / "access.log")
        docs = load_store(self.out)
        self.assertEqual(sorted(docs[None]["rounds"][i]["input_tokens"]
                                for i in range(len(docs[None]["rounds"]))), truth[None])
        stored = {sid: sorted(r["input_tokens"] for r in doc["rounds"])
                  for sid, doc in docs.items() if sid is not None}
        expected = {(s + CLIENT_SUFFIX if s.startswith(UNSESSIONED_ID) else s): v
                    for s, v in truth.items() if s is not None}
        self.assertEqual(stored, expected)
        self.assertNotIn(UNSESSIONED_ID, stored)   # only the reserved bucket has that id
        # Every one opens, in the CLI and on the web, and list shows each id once.
        out = io.StringIO()
        self.assertEqual(cli_main(["list", "--json", "--data-dir", str(self.out)], out=out,
                                 err=io.StringIO()), 0)
        listed = [row["session_id"] for row in json.loads(out.getvalue())]
        self.assertEqual(len(listed), len(set(listed)))
        app = WebApp(self.out)
        for sid in [UNSESSIONED_ID, *stored]:
            out = io.StringIO()
            self.assertEqual(cli_main(["show", sid, "--json", "--data-dir", str(self.out)],
                                      out=out, err=io.StringIO()), 0, sid)
            shown = json.loads(out.getvalue())
            want = truth[None] if sid == UNSESSIONED_ID else stored[sid]
            self.assertEqual(sorted(r["input_tokens"] for r in shown["rounds"]), want, sid)
            page = app.handle("GET", "/session?id=" + quote(sid), {"Host": "127.0.0.1:0"})
            self.assertEqual(page.status, 200, sid)
            api = app.handle("GET", "/api/session?id=" + quote(sid), {"Host": "127.0.0.1:0"})
            self.assertEqual(sorted(r["input_tokens"] for r in json.loads(api.body)["rounds"]),
                             want, sid)


class NumbersNoStoreCanHold(TempDirTest):
    def test_counts_beyond_any_store_are_out_of_range_lines_and_the_monitor_goes_on(self):
        rng = random.Random(3)
        huge = [2**40 + 1, 2**53, 2**63 - 1, 2**63, 2**64, 10**30, 1e300, "99999999999999999999"]
        lines, good = [], []
        for n in range(200):
            ai = genuine_ai(n)
            if n % 2:
                where = rng.choice(["input_token", "output_token", "total_token",
                                    "cached_tokens", "reasoning_tokens", "details"])
                if where == "details":
                    ai["input_token_details"] = {"cached_tokens": rng.choice(huge[:6])}
                else:
                    ai[where] = rng.choice(huge)
            else:
                good.append(1000 + n)
            lines.append(line_of(ai, n) + b"\n")
        log = self.tmp / "access.log"
        write_lines(log, lines)
        ingest(self.out, log)
        # A second pass goes on reading: the monitor was not stopped by any of them.
        write_lines(log, [line_of(genuine_ai(500), 500) + b"\n"])
        ingest(self.out, log)
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(sorted(r["input_tokens"] for r in rounds), good + [1500])
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["bad_lines"], {"out_of_range": 100})

    def test_a_price_that_overflows_once_priced_leaves_the_round_unpriced(self):
        prices = self.tmp / "prices.json"
        prices.write_text(json.dumps({"gpt-4o": {"input": 1e308, "output": 1e308}}))
        log = self.tmp / "access.log"
        write_lines(log, [line_of({**genuine_ai(n), "input_token": 10**7 + n}, n) + b"\n"
                          for n in range(20)])
        from agent_session_monitor.monitor_cli import main as monitor_main
        import io
        err = io.StringIO()
        code = monitor_main(["--log-path", str(log), "--output-dir", str(self.out),
                             "--allow-log-dir", str(self.tmp), "--pricing", str(prices)],
                            out=io.StringIO(), err=err)
        self.assertEqual(code, 0, err.getvalue())
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(len(rounds), 20)
        self.assertTrue(all(r["cost_usd"] is None for r in rounds))
        self.assertTrue(all("cost_out_of_range" in r["warnings"] for r in rounds))


class ImpossibleTimes(unittest.TestCase):
    def test_times_no_zone_can_show_are_flagged_and_replaced_by_the_read_time(self):
        from agent_session_monitor.values import canonical_time
        bad = ["9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00.000Z", "1-01-01T00:00:00Z",
               "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1969-12-31T23:59:59Z",
               "9000-01-01T00:00:00.000Z", "0100-01-01T00:00:00Z"]
        for n, value in enumerate(bad):
            req = parse_line(line_of(genuine_ai(n), n, start_time=value), READ_TIME)
            self.assertEqual(req.timestamp, READ_TIME, value)
            self.assertIn("bad_time", req.warnings)
            self.assertIn("time_from_read", req.warnings)
        for value in ("1970-01-01T00:00:00.000Z", "8999-12-31T23:59:59.999Z", "2026-02-01T09:30:15Z"):
            req = parse_line(line_of(genuine_ai(), 0, start_time=value), READ_TIME)
            self.assertEqual(canonical_time(req.timestamp)[0], req.timestamp)
            self.assertNotEqual(req.timestamp, READ_TIME)


class ThroughTheMonitor(TempDirTest):
    def test_bad_bytes_in_headers_are_rounds_and_in_the_ai_log_bad_lines(self):
        lines = []
        for n, bad in enumerate(BAD_UTF8):
            lines.append(line_of(genuine_ai(n), n, user_agent="uaMARK").replace(b"MARK", bad))
            lines.append(line_of({**genuine_ai(100 + n), "answer": "MARK"}, 100 + n)
                         .replace(b"MARK", bad))
            lines.append(line_of({**genuine_ai(200 + n), "session_id": "evilMARK"}, 200 + n)
                         .replace(b"MARK", b"\x00"))
        log = self.tmp / "access.log"
        write_lines(log, [line + b"\n" for line in lines])
        ingest(self.out, log)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        self.assertEqual(sorted(r["input_tokens"] for r in docs["alice"]["rounds"]),
                         [1000 + n for n in range(len(BAD_UTF8))])
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["bad_lines"],
                         {"bad_utf8": len(BAD_UTF8), "raw_control_char": len(BAD_UTF8)})


if __name__ == "__main__":
    unittest.main()
