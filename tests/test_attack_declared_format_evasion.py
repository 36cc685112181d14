"""Attack: a client that wants a smaller bill (or someone else to pay it), behind a
declared custom log format (``main.py --log-format``).

A declared layout is read by the place of each key, in every path: a valid line by the
keys json reads (forgery._align), a line a raw header broke (a lone ``"``, a trailing
``\\``, a raw NUL or control character) or a header that opened an object by its text
(forgery._read_by_place). Envoy pastes the headers unescaped, so before this the salvage
did not read declared layouts at all: the genuine ai_log after a User-Agent holding one
``"`` was refused as ``untrusted_ai_log`` and the client's own request never billed.

Generated: every order of start_time, user_agent, ai_log and x_forwarded_for (24) and
200 seeded orders of larger key sets (authority, path, request_id, trace_id, method,
response_code...), x every client-controlled field of the layout, x payloads: quotes,
backslashes, NUL and control characters, invalid UTF-8, a second ai_log (valid, broken,
as an object), a second session_id / start_time, 50 KB headers (of letters, quotes,
backslashes, and of thousands of ai_log keys). Each: the genuine round billed once, with
its own session, tokens and time, never the client's copy. A payload that copies the
format's keys around the ai_log (``","ai_log":"{...}","x_forwarded_for":"``) makes the
line readable two ways: then nothing is billed and the line is counted
``ambiguous_ai_log``, never the client's copy. The same lines through main.py.
"""

from __future__ import annotations

import itertools
import json
import random
import unittest

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import go_json
from agent_session_monitor.ingest import forgery, history
from agent_session_monitor.ingest.forgery import parse_log_format
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state

READ_TIME = "2026-03-01T00:00:00.000Z"
GENUINE_TIME = "2026-02-01T09:00:00.000Z"
FORGED_TIME = "9999-12-31T23:59:59.000Z"
CORE = ("start_time", "user_agent", "ai_log", "x_forwarded_for")
EXTRA = ("authority", "path", "request_id", "trace_id", "method", "response_code", "duration")
VALUES = {"start_time": GENUINE_TIME, "user_agent": "curl/8.5.0", "x_forwarded_for": "10.0.0.1",
          "authority": "llm.example.com", "path": "/v1/chat/completions", "request_id": "req-1",
          "trace_id": "80f198ee56343ba8", "method": "POST", "response_code": "200",
          "duration": "845"}
FORGED_AI = go_json({"session_id": "victim", "model": "gpt-4o", "input_token": 5_000_000,
                     "output_token": 5_000_000})
FORGED_AI_TEXT = json.dumps(FORGED_AI)[1:-1].encode()   # as it sits inside a JSON string

# Appended to a raw header's value (bytes: some are not UTF-8). None of these can make
# the genuine ai_log's place ambiguous: the genuine round must be billed.
PAYLOADS = {
    "lone_quote": b'x"', "only_quote": b'"', "quoted_word": b'Mozilla "5.0',
    "three_quotes": b'a"b"c"', "trailing_backslash": b"x\\", "two_backslashes": b"\\\\",
    "backslash_quote": b'\\"', "nul": b"a\x00b", "controls": b"\x01\x1f\t",
    "bad_utf8": b"\xff\xfe", "lone_lead_byte": b"\xc3", "surrogate_bytes": b"\xed\xa0\x80",
    "second_ai_log": b'","ai_log":"' + FORGED_AI_TEXT,
    "second_ai_log_broken": b'","ai_log":"' + FORGED_AI_TEXT + b'" broken',
    "second_ai_log_dash": b'","ai_log":"-',
    "second_ai_log_object": b'","ai_log":' + FORGED_AI.encode() + b',"x":"',
    "second_session_id": b'","session_id":"victim',
    "second_start_time": b'","start_time":"' + FORGED_TIME.encode(),
    "second_time_and_ai_log": b'","start_time":"' + FORGED_TIME.encode() + b'","ai_log":"'
                              + FORGED_AI_TEXT,
    "escaped_key": b'","\\u0061i_log":"' + FORGED_AI_TEXT,
    "opens_object": b'","hide":{"x":"',
    "50k_letters": b"A" * 50_000 + b'"',
    "50k_quotes": b'"' * 50_000,
    "50k_backslashes": b"\\" * 50_001,
    "50k_ai_log_keys": b'","ai_log":"-' * 4_000,
}


def copy_payload(layout: tuple[str, ...]) -> bytes | None:
    """A forged ai_log followed by the key the layout writes after the genuine one: the
    line then reads two ways (the header ends before the copy, or after it)."""
    at = layout.index("ai_log")
    if at + 1 == len(layout):
        return None
    return b'","ai_log":"' + FORGED_AI_TEXT + b'","' + layout[at + 1].encode() + b'":"'


def raw_fields(layout: tuple[str, ...]) -> list[str]:
    return [k for k in layout if k in forgery.CLIENT_FIELDS]


def layouts() -> list[tuple[str, ...]]:
    found = list(itertools.permutations(CORE))
    rng = random.Random(1616)
    while len(found) < 24 + 200:
        keys = ["ai_log", "start_time", rng.choice(["user_agent", "x_forwarded_for", "path"])]
        keys += rng.sample([k for k in EXTRA + CORE if k not in keys], rng.randint(1, 6))
        rng.shuffle(keys)
        if tuple(keys) not in found:
            found.append(tuple(keys))
    return found


def line(layout: tuple[str, ...], n: int, attacks: dict[str, bytes]) -> bytes:
    ai = go_json({"session_id": "alice", "model": "gpt-4o", "input_token": 1000 + n,
                  "output_token": 10, "messages": [{"role": "user", "content": f"q{n}"}]})
    parts = []
    for k in layout:
        if k == "ai_log":
            parts.append(b'"ai_log":' + json.dumps(ai).encode())
        else:
            parts.append(b'"' + k.encode() + b'":"' + VALUES[k].encode() + attacks.get(k, b"")
                         + b'"')
    return b"{" + b",".join(parts) + b"}"


def outcome(raw: bytes):
    try:
        return parse_line(raw, READ_TIME)
    except BadLine as bad:
        return bad


class DeclaredLayoutsReadByPlaceInEveryPath(unittest.TestCase):
    def setUp(self) -> None:
        history.CACHE.clear()
        self.addCleanup(forgery.declare_formats, [])

    def assertGenuine(self, got, n: int, raw: bytes) -> None:
        self.assertIsInstance(got, Request, raw[:400])
        self.assertEqual((got.session_id, got.input_token, got.output_token),
                         ("alice", 1000 + n, 10), raw[:400])
        self.assertEqual(got.timestamp, GENUINE_TIME, raw[:400])
        self.assertNotIn("untrusted_time", got.warnings)

    def test_every_layout_order_field_and_payload_bills_the_genuine_round(self):
        cases = ambiguous = 0
        for layout in layouts():
            forgery.declare_formats([parse_log_format(",".join(layout))])
            n = cases
            self.assertGenuine(outcome(line(layout, n, {})), n, line(layout, n, {}))
            payloads = dict(PAYLOADS)
            if set(layout) != set(CORE):
                # 50 KB headers on the 24 orders of the core keys only (CPU: ~10 ms each)
                payloads = {k: v for k, v in payloads.items() if not k.startswith("50k")}
            if copy_payload(layout) is not None:
                payloads["copy_around_ai_log"] = copy_payload(layout)
            for field, (name, payload) in itertools.product(raw_fields(layout),
                                                            payloads.items()):
                n = cases
                raw = line(layout, n, {field: payload})
                got = outcome(raw)
                cases += 1
                with self.subTest(layout=layout, field=field, payload=name):
                    if name == "copy_around_ai_log" and isinstance(got, BadLine):
                        # Readable two ways only when a raw header lies before the ai_log.
                        self.assertEqual(got.kind, "ambiguous_ai_log")
                        self.assertTrue(any(layout.index(f) < layout.index("ai_log")
                                            for f in raw_fields(layout)), raw[:300])
                        ambiguous += 1
                        continue
                    self.assertGenuine(got, n, raw)
                    if b"ai_log" in payload or b"start_time" in payload:
                        self.assertIn("forged", got.warnings)
        self.assertGreater(cases, 10_000)
        self.assertGreater(ambiguous, 50)

    def test_payloads_in_two_headers_at_once_never_bill_the_clients_copy(self):
        rng = random.Random(77)
        all_layouts = layouts()
        short = {k: v for k, v in PAYLOADS.items() if not k.startswith("50k")}
        names = list(short)
        for n in range(3000):
            layout = rng.choice(all_layouts)
            fields = raw_fields(layout)
            forgery.declare_formats([parse_log_format(",".join(layout))])
            attacks = {f: b"".join(short[p] for p in rng.sample(names, rng.randint(1, 3)))
                       for f in rng.sample(fields, min(len(fields), rng.randint(1, 2)))}
            raw = line(layout, n, attacks)
            got = outcome(raw)
            with self.subTest(n=n):
                if isinstance(got, BadLine):
                    self.assertEqual(got.kind, "ambiguous_ai_log", raw[:300])
                    continue
                self.assertIsInstance(got, Request, raw[:300])
                self.assertEqual((got.session_id, got.input_token), ("alice", 1000 + n))
                self.assertIn(got.timestamp, (GENUINE_TIME, READ_TIME))

    def test_a_line_of_one_declared_layout_never_reads_as_another_to_bill_a_copy(self):
        # Two formats declared for one stream: a client of the first writes keys that
        # make its line a valid line of the second, with its copy where the second puts
        # the ai_log. Readings that disagree bill nothing.
        first = ("start_time", "user_agent", "ai_log", "x_forwarded_for")
        second = ("start_time", "user_agent", "x_forwarded_for", "ai_log")
        forgery.declare_formats([parse_log_format(",".join(first)),
                                 parse_log_format(",".join(second))])
        raw = line(first, 1, {"x_forwarded_for": b'","ai_log":"' + FORGED_AI_TEXT})
        got = outcome(raw)
        self.assertIsInstance(got, BadLine)
        self.assertEqual(got.kind, "ambiguous_ai_log")
        for layout in (first, second):   # a plain line of either is billed
            self.assertGenuine(outcome(line(layout, 2, {})), 2, line(layout, 2, {}))

    def test_a_header_of_a_megabyte_of_copied_keys_costs_little_and_bills_no_copy(self):
        import resource
        import time
        copies = b'","ai_log":"' + FORGED_AI_TEXT
        short = b'","ai_log":"-'
        floods = [copies * (2**20 // len(copies)), short * (2**20 // len(short)),
                  short * (2**20 // len(short)) + b'x"']   # the last one breaks the line
        for layout, flood in itertools.product(
                (CORE, ("ai_log", "start_time", "user_agent", "x_forwarded_for")), floods):
            forgery.declare_formats([parse_log_format(",".join(layout))])
            for field in raw_fields(layout):
                raw = line(layout, 3, {field: flood})
                cpu = time.process_time()
                got = outcome(raw)
                self.assertLess(time.process_time() - cpu, 5.0)
                with self.subTest(layout=layout, field=field):
                    if isinstance(got, Request):
                        self.assertGenuine(got, 3, raw)
                    else:   # counted, never the copy
                        self.assertIsInstance(got, BadLine)
                    if layout[0] == "ai_log":   # before every header: always billed
                        self.assertIsInstance(got, Request)
        self.assertLess(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 600 * 1024)


class DeclaredLayoutsThroughTheMonitor(TempDirTest):
    def test_every_line_is_billed_once_or_counted_never_the_clients_copy(self):
        layout = ("start_time", "user_agent", "ai_log", "x_forwarded_for")
        lines, billed, ambiguous = [], [], 0
        payloads = dict(PAYLOADS, copy_around_ai_log=copy_payload(layout))
        for field, (name, payload) in itertools.product(raw_fields(layout), payloads.items()):
            n = len(lines)
            lines.append(line(layout, n, {field: payload}) + b"\n")
            if name == "copy_around_ai_log":   # user_agent lies before the ai_log
                ambiguous += 1
            else:
                billed.append(1000 + n)
        log = self.tmp / "access.log"
        write_lines(log, lines)
        code, _out, err = self.run_monitor(log, extra=["--log-format", ",".join(layout)])
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        rounds = docs["alice"]["rounds"]
        self.assertEqual(sorted(r["input_tokens"] for r in rounds), billed)
        self.assertEqual({r["timestamp"] for r in rounds}, {GENUINE_TIME})
        state, _ = load_state(self.out / ".state.json", None)
        c = state.counters
        self.assertEqual(c["bad_lines"], {"ambiguous_ai_log": ambiguous})
        self.assertEqual(c["lines_read"], len(lines))
        self.assertEqual(c["rounds_stored"] + ambiguous, len(lines))
        self.assertIn("skipped ambiguous_ai_log line in", err)
        # Read again from the start (a lost state): nothing counted twice.
        (self.out / ".state.json").unlink()
        code, _out, err = self.run_monitor(log, extra=["--log-format", ",".join(layout)])
        self.assertEqual(len(load_store(self.out)["alice"]["rounds"]), len(billed))


if __name__ == "__main__":
    unittest.main()
