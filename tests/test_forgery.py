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
from agent_session_monitor.ingest.forgery import CLIENT_FIELDS, HIGRESS_FORMAT
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
        self.assertEqual(n, 29)

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
