"""The line parser against every record-level scenario (failure-scenarios.md, B3)."""

from __future__ import annotations

import json
import unittest

from tests.helpers import DATA  # noqa: F401  (puts the repo on sys.path)
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.values import canonical_time

READ_TIME = "2026-03-01T00:00:00.000Z"


def line(ai, **outer) -> bytes:
    body = {"ai_log": json.dumps(ai) if not isinstance(ai, (bytes,)) else ai,
            "start_time": "2026-02-01T09:30:15.123Z", "request_id": "r-1", **outer}
    return json.dumps(body).encode()


AI = {"session_id": "s1", "model": "gpt-4o", "input_token": 10, "output_token": 5}


class ParseTests(unittest.TestCase):
    def assertBad(self, raw: bytes, kind: str) -> None:
        with self.assertRaises(BadLine) as cm:
            parse_line(raw, READ_TIME)
        self.assertEqual(cm.exception.kind, kind)

    def test_plain_line_gives_request(self):
        req = parse_line(line(AI), READ_TIME)
        self.assertIsInstance(req, Request)
        self.assertEqual((req.session_id, req.input_token, req.output_token), ("s1", 10, 5))
        self.assertEqual(req.timestamp, "2026-02-01T09:30:15.123Z")
        self.assertEqual(req.request_id, "r-1")

    def test_ai_log_as_object_is_accepted(self):
        raw = json.dumps({"ai_log": AI, "timestamp": "2026-02-01T09:30:15Z"}).encode()
        req = parse_line(raw, READ_TIME)
        self.assertEqual(req.session_id, "s1")
        self.assertEqual(req.time_source, "timestamp")
        self.assertEqual(req.timestamp, "2026-02-01T09:30:15.000Z")

    def test_numbers_as_strings_are_coerced(self):
        req = parse_line(line({**AI, "input_token": "12", "output_token": "3"}), READ_TIME)
        self.assertEqual((req.input_token, req.output_token), (12, 3))

    def test_bad_token_values_are_rejected(self):
        for bad in (True, -1, 1.5, "12a", "", [1], {"a": 1}, "١٢"):
            with self.subTest(bad=bad):
                self.assertBad(line({**AI, "input_token": bad}), "bad_tokens")

    def test_nan_and_infinity_are_rejected(self):
        self.assertBad(b'{"ai_log":{"session_id":"s","input_token":NaN}}', "bad_json")
        raw = json.dumps({"ai_log": '{"session_id":"s","output_token":Infinity}'}).encode()
        self.assertBad(raw, "bad_ai_log")

    def test_count_no_request_can_have_is_out_of_range_not_a_crash(self):
        req = parse_line(line({**AI, "input_token": 2**40}), READ_TIME)
        self.assertEqual(req.input_token, 2**40)
        for count in (2**40 + 1, 2**60, 2**63, 2**64, 10**30, "99999999999999999999", 1e300):
            self.assertBad(line({**AI, "input_token": count}), "out_of_range")
        self.assertBad(line({**AI, "input_token_details": {"cached_tokens": 2**64}}),
                       "out_of_range")

    def test_5000_digit_integer_is_bad_not_a_crash(self):
        raw = b'{"ai_log":{"session_id":"s","input_token":' + b"9" * 5000 + b"}}"
        with self.assertRaises(BadLine):
            parse_line(raw, READ_TIME)

    def test_non_ai_and_blank_lines(self):
        self.assertEqual(parse_line(b'{"ai_log":"-","path":"/healthz"}', READ_TIME), "non_ai")
        self.assertEqual(parse_line(b'{"path":"/x"}', READ_TIME), "non_ai")
        self.assertEqual(parse_line(b"", READ_TIME), "blank")
        self.assertEqual(parse_line(b"  \r", READ_TIME), "blank")

    def test_crlf_bom_and_leading_nuls_are_stripped(self):
        raw = b"\x00" * 50 + b"\xef\xbb\xbf" + line(AI) + b"\r"
        self.assertIsInstance(parse_line(raw, READ_TIME), Request)

    def test_invalid_utf8(self):
        self.assertBad(b'{"ai_log":"\xff"}', "bad_utf8")

    def test_invalid_json_and_non_objects(self):
        self.assertBad(b'{"ai_log": ', "bad_json")
        for raw in (b"[]", b"1", b'"x"', b"null"):
            self.assertBad(raw, "not_object")

    def test_raw_nul_inside_line_is_bad_json(self):
        self.assertBad(b'{"ai_log":\x00"-"}', "bad_json")

    def test_ai_log_not_json_or_not_object(self):
        self.assertBad(json.dumps({"ai_log": "{not json"}).encode(), "bad_ai_log")
        self.assertBad(json.dumps({"ai_log": "[1,2]"}).encode(), "bad_ai_log")
        self.assertBad(json.dumps({"ai_log": 5}).encode(), "bad_ai_log")

    def test_deep_nesting_is_bad_json_not_recursion_error(self):
        self.assertBad(b"[" * 100000 + b"]" * 100000, "bad_json")
        deep = json.dumps({"ai_log": "[" * 100000}).encode()
        self.assertBad(deep, "bad_ai_log")

    def test_session_id_missing_empty_or_not_a_string(self):
        for value, warning in ((None, None), ("", None), (123, "bad_session_id"),
                               ({}, "bad_session_id")):
            with self.subTest(value=value):
                req = parse_line(line({**AI, "session_id": value}), READ_TIME)
                self.assertIsNone(req.session_id)   # never str(123): it goes unsessioned
                if warning:
                    self.assertIn(warning, req.warnings)

    def test_a_session_id_written_twice_with_two_values_is_a_bad_line_not_the_last_one(self):
        # json keeps the last silently; the plugin never repeats a key (ai_log.repeated_keys,
        # tests/test_ai_log_duplicate_keys.py).
        raw = b'{"ai_log":"{\\"session_id\\":\\"a\\",\\"session_id\\":\\"b\\"}"}'
        with self.assertRaises(BadLine) as caught:
            parse_line(raw, READ_TIME)
        self.assertEqual(caught.exception.kind, "duplicate_key")

    def test_lone_surrogate_survives(self):
        raw = line({**AI, "question": "x\ud800y"})
        req = parse_line(raw, READ_TIME)
        self.assertEqual(req.ai["question"], "x\ud800y")

    def test_control_characters_kept_verbatim(self):
        req = parse_line(line({**AI, "answer": "\x1b[2J\r\u202e"}), READ_TIME)
        self.assertEqual(req.ai["answer"], "\x1b[2J\r\u202e")

    def test_raw_tab_inside_the_ai_log_is_a_bad_line_and_in_a_header_is_salvaged(self):
        # Go's json.Marshal escapes every control character: a raw one in the ai_log was
        # not written by the plugin. Envoy pastes a header's HTAB raw: the round stays.
        self.assertBad(b'{"ai_log":{"session_id":"s\tt","input_token":1}}', "raw_control_char")
        raw = json.dumps({"ai_log": json.dumps(AI), "user_agent": "a\tb"},
                         separators=(",", ":")).encode().replace(b"a\\tb", b"a\tb")
        req = parse_line(raw, READ_TIME)
        self.assertEqual(req.session_id, "s1")
        self.assertIn("raw_control_char", req.warnings)

    def test_details_as_strings_objects_or_junk(self):
        req = parse_line(line({**AI, "input_token_details": '{"cached_tokens":4}',
                               "output_token_details": {"reasoning_tokens": 2}}), READ_TIME)
        self.assertEqual(req.input_details, {"cached_tokens": 4})
        self.assertEqual(req.output_details, {"reasoning_tokens": 2})
        req = parse_line(line({**AI, "input_token_details": "{oops"}), READ_TIME)
        self.assertEqual(req.input_details, {})
        self.assertIn("bad_details", req.warnings)

    def test_missing_event_time_falls_back_to_read_time_flagged(self):
        raw = json.dumps({"ai_log": json.dumps(AI)}).encode()
        req = parse_line(raw, READ_TIME)
        self.assertEqual(req.timestamp, READ_TIME)
        self.assertEqual(req.time_source, "read")
        self.assertIn("time_from_read", req.warnings)

    def test_salvage_takes_the_ai_log_by_its_place_when_a_header_repeats_it(self):
        good = json.dumps(AI).replace('"', '\\"')
        broken = ('{"ai_log":"' + good + '","user_agent":"x "y" z"}').encode()
        req = parse_line(broken, READ_TIME)
        self.assertIn("salvaged", req.warnings)
        self.assertNotIn("forged", req.warnings)
        hostile = ('{"ai_log":"' + good + '","user_agent":"a" "ai_log":"{}"}').encode()
        req = parse_line(hostile, READ_TIME)
        self.assertEqual(req.ai, AI)
        self.assertIn("forged", req.warnings)
        # Without the genuine key first, two ai_logs after a header cannot be told apart:
        # counted as such, never billed (f273c5d: reading by place names the case).
        ambiguous = ('{"user_agent":"a" "ai_log":"{}","ai_log":"' + good + '"}').encode()
        self.assertBad(ambiguous, "ambiguous_ai_log")

    def test_missing_usage_is_marked(self):
        req = parse_line(line({"session_id": "s"}), READ_TIME)
        self.assertFalse(req.has_usage)
        self.assertEqual((req.input_token, req.output_token), (0, 0))


class CanonicalTimeTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(canonical_time("2026-02-01T09:30:15.123Z"), ("2026-02-01T09:30:15.123Z", False))
        self.assertEqual(canonical_time("2026-02-01T09:30:15Z"), ("2026-02-01T09:30:15.000Z", False))
        self.assertEqual(canonical_time("2026-02-01T17:30:15+08:00"), ("2026-02-01T09:30:15.000Z", False))
        self.assertEqual(canonical_time("2026-02-01T09:30:15"), ("2026-02-01T09:30:15.000Z", True))
        self.assertIsNone(canonical_time("yesterday"))


if __name__ == "__main__":
    unittest.main()


class OutOfRangeNumbers(unittest.TestCase):
    def test_a_float_beyond_double_range_is_bad_not_infinity(self):
        raw = json.dumps({"ai_log": '{"session_id":"s","input_token":1,"x":1e999}'}).encode()
        with self.assertRaises(BadLine) as cm:
            parse_line(raw, READ_TIME)
        self.assertEqual(cm.exception.kind, "bad_ai_log")

    def test_store_never_wedges_on_an_unserialisable_round(self):
        from agent_session_monitor.store.sessions import dump_document
        from agent_session_monitor.store.document import new_document

        doc = new_document("s")
        doc["rounds"] = [{"key": "a", "input_tokens": 5, "answer": float("inf")},
                         {"key": "b", "input_tokens": 7, "answer": "fine"}]
        out = json.loads(dump_document(doc))
        self.assertEqual([r["input_tokens"] for r in out["rounds"]], [5, 7])
        self.assertEqual(out["rounds"][0]["warnings"], ["unserialisable_content"])
        self.assertEqual(out["rounds"][1]["answer"], "fine")
