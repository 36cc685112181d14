"""Attack: a client that wants a smaller bill, behind a declared custom log format.

With ``--log-format`` declaring a layout whose ai_log follows a raw header
(``start_time,user_agent,ai_log,x_forwarded_for``), a well-formed line is read by place
(forgery._genuine_fields). But Envoy pastes the headers unescaped: a client that sends a
User-Agent or X-Forwarded-For holding one lone ``"`` (or ending in ``\\``) breaks the
line's JSON, and the salvage (forgery._salvage) does not read declared formats by place:
the lone ai_log after a raw header is refused ``untrusted_ai_log``. The client's own
request is then never billed, whatever it cost. Generated: seeded header values with
lone quotes / trailing backslashes in either raw header; the genuine ai_log must be
billed (or, where the line is ambiguous, the request is not lost silently: that is the
bar this test sets, and it fails today).

Known and reported, not fixed here: the salvage must read a broken line by the declared
format's place without letting a line of another (undeclared) layout forge one; that is
forgery.py's owner's design call. expectedFailure flips to an unexpected success (a
failed run) the day it is fixed, so the marker cannot outlive the bug.
"""

from __future__ import annotations

import json
import random
import unittest

from agent_session_monitor.ingest import forgery, history
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine

READ_TIME = "2026-03-01T00:00:00.000Z"
LAYOUT = "start_time,user_agent,ai_log,x_forwarded_for"


def line(ua: str, xff: str, n: int) -> bytes:
    ai = json.dumps({"session_id": "alice", "model": "gpt-4o", "input_token": 1000 + n,
                     "output_token": 10})
    return ('{"start_time":"2026-02-01T09:00:00.000Z","user_agent":"%s","ai_log":%s,'
            '"x_forwarded_for":"%s"}' % (ua, json.dumps(ai), xff)).encode()


class BrokenHeaderUnderADeclaredFormat(unittest.TestCase):
    def setUp(self) -> None:
        forgery.declare_formats([forgery.parse_log_format(LAYOUT)])
        self.addCleanup(forgery.declare_formats, [])
        history.CACHE.clear()

    @unittest.expectedFailure
    def test_a_lone_quote_in_a_raw_header_does_not_unbill_the_request(self):
        rng = random.Random(4242)
        unbilled = []
        for n in range(200):
            ua, xff = "curl/8", "10.0.0.1"
            evil = rng.choice(['x"', 'x\\', '"', 'Mozilla "5.0', 'a"b"c"'])
            if rng.random() < 0.5:
                ua = evil
            else:
                xff = evil
            try:
                got = parse_line(line(ua, xff, n), READ_TIME)
            except BadLine as bad:
                unbilled.append((ua, xff, bad.kind))
                continue
            if isinstance(got, str) or got.input_token != 1000 + n:
                unbilled.append((ua, xff, got))
        self.assertEqual(unbilled, [])


if __name__ == "__main__":
    unittest.main()
