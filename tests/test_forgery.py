"""Forgery through raw header fields (issue 13, item 1; input-format.md, "Fields a client
controls").

Envoy's TEXT format pastes ``authority``, ``path``, ``request_id`` (X-Request-Id),
``user_agent`` and ``x_forwarded_for`` in raw, so a client can close the value with ``"``
and write keys of its own: a second ``ai_log`` (another session's bill, or ``"-"`` to make
a paid request look free), a second ``start_time`` (year 9999), a second ``request_id``
(to pass for a duplicate). Every test here generates the attack over every client field,
every forged key and every position, and proves the genuine round is counted once, with
its own session, time and tokens, and that the line is counted as forged.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import unittest

from tests.helpers import TempDirTest, load_store, write_lines
from tests.loggen import envoy_line, go_json
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.ingest.forgery import (CLIENT_FIELDS, HIGRESS_FORMAT,
                                                  declare_formats, parse_log_format)
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state

READ_TIME = "2026-03-01T00:00:00.000Z"
GENUINE_TIME = "2026-02-01T09:30:15.123Z"
FORGED_TIME = "9999-12-31T23:59:59.000Z"
FIELDS = sorted(CLIENT_FIELDS)
FIELDS_IN_ORDER = [k for k in HIGRESS_FORMAT if k in CLIENT_FIELDS]


def genuine_outer(n: int = 0, **over: str) -> dict:
    outer = {k: "-" for k in HIGRESS_FORMAT[1:]}
    outer.update({"authority": "llm.example.com", "method": "POST", "path": "/v1/chat/completions",
                  "protocol": "HTTP/1.1", "request_id": f"req-{n:06d}", "response_code": "200",
                  "route_name": "ai-route", "start_time": GENUINE_TIME, "user_agent": "curl/8.5.0",
                  "duration": "845", "response_code_details": "via_upstream"})
    outer.update(over)
    return outer


def genuine_ai(n: int = 0, session: str = "alice") -> dict:
    return {"session_id": session, "model": "gpt-4o", "input_token": 1000 + n,
            "output_token": 10, "messages": [{"role": "user", "content": f"question {n}"}]}


def forged_ai_log_text() -> str:
    forged = {"session_id": "victim", "model": "gpt-4o", "input_token": 5_000_000,
              "output_token": 5_000_000}
    return json.dumps(go_json(forged))[1:-1]   # as it would sit inside a JSON string


# Runs of forged keys a client appends to a header value (each closes the header's
# string with `"` and leaves the last value open for the genuine closing quote).
PAYLOADS = {
    "second_ai_log": f'","ai_log":"{forged_ai_log_text()}',
    "ai_log_dash": '","ai_log":"-',
    "ai_log_empty": '","ai_log":"',
    "start_time": f'","start_time":"{FORGED_TIME}',
    "timestamp": f'","timestamp":"{FORGED_TIME}',
    "request_id": '","request_id":"r-1',
    "ai_log_and_time": f'","ai_log":"{forged_ai_log_text()}","start_time":"{FORGED_TIME}',
    "time_and_ai_log": f'","start_time":"{FORGED_TIME}","ai_log":"{forged_ai_log_text()}',
    "route_then_time": f'","route_name":"x","start_time":"{FORGED_TIME}","trace_id":"-',
    "unknown_key": '","x_injected":"1',
}


def inject(n: int, attacks: dict[str, str], ai: dict | None = None) -> bytes:
    """The genuine line of request ``n`` with ``attacks`` (field -> payload) appended to
    the raw header values, as Envoy would write it."""
    outer = genuine_outer(n)
    for field, payload in attacks.items():
        outer[field] = outer[field] + payload
    return envoy_line(outer, go_json(ai or genuine_ai(n)))


class ForgedKeysAtParse(unittest.TestCase):
    def assertGenuine(self, raw: bytes, n: int, exact_time: bool = True) -> Request:
        req = parse_line(raw.rstrip(b"\n"), READ_TIME)
        self.assertIsInstance(req, Request, raw[:300])
        self.assertEqual(req.session_id, "alice", raw[:300])
        self.assertEqual((req.input_token, req.output_token), (1000 + n, 10))
        self.assertEqual(req.ai.get("model"), "gpt-4o")
        if exact_time:
            self.assertEqual(req.timestamp, GENUINE_TIME, raw[:300])
        else:
            self.assertIn(req.timestamp, (GENUINE_TIME, READ_TIME), raw[:300])
        self.assertIn("forged", req.warnings, raw[:300])
        return req

    def test_every_client_field_injecting_every_forged_key_is_counted_as_forged(self):
        cases = 0
        for field, (name, payload) in itertools.product(FIELDS, PAYLOADS.items()):
            with self.subTest(field=field, payload=name):
                self.assertGenuine(inject(cases, {field: payload}), cases)
                cases += 1
        self.assertEqual(cases, len(FIELDS) * len(PAYLOADS))

    def test_forged_keys_in_several_fields_at_once_never_win(self):
        rng = random.Random(13)
        names = list(PAYLOADS)
        for n in range(1500):
            fields = rng.sample(FIELDS, rng.randint(1, len(FIELDS)))
            attacks = {f: "".join(PAYLOADS[p] for p in rng.sample(names, rng.randint(1, 3)))
                       for f in fields}
            self.assertGenuine(inject(n, attacks), n)

    def test_user_agent_injecting_second_ai_log_is_counted_as_forged(self):
        req = self.assertGenuine(inject(7, {"user_agent": PAYLOADS["ai_log_and_time"]}), 7)
        self.assertEqual(req.request_id, "req-000007")

    def test_authority_injecting_start_time_before_the_genuine_one_keeps_the_genuine(self):
        # The forged start_time comes *before* the genuine one here: "keep the first"
        # would be as wrong as Python's "keep the last".
        self.assertGenuine(inject(3, {"authority": PAYLOADS["start_time"]}), 3)
        self.assertGenuine(inject(4, {"authority": PAYLOADS["route_then_time"]}), 4)

    def test_header_copying_whole_runs_of_the_format_never_decides_the_time(self):
        # A client that copies every key of the format after its header makes the place
        # of the genuine start_time ambiguous: then the read time is used, never its own.
        rng = random.Random(5)
        for n in range(300):
            field = rng.choice(FIELDS)
            fake = genuine_outer(n, start_time=FORGED_TIME, request_id="r-1")
            start = rng.randrange(1, len(HIGRESS_FORMAT) - 1)
            stop = rng.randrange(start + 1, len(HIGRESS_FORMAT) + 1)
            run = "".join(f'","{k}":"{fake[k]}' if k != "ai_log" else
                          f'","ai_log":"{forged_ai_log_text()}'
                          for k in HIGRESS_FORMAT[start:stop])
            self.assertGenuine(inject(n, {field: run}), n, exact_time=False)

    def test_headers_hiding_the_genuine_time_inside_an_object_never_decide_the_time(self):
        # authority opens an object that swallows the genuine keys, a later header closes
        # it and writes a forged (now unique) start_time, even re-creating every key.
        n = 0
        for opener, closer in itertools.combinations(FIELDS_IN_ORDER, 2):
            at, to = HIGRESS_FORMAT.index(opener), HIGRESS_FORMAT.index(closer)
            for variant in ("new_key", "refill", "exact_format")[:3 if to > at + 1 else 2]:
                # exact_format hides the genuine keys in the value of the next format key
                # and re-creates every hidden key: the top level is the format exactly.
                holder = HIGRESS_FORMAT[at + 1] if variant == "exact_format" else "hide"
                keys = HIGRESS_FORMAT[at + 2 if variant == "exact_format" else at + 1:to + 1]
                run = ("".join(f'","{k}":"{FORGED_TIME if k == "start_time" else "-"}'
                               for k in keys) if variant != "new_key"
                       else f'","start_time":"{FORGED_TIME}')
                raw = inject(n, {opener: f'","{holder}":{{"x":"', closer: '"}' + run[1:]})
                outer = json.loads(raw)   # the attack is valid JSON
                if variant == "exact_format":
                    self.assertEqual(tuple(outer), HIGRESS_FORMAT)
                if at < HIGRESS_FORMAT.index("start_time") < to:
                    self.assertEqual(outer["start_time"], FORGED_TIME)  # json's choice
                self.assertGenuine(raw, n, exact_time=False)
                n += 1
        pairs = len(FIELDS_IN_ORDER) * (len(FIELDS_IN_ORDER) - 1) // 2
        adjacent = sum(HIGRESS_FORMAT.index(b) == HIGRESS_FORMAT.index(a) + 1
                       for a, b in itertools.combinations(FIELDS_IN_ORDER, 2))
        # request_id, requested_server_name; user_agent, x_forwarded_for
        self.assertEqual(adjacent, 2)
        self.assertEqual(n, 3 * pairs - adjacent)

    def test_ai_log_dash_through_a_header_of_a_non_ai_line_is_forged_not_free(self):
        outer = genuine_outer(1, user_agent="curl" + PAYLOADS["second_ai_log"])
        self.assertEqual(parse_line(envoy_line(outer, "-").rstrip(b"\n"), READ_TIME),
                         "forged_non_ai")
        # A line that has no ai_log key at all gets none from a header either.
        raw = envoy_line(outer, None).rstrip(b"\n")
        self.assertEqual(parse_line(raw, READ_TIME), "forged_non_ai")

    def test_header_with_quote_breaking_the_json_and_a_forged_ai_log_salvages_the_genuine(self):
        for n, field in enumerate(FIELDS):
            raw = inject(n, {field: PAYLOADS["ai_log_and_time"] + '" broken'})
            with self.assertRaises(json.JSONDecodeError):
                json.loads(raw)
            req = self.assertGenuine(raw, n, exact_time=False)
            self.assertIn("salvaged", req.warnings)

    def test_forged_keys_spelt_otherwise_are_caught_too(self):
        # A key written with a \u escape, or with spaces around its colon, is the same key
        # to a JSON parser but not to a naive substring count; an object closed early
        # with a second one after it is not JSON at all (the salvage path).
        variants = {
            "unicode_escaped_key": f'","\\u0073tart_time":"{FORGED_TIME}',
            "escaped_ai_log": f'","\\u0061i_log":"{forged_ai_log_text()}',
            "spaces_around_colon": f'" , "start_time" : "{FORGED_TIME}',
            "tab_separators": f'"\t,\t"ai_log"\t:\t"-',
            "object_closed_early": f'"}}{{"ai_log":"-","start_time":"{FORGED_TIME}',
        }
        for n, (field, (name, payload)) in enumerate(itertools.product(FIELDS, variants.items())):
            with self.subTest(field=field, variant=name):
                self.assertGenuine(inject(n, {field: payload}), n,
                                   exact_time=name != "object_closed_early")

    def test_plain_lines_are_not_forged(self):
        for n in range(50):
            req = parse_line(inject(n, {}).rstrip(b"\n"), READ_TIME)
            self.assertNotIn("forged", req.warnings)
            self.assertEqual(req.timestamp, GENUINE_TIME)
        req = parse_line(json.dumps({"__file_offset__": "1", "timestamp": GENUINE_TIME,
                                     "ai_log": go_json(genuine_ai())}).encode(), READ_TIME)
        self.assertNotIn("forged", req.warnings)


# Layouts of the line: the fixtures' (Higress's default with ai_log first; the original
# skill's examples: __file_offset__, timestamp, ai_log), Higress's without its ai_log
# key (a non-AI route), and custom formats generated from them: ai_log moved to every
# place, and every client-controlled field inserted at every place of the skill's.
SKILL_FORMAT = ("__file_offset__", "timestamp", "ai_log")


def custom_layouts() -> list[tuple[str, ...]]:
    layouts = {HIGRESS_FORMAT, SKILL_FORMAT, HIGRESS_FORMAT[1:]}
    rest = HIGRESS_FORMAT[1:]
    for at in range(len(rest) + 1):
        layouts.add(rest[:at] + ("ai_log",) + rest[at:])
    for field in FIELDS:
        for at in range(len(SKILL_FORMAT) + 1):
            layouts.add(SKILL_FORMAT[:at] + (field,) + SKILL_FORMAT[at:])
        # A format that logs no ai_log at all (a plain access log read by mistake, another
        # container's lines in the same stream), with the header first and last.
        layouts.add((field, "start_time", "method"))
        layouts.add(("start_time", "method", field))
    return sorted(layouts)


def layout_line(layout: tuple[str, ...], ai_log: str, attacks: dict[str, str],
                n: int = 0) -> bytes:
    """A line of ``layout`` as Envoy's TEXT mode writes it: ``ai_log`` string-escaped,
    every other value pasted raw, ``attacks`` appended to the raw header values."""
    values = genuine_outer(n, timestamp=GENUINE_TIME, __file_offset__=str(1000 + n),
                           method="POST")
    parts = []
    for k in layout:
        if k == "ai_log":
            parts.append('"ai_log":' + json.dumps(ai_log, ensure_ascii=False))
        else:
            parts.append(f'"{k}":"{values.get(k, "-")}{attacks.get(k, "")}"')
    return ("{" + ",".join(parts) + "}").encode()


def ai_log_is_safe(layout: tuple[str, ...]) -> bool:
    """The genuine ai_log sits before every raw header: no client can write one there."""
    return "ai_log" in layout and all(
        k not in CLIENT_FIELDS for k in layout[:layout.index("ai_log")])


FORGING_PAYLOADS = {k: v for k, v in PAYLOADS.items() if "ai_log" in k}


class ForgedAiLogInCustomFormats(unittest.TestCase):
    """A client-controlled field never decides a session or a count, whatever the layout:
    an ai_log a client could have written (after a raw header) is never billed."""

    def outcome(self, raw: bytes):
        try:
            return parse_line(raw, READ_TIME)
        except BadLine as bad:
            return bad

    def assertNotBilledToTheVictim(self, got, raw: bytes) -> None:
        if isinstance(got, Request):
            self.assertNotEqual(got.session_id, "victim", raw[:400])
            self.assertNotEqual(got.input_token, 5_000_000, raw[:400])

    def assertRefused(self, got, layout: tuple[str, ...], raw: bytes,
                      field: str | None = None) -> None:
        """Never billed: an ``untrusted_ai_log`` bad line naming the header the ai_log
        follows; or, in Higress's own key order (whose ai_log is first, so one after a
        header can only be a client's), a forged non-AI line."""
        if got == "forged_non_ai" and set(layout) <= set(HIGRESS_FORMAT):
            return
        self.assertIsInstance(got, BadLine, raw[:300])
        self.assertEqual(got.kind, "untrusted_ai_log")
        if field is not None:
            self.assertIn(f"field {field},", got.detail)

    def test_every_client_field_of_every_layout_injecting_an_ai_log_never_bills_it(self):
        cases = 0
        genuine_kinds = {"round": go_json(genuine_ai(0)), "dash": "-"}
        for layout in custom_layouts():
            for field in [k for k in layout if k in CLIENT_FIELDS]:
                for (pname, payload), broken in itertools.product(FORGING_PAYLOADS.items(),
                                                                  ("", '" broken')):
                    for gname, ai in genuine_kinds.items():
                        raw = layout_line(layout, ai, {field: payload + broken})
                        got = self.outcome(raw)
                        cases += 1
                        with self.subTest(layout=layout[:4], field=field, payload=pname,
                                          broken=bool(broken), genuine=gname):
                            self.assertNotBilledToTheVictim(got, raw)
                            if isinstance(got, Request):
                                # Only the genuine round, and only flagged.
                                self.assertTrue(ai_log_is_safe(layout), raw[:400])
                                self.assertEqual(got.session_id, "alice")
                                self.assertIn("forged", got.warnings)
                            elif got == "non_ai":
                                self.fail(f"forged line counted as a plain non-AI one: {raw[:300]}")
                            if (gname == "round" and ai_log_is_safe(layout) and not broken
                                    and "dash" not in pname and "empty" not in pname):
                                self.assertIsInstance(got, Request, raw[:400])
        self.assertGreater(cases, 1000)

    def test_a_lone_ai_log_after_a_client_field_is_refused_by_kind_not_billed(self):
        # The bytes are the same whether the format puts ai_log after a header or a
        # client wrote it into a format that has none: it cannot be trusted either way.
        forged = go_json({"session_id": "victim", "model": "gpt-4o",
                          "input_token": 5_000_000, "output_token": 1})
        cases = 0
        for layout in custom_layouts():
            fields = [k for k in layout if k in CLIENT_FIELDS]
            if "ai_log" in layout or not fields:
                continue
            for field, broken in itertools.product(fields, ("", '" broken')):
                payload = '","ai_log":' + json.dumps(forged)[:-1] + broken
                raw = layout_line(layout, "-", {field: payload})
                # layout_line writes no ai_log key for a layout without one
                got = self.outcome(raw)
                with self.subTest(layout=layout, field=field, broken=bool(broken)):
                    self.assertRefused(got, layout, raw, field)
                cases += 1
        self.assertGreaterEqual(cases, 2 * len(FIELDS) * 2)

    def test_custom_formats_with_ai_log_before_every_header_are_billed_unflagged(self):
        for n, layout in enumerate(custom_layouts()):
            raw = layout_line(layout, go_json(genuine_ai(n)), {}, n)
            got = self.outcome(raw)
            with self.subTest(layout=layout):
                if "ai_log" not in layout:
                    self.assertEqual(got, "non_ai")
                elif ai_log_is_safe(layout):
                    self.assertIsInstance(got, Request, raw[:300])
                    self.assertEqual((got.session_id, got.input_token), ("alice", 1000 + n))
                    self.assertEqual(got.warnings, [])
                else:
                    # ai_log after a raw header: never trusted, counted by its own kind.
                    self.assertRefused(got, layout, raw)

    def test_key_names_repeated_inside_an_ai_log_object_are_not_a_forgery(self):
        # The skill's older examples put an object in ai_log, whose messages may hold
        # keys named like the outer ones, and numbers elsewhere: no raw header, nothing
        # forged, the line's own time.
        for offset in ("1000", 1000):
            ai = dict(genuine_ai(0), timestamp="2026-01-01T00:00:00Z", start_time="x",
                      messages=[{"role": "user", "content": "q", "timestamp": "t",
                                 "ai_log": "-", "request_id": "r"}])
            raw = json.dumps({"__file_offset__": offset, "timestamp": GENUINE_TIME,
                              "ai_log": ai}).encode()
            got = self.outcome(raw)
            with self.subTest(offset=type(offset).__name__):
                self.assertIsInstance(got, Request)
                self.assertEqual((got.timestamp, got.warnings), (GENUINE_TIME, []))

    def test_duplicated_ai_log_in_a_format_with_headers_of_other_names_bills_the_first_key(self):
        # A header this parser does not know by name (an nginx-style "http_user_agent")
        # that writes a second ai_log: Python would keep the last. The genuine one is the
        # line's first key, which no client can write (a header's keys follow its
        # value): billed, flagged forged. It was dropped as a forged non-AI line, a paid
        # round hidden as a free one. Where the first ai_log follows a key that may be a
        # raw header, its place is unknown: ambiguous_ai_log (counted, never billed).
        # Every header position and spelling: test_attack_undeclared_second_ai_log.py.
        forged = go_json({"session_id": "victim", "model": "gpt-4o",
                          "input_token": 5_000_000, "output_token": 1})
        for genuine in (go_json(genuine_ai(0)), "-"):
            raw = ('{"ai_log":' + json.dumps(genuine) + ',"http_user_agent":"x","ai_log":'
                   + json.dumps(forged) + ',"method":"POST"}').encode()
            got = self.outcome(raw)
            with self.subTest(genuine=genuine[:10]):
                self.assertNotBilledToTheVictim(got, raw)
                if genuine == "-":
                    self.assertEqual(got, "forged_non_ai")
                else:
                    self.assertEqual((got.session_id, got.input_token), ("alice", 1000))
                    self.assertIn("forged", got.warnings)
            raw = ('{"status":"200","http_user_agent":"x","ai_log":' + json.dumps(forged)
                   + ',"ai_log":' + json.dumps(genuine) + ',"method":"POST"}').encode()
            got = self.outcome(raw)
            with self.subTest(genuine=genuine[:10], header_first=True):
                self.assertIsInstance(got, BadLine)
                self.assertEqual(got.kind, "ambiguous_ai_log")


class DeclaredCustomFormats(unittest.TestCase):
    """``--log-format``: an operator whose format logs ai_log after a raw header declares
    it; its lines are then read by place, as Higress's are, so the genuine ai_log is
    billed and a client's copy (an extra key right after a header) never is."""

    def tearDown(self) -> None:
        declare_formats([])

    def outcome(self, raw: bytes):
        try:
            return parse_line(raw, READ_TIME)
        except BadLine as bad:
            return bad

    def test_declared_layouts_bill_the_genuine_round_and_never_a_clients_copy(self):
        cases = 0
        unsafe = [l for l in custom_layouts() if "ai_log" in l and not ai_log_is_safe(l)]
        self.assertGreater(len(unsafe), 20)
        for layout in unsafe:
            declare_formats([parse_log_format(",".join(layout))])
            n = cases
            got = self.outcome(layout_line(layout, go_json(genuine_ai(n)), {}, n))
            with self.subTest(layout=layout, attack=None):
                self.assertIsInstance(got, Request, layout)
                self.assertEqual((got.session_id, got.input_token, got.warnings),
                                 ("alice", 1000 + n, []))
                self.assertEqual(got.timestamp, GENUINE_TIME)
            for field in [k for k in layout if k in CLIENT_FIELDS]:
                for name, payload in FORGING_PAYLOADS.items():
                    for genuine in (go_json(genuine_ai(n)), "-"):
                        raw = layout_line(layout, genuine, {field: payload}, n)
                        got = self.outcome(raw)
                        cases += 1
                        with self.subTest(layout=layout[:3], field=field, payload=name,
                                          genuine=genuine[:5]):
                            if genuine == "-":
                                self.assertEqual(got, "forged_non_ai", raw[:300])
                            else:
                                self.assertIsInstance(got, Request, raw[:300])
                                self.assertEqual((got.session_id, got.input_token),
                                                 ("alice", 1000 + n))
                                self.assertIn("forged", got.warnings)
                                self.assertIn(got.timestamp, (GENUINE_TIME, READ_TIME))
        self.assertGreater(cases, 1000)

    def test_a_format_pasted_from_the_gateway_config_marks_its_request_headers(self):
        template = ('{"start_time":"%START_TIME%","ua":"%REQ(USER-AGENT)%",'
                    '"method":"%REQ(:METHOD)%","code":"%RESPONSE_CODE%",'
                    '"ai_log":"%FILTER_STATE(wasm.ai_log:PLAIN)%"}')
        keys, raw = parse_log_format(template)
        self.assertEqual(keys, ("start_time", "ua", "method", "code", "ai_log"))
        self.assertEqual(raw, frozenset(("ua", "method")))
        declare_formats([(keys, raw)])
        layout = keys
        values = {"start_time": GENUINE_TIME, "ua": "curl", "method": "POST", "code": "200"}

        def line(attacks, ai):
            parts = [f'"{k}":"{values[k]}{attacks.get(k, "")}"' if k != "ai_log" else
                     '"ai_log":' + json.dumps(ai) for k in layout]
            return ("{" + ",".join(parts) + "}").encode()

        got = self.outcome(line({}, go_json(genuine_ai(1))))
        self.assertEqual((got.session_id, got.warnings), ("alice", []))
        for field in ("ua", "method"):   # headers by their template, whatever their name
            got = self.outcome(line({field: PAYLOADS["second_ai_log"]}, "-"))
            self.assertEqual(got, "forged_non_ai", field)
        # Undeclared, the same lines are refused: "ua" is not a name known here, but the
        # line is not Higress's and its ai_log follows a field the template marks raw.
        declare_formats([])
        got = self.outcome(line({"ua": PAYLOADS["second_ai_log"]}, "-"))
        self.assertNotIsInstance(got, Request)

    def test_bad_formats_are_refused_with_their_reason(self):
        for bad in ("", "start_time,path", "ai_log,ai_log", "ai_log", "{not json",
                    '{"a":"%REQ(X)%"}', '["ai_log","path"]', "ai_log,,path", "x" * 5000):
            with self.subTest(bad=bad[:30]):
                with self.assertRaises(ValueError):
                    parse_log_format(bad)


class ForgedLinesThroughTheMonitor(TempDirTest):
    def ingest(self, log, follow=False) -> tuple[Monitor, str]:
        err = io.StringIO()
        with Monitor(MonitorConfig(log_paths=[str(log)], output_dir=self.out, follow=follow),
                     err=err) as monitor:
            monitor.poll_once()
        return monitor, err.getvalue()

    def test_every_forged_line_is_stored_once_with_its_genuine_session_time_and_tokens(self):
        rng = random.Random(21)
        lines = []
        for n in range(400):
            field = FIELDS[n % len(FIELDS)]
            payload = list(PAYLOADS.values())[n // len(FIELDS) % len(PAYLOADS)]
            if rng.random() < 0.3:
                payload += PAYLOADS[rng.choice(list(PAYLOADS))]
            lines.append(inject(n, {field: payload}))
        log = self.tmp / "access.log"
        write_lines(log, lines)
        _, err = self.ingest(log)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        rounds = docs["alice"]["rounds"]
        self.assertEqual(sorted(r["input_tokens"] for r in rounds), [1000 + n for n in range(400)])
        self.assertEqual({r["timestamp"] for r in rounds}, {GENUINE_TIME})
        self.assertTrue(all("forged" in r["warnings"] for r in rounds))
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["forged_lines"], 400)
        self.assertIn("forged line in", err)
        # Read again from the start (a lost state): nothing is counted twice.
        (self.out / ".state.json").unlink()
        monitor, _ = self.ingest(log)
        self.assertEqual(len(load_store(self.out)["alice"]["rounds"]), 400)

    def test_ai_logs_a_client_wrote_into_custom_formats_are_counted_reported_never_billed(self):
        # Every layout x client field x forging payload through a whole pass: the only
        # session is the genuine one, every refused line is in the state's counters.
        lines, billed = [], []
        for layout in custom_layouts():
            for field in [k for k in layout if k in CLIENT_FIELDS]:
                for name, payload in FORGING_PAYLOADS.items():
                    n = len(lines)
                    lines.append(layout_line(layout, go_json(genuine_ai(n)), {field: payload},
                                             n) + b"\n")
                    if ai_log_is_safe(layout):
                        billed.append(1000 + n)
        log = self.tmp / "access.log"
        write_lines(log, lines)
        _, err = self.ingest(log)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        self.assertEqual(sorted(r["input_tokens"] for r in docs["alice"]["rounds"]), billed)
        state, _ = load_state(self.out / ".state.json", None)
        c = state.counters
        # The lone forged ai_logs of the layouts without one (the others are duplicates):
        # two such layouts per client field, three payloads carrying an AI ai_log.
        self.assertEqual(c["bad_lines"]["untrusted_ai_log"], 2 * len(FIELDS) * 3)
        self.assertEqual(c["lines_read"], len(lines))
        self.assertEqual(c["rounds_stored"] + sum(c["bad_lines"].values()) + c["non_ai_lines"],
                         len(lines))
        self.assertEqual(c["non_ai_lines"] + len(billed), c["forged_lines"])
        self.assertIn("skipped untrusted_ai_log line in", err)
        self.assertIn("log ai_log before every header field", err)

    def test_a_declared_format_is_billed_by_place_and_an_undeclared_one_refused(self):
        layout = ("start_time", "method", "path", "user_agent", "ai_log", "response_code")
        lines = []
        for n in range(60):
            attack = {"user_agent": list(FORGING_PAYLOADS.values())[n % 5]} if n % 3 else {}
            lines.append(layout_line(layout, go_json(genuine_ai(n)), attack, n) + b"\n")
        log = self.tmp / "access.log"
        write_lines(log, lines)
        code, _out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, self.sessions()), (0, {}), err)
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(sum(state.counters["bad_lines"].values())
                         + state.counters["non_ai_lines"], 60)
        # Declared: every genuine round once, the client's copies never.
        (self.out / ".state.json").unlink()
        code, _out, err = self.run_monitor(log, extra=["-q", "--log-format", ",".join(layout)])
        self.assertEqual(code, 0, err)
        docs = self.sessions()
        self.assertEqual(set(docs), {"alice"})
        self.assertEqual(sorted(r["input_tokens"] for r in docs["alice"]["rounds"]),
                         [1000 + n for n in range(60)])
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["forged_lines"], 40)
        code, _out, err = self.run_monitor(log, extra=["--log-format", "path,user_agent"])
        self.assertEqual(code, 2)
        self.assertIn("not a log format", err)

    def test_repeated_x_request_id_is_two_paid_rounds(self):
        # A client sending the same X-Request-Id on every request (or forging one with
        # an earlier round's id) must not make its rounds vanish as "duplicates".
        log = self.tmp / "access.log"
        lines = [inject(n, {"user_agent": PAYLOADS["request_id"]} if n % 2 else {})
                 for n in range(60)]
        lines = [line.replace(f"req-{n:06d}".encode(), b"r-1") for n, line in enumerate(lines)]
        write_lines(log, lines)
        self.ingest(log)
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(sorted(r["input_tokens"] for r in rounds), [1000 + n for n in range(60)])

    def test_re_reading_the_same_bytes_at_the_same_place_counts_nothing_twice(self):
        # Lines without any request_id, then with the same one: re-reading them after a
        # lost state, and after the file was rotated away, adds nothing.
        log = self.tmp / "access.log"
        lines = [inject(n, {}).replace(f"req-{n:06d}".encode(), b"-" if n % 2 else b"same")
                 for n in range(30)]
        write_lines(log, lines)
        self.ingest(log)
        (self.out / ".state.json").unlink()
        self.ingest(log)
        log.rename(self.tmp / "access.log.1")
        (self.out / ".state.json").unlink()
        self.ingest(self.tmp / "access.log.1")
        rounds = load_store(self.out)["alice"]["rounds"]
        self.assertEqual(len(rounds), 30)

    def test_rounds_of_older_stores_keyed_by_request_id_are_recognised_by_their_place(self):
        log = self.tmp / "access.log"
        write_lines(log, [inject(n, {}) for n in range(10)])
        self.ingest(log)
        # Rewrite the store as an older version keyed it: by request_id.
        from agent_session_monitor.store.sessions import dump_document, read_document
        path = self.out / "alice.json"
        doc = read_document(path)
        for r in doc["rounds"]:
            r["key"] = r["request_id"]
        path.write_bytes(dump_document(doc))
        (self.out / ".state.json").unlink()
        self.ingest(log)
        self.assertEqual(len(load_store(self.out)["alice"]["rounds"]), 10)


if __name__ == "__main__":
    unittest.main()
