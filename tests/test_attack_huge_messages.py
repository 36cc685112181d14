"""Content holding more lists and objects than MAX_CONTAINERS is kept as its JSON text,
never decoded: one request cannot make the monitor hold gigabytes.

A cold attacker logged a 9 MB line whose messages were 18,000 objects 70 levels deep:
decoded whole before the depth check, it peaked at 498 MB (~55 times the line); at
--max-line-bytes' 64 MiB a client's one request needs several GB. Shallow objects do
the same (each decoded dict ~400 bytes). Now a line with more than MAX_CONTAINERS
brackets is decoded member by member, and a content member holding more is kept as the
text it was logged as (nested_as_text, warning huge_messages); the round is billed with
the gateway's counts."""

from __future__ import annotations

import random
import unittest

from tests.loggen import envoy_line, go_json
from tests.helpers import parse_with_peak
from tests.test_forgery import genuine_outer
from agent_session_monitor.ingest import history
from agent_session_monitor.ingest.nesting import MAX_CONTAINERS
from agent_session_monitor.ingest.request import BadLine, Request

READ_TIME = "2026-03-01T00:00:00.000Z"
SEED = 2026


def many(rng: random.Random, count: int) -> str:
    """A JSON list of ``count`` small containers, shallow or a few levels deep."""
    shape = rng.choice(('{"a":1}', "[]", '{"role":"user","content":[{"type":"text"}]}',
                        '{"k":' * 5 + "1" + "}" * 5))
    per = shape.count("{") + shape.count("[")
    return "[" + ",".join([shape] * (count // per)) + "]"


class HugeContent(unittest.TestCase):
    def parse(self, text: str):
        history.CACHE.clear()
        history.RAW.clear()
        raw = envoy_line(genuine_outer(1), text).rstrip(b"\n")
        req, peak = parse_with_peak(raw, READ_TIME)
        return req, peak, len(raw)

    def test_every_place_is_billed_kept_as_text_and_small(self):
        rng = random.Random(SEED)
        for place in ("messages", "question", "system", "answer", "tool_calls", "safecheck"):
            for count in ((MAX_CONTAINERS + 1, 3 * MAX_CONTAINERS) if place == "messages"
                          else (MAX_CONTAINERS + 1,)):
                body = many(rng, count)
                ai = {"session_id": "s", "model": "gpt-4o", "input_token": 1234,
                      "output_token": 56, place: "HERE"}
                text = go_json(ai).replace(go_json("HERE"), body, 1)
                with self.subTest(place=place, count=count):
                    req, peak, size = self.parse(text)
                    self.assertIsInstance(req, Request)
                    self.assertEqual((req.session_id, req.input_token, req.output_token,
                                      req.ai["model"]), ("s", 1234, 56, "gpt-4o"))
                    self.assertIn("huge_messages", req.warnings)
                    self.assertEqual(req.ai[place], body)   # the text as it was logged
                    self.assertEqual(req.nested_as_text, (place,))
                    # the line and the text kept, a few times over: never decoded
                    self.assertLess(peak, 6 * size + 2**20, (place, count))

    def test_at_the_limit_content_is_decoded_as_before(self):
        body = "[" + ",".join(['{"a":1}'] * (MAX_CONTAINERS // 2)) + "]"
        text = go_json({"session_id": "s", "model": "gpt-4o", "input_token": 7,
                        "output_token": 1, "question": "HERE"}).replace(go_json("HERE"), body)
        req, _peak, _size = self.parse(text)
        self.assertNotIn("huge_messages", req.warnings)
        self.assertEqual(len(req.ai["question"]), MAX_CONTAINERS // 2)

    def test_a_huge_field_the_gateway_writes_is_decoded_or_refused_never_kept(self):
        # usage and the detail maps decide the bill: never kept as text (decoded as
        # ever: json decides whether it is a usage at all).
        body = many(random.Random(1), MAX_CONTAINERS + 5)
        text = go_json({"session_id": "s", "model": "gpt-4o", "input_token": 7,
                        "output_token": 1, "input_token_details": "HERE"}).replace(
            go_json("HERE"), body)
        try:
            req, _peak, _size = self.parse(text)
        except BadLine:
            return
        self.assertNotIn("input_token_details", req.nested_as_text)
