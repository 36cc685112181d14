"""A client ends its headers with escaped backslashes to hide the quotes of keys it adds.

The fast trust check of a Higress line counts the quotes after the ai_log and took every
``\\"`` for an escaped quote. A header value ending in an escaped backslash ends with
``\\\\"``: a real quote. With authority, path and x_forwarded_for so ended and a
User-Agent of ``a\\\\","ai_log":"<its own>``, the count matched, the line passed as
clean and json kept the client's ai_log: another session billed 1 + 1 tokens, no warning
(found by an outside tester, 30 Nov). Generated: every subset of the client headers
ending in 1-3 escaped backslashes, a second ai_log / start_time / request_id / session
written into one of them; the genuine round must be what is billed, and dated, always."""

from __future__ import annotations

import json
import random
import unittest

from agent_session_monitor.ingest.forgery import HIGRESS_FORMAT
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import Request

READ_TIME = "2026-11-30T00:00:00.000Z"
GENUINE = {"model": "gpt-4o-2024-08-06", "session_id": "victim", "input_token": 100000,
           "output_token": 50000, "total_token": 150000, "response_type": "normal",
           "chat_round": 1}
FORGED = {**GENUINE, "session_id": "someone-else", "input_token": 1, "output_token": 1,
          "total_token": 2}
CLIENT = ("authority", "path", "user_agent", "x_forwarded_for", "request_id", "trace_id",
          "requested_server_name")
START = "2026-02-01T09:30:15.123Z"


def esc(text: str) -> str:
    return json.dumps(text)[1:-1]


def higress_line(values: dict) -> bytes:
    parts = []
    for key in HIGRESS_FORMAT:
        parts.append(f'"{key}":"{values.get(key, "-")}"')
    return ("{" + ",".join(parts) + "}").encode()


INJECTIONS = {
    "ai_log": '","ai_log":"' + esc(json.dumps(FORGED)),
    "start_time": '","start_time":"2020-01-01T00:00:00.000Z',
    "request_id": '","request_id":"forged-id',
    "two": '","start_time":"2020-01-01T00:00:00.000Z","ai_log":"' + esc(json.dumps(FORGED)),
}


class EscapedBackslashHeaders(unittest.TestCase):
    def test_headers_ending_in_escaped_backslashes_never_replace_the_genuine_round(self):
        rng = random.Random(30)
        cases = 0
        for _ in range(3000):
            values = {"ai_log": esc(json.dumps(GENUINE)), "start_time": START,
                      "request_id": "rid-1", "method": "POST", "response_code": "200"}
            for header in CLIENT:
                if header != "request_id":
                    values[header] = "v"
                if rng.random() < 0.6:
                    values[header] = values.get(header, "v") + "\\\\" * rng.randint(1, 3)
            carrier = rng.choice(CLIENT)
            name, payload = rng.choice(sorted(INJECTIONS.items()))
            values[carrier] = values.get(carrier, "v") + "\\\\" * rng.randint(0, 2) + payload
            raw = higress_line(values)
            try:
                json.loads(raw)
            except ValueError:
                continue   # not JSON: the salvage path, tested elsewhere
            cases += 1
            got = parse_line(raw, READ_TIME)
            if isinstance(got, str):
                self.fail(f"{name} via {carrier}: refused as {got}: {raw[:300]!r}")
            self.assertIsInstance(got, Request)
            self.assertEqual((got.session_id, got.input_token, got.output_token),
                             ("victim", 100000, 50000), (name, carrier, raw[:400]))
            self.assertIn("forged", got.warnings, (name, carrier))
            self.assertNotEqual(got.timestamp, "2020-01-01T00:00:00.000Z", (name, carrier))
        self.assertGreater(cases, 1000)

    def test_the_outside_testers_line(self):
        values = {"ai_log": esc(json.dumps(GENUINE)), "start_time": START,
                  "request_id": "rid-1", "authority": "llm.example.com\\\\",
                  "path": "/v1/chat/completions\\\\", "x_forwarded_for": "1.2.3.4\\\\",
                  "user_agent": "a\\\\" + INJECTIONS["ai_log"]}
        got = parse_line(higress_line(values), READ_TIME)
        self.assertEqual((got.session_id, got.input_token, got.output_token),
                         ("victim", 100000, 50000))
        self.assertIn("forged", got.warnings)


if __name__ == "__main__":
    unittest.main()
