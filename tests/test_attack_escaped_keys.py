"""A client spells a key with JSON escapes in a format whose headers we do not know.

In an undeclared format with header keys of names not known here (nginx-style
``http_user_agent``), the fast trust check counted sensitive keys by their literal bytes:
``"ai\\u005flog"`` decodes to ``ai_log`` but was not counted, so json kept the client's
second ai_log (another session billed 1 + 1 tokens) or its ``"start\\u005ftime"`` dated
the round, with no warning (found by an outside tester, 30 Nov); now such a line is
decoded key by key, as one with a plain second key is: of two ai_logs only the genuine
one, first in the line, is billed (flagged forged), a second time dates nothing
(tests/test_attack_undeclared_second_ai_log.py: every header position). Generated: each sensitive key escaped at random characters (\\u of either
case), written after a header of an unknown name, in random formats."""

from __future__ import annotations

import json
import random
import unittest

from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import Request

READ_TIME = "2026-11-30T00:00:00.000Z"
GENUINE = {"model": "gpt-4o-2024-08-06", "session_id": "victim", "input_token": 100000,
           "output_token": 50000, "total_token": 150000}
FORGED = {**GENUINE, "session_id": "someone-else", "input_token": 1, "output_token": 1,
          "total_token": 2}
START = "2026-02-01T09:00:00.000Z"


def spelled(rng: random.Random, key: str) -> str:
    out = []
    for ch in key:
        if rng.random() < 0.4:
            code = f"{ord(ch):04x}"
            out.append("\\u" + (code.upper() if rng.random() < 0.5 else code))
        else:
            out.append(ch)
    if "\\u" not in "".join(out):   # at least one escape
        out[0] = f"\\u{ord(key[0]):04x}"
    return "".join(out)


class EscapedKeys(unittest.TestCase):
    def test_escaped_sensitive_keys_never_bill_or_date_a_round(self):
        rng = random.Random(31)
        for n in range(2000):
            headers = [f'"{rng.choice(["http_user_agent", "ua", "x_real_ip", "referer"])}":"v{n}"'
                       for _ in range(rng.randint(1, 3))]
            key = rng.choice(["ai_log", "start_time", "timestamp"])
            value = json.dumps(json.dumps(FORGED)) if key == "ai_log" \
                else '"2019-01-01T00:00:00.000Z"'
            injected = f'"{spelled(rng, key)}":{value}'
            at = rng.randint(1, len(headers))
            fields = [f'"ai_log":{json.dumps(json.dumps(GENUINE))}',
                      f'"start_time":"{START}"', *headers[:at], injected, *headers[at:],
                      '"status":"200"']
            raw = ("{" + ",".join(fields) + "}").encode()
            got = parse_line(raw, READ_TIME)
            # A second ai_log: the genuine one is the line's first key, which no client
            # writes (a header's keys follow its value), so it is billed, flagged.
            self.assertIsInstance(got, Request)
            self.assertEqual((got.session_id, got.input_token), ("victim", 100000), raw)
            self.assertNotEqual(got.timestamp, "2019-01-01T00:00:00.000Z", raw)
            if key != "timestamp":   # a lone "timestamp" may be the format's own: the
                self.assertIn("forged", got.warnings, raw)   # start_time decides anyway

    def test_lines_without_escapes_keep_the_fast_path_result(self):
        raw = ('{"ai_log":' + json.dumps(json.dumps(GENUINE)) + f',"start_time":"{START}",'
               '"http_user_agent":"x","status":"200"}').encode()
        got = parse_line(raw, READ_TIME)
        self.assertEqual((got.session_id, got.input_token, got.timestamp, got.warnings),
                         ("victim", 100000, START, []))


if __name__ == "__main__":
    unittest.main()
