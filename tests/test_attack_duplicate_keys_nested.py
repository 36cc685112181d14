"""Attack: a key written twice *inside* the objects a bill is read from.

The ai_log's own duplicate keys are refused (test_ai_log_duplicate_keys); the same
writer can instead repeat a bucket inside ``input_token_details`` /
``output_token_details`` (as an object, or as the JSON text the plugin writes) or the
``cost`` inside ``usage``: json keeps the last copy silently, so cached_tokens 0 then 900
moved 900 input tokens to the cached price. Generated (seeded): every nested billing
member, object and text form, the key spelled plain or with \\u escapes (which decode to
the same key), copies that differ by value or only by JSON type (1, 1.0, true), equal
copies, repeats two levels deep, and 10,000 copies of one key; through parse_line and
through the monitor (counted by kind, nothing differing ever billed).
"""

from __future__ import annotations

import io
import json
import random
import unittest

from agent_session_monitor.ingest import history
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state
from tests.helpers import TempDirTest, load_store, write_lines
from tests.test_ai_log_duplicate_keys import READ_TIME, ai_text, higress, members, skill

BUCKETS = {"input_token_details": ("cached_tokens", "audio_tokens", "cache_creation_tokens"),
           "output_token_details": ("reasoning_tokens", "audio_tokens"),
           "usage": ("cost",)}


def spell(key: str, rng: random.Random) -> str:
    """The key as JSON string content: some characters \\u-escaped (same decoded key)."""
    return "".join(f"\\u{ord(c):04x}" if rng.random() < 0.3 else c for c in key)


def nested_ai(member: str, inner_pairs: list[tuple[str, str]], as_text: bool,
              n: int = 2) -> str:
    inner = "{" + ",".join(f'"{k}":{v}' for k, v in inner_pairs) + "}"
    value = json.dumps(inner) if as_text else inner
    pairs = dict(members(n))
    if member == "usage":
        pairs["cost"] = "null"   # only usage.cost reports the provider's cost
    pairs[member] = value
    return ai_text(sorted(pairs.items()))


def outcome(raw: bytes):
    try:
        return parse_line(raw, READ_TIME)
    except BadLine as bad:
        return bad


def copies(rng: random.Random) -> tuple[str, str, bool]:
    """Two JSON texts for one bucket and whether they are the same value."""
    kind = rng.randrange(4)
    a = rng.randrange(0, 2000)
    if kind == 0:
        return str(a), str(a), True
    if kind == 1:
        return str(a), str(a + rng.randrange(1, 900)), False
    if kind == 2:   # same number to Python's ==, not to a bill
        return rng.choice([("1", "true"), ("true", "1"), ("0", "false"), ("1", "1.0")]) + (False,)
    return str(a), json.dumps(str(a + 1)), False


class NestedDuplicateBillingKeys(unittest.TestCase):
    def setUp(self) -> None:
        history.CACHE.clear()
        history.RAW.clear()

    def test_differing_copies_of_a_bucket_or_usage_cost_are_never_billed(self):
        rng = random.Random(20261130)
        checked = {True: 0, False: 0}
        for case in range(1500):
            self.setUp()
            member = rng.choice(list(BUCKETS))
            key = rng.choice(BUCKETS[member])
            first, second, same = copies(rng)
            pairs = [(spell(key, rng), first), (spell(key, rng), second)]
            if rng.random() < 0.5:
                pairs.insert(1, ("text_tokens", "5"))
            if rng.random() < 0.3:   # the repeat one level deeper
                pairs = [("nested", "{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}")]
            as_text = rng.random() < 0.5
            fmt = rng.choice((higress, skill))
            if rng.random() < 0.5:   # warm history caches: the session's previous request
                parse_line(fmt(ai_text(members(1)), 1), READ_TIME)
            got = outcome(fmt(nested_ai(member, pairs, as_text), case + 2))
            what = (case, member, pairs, as_text, fmt.__name__)
            if same:
                self.assertIsInstance(got, Request, (what, got))
                self.assertIn("duplicate_key", got.warnings, what)
            else:
                self.assertIsInstance(got, BadLine, (what, got))
                self.assertEqual(got.kind, "duplicate_key", what)
                self.assertIn(key, got.detail, what)
            checked[same] += 1
        self.assertGreater(min(checked.values()), 200)

    def test_ten_thousand_equal_copies_then_one_that_differs(self):
        for as_text in (False, True):
            self.setUp()
            pairs = [("cached_tokens", "7")] * 10000
            got = outcome(higress(nested_ai("input_token_details", pairs, as_text)))
            self.assertIsInstance(got, Request, got)
            self.assertEqual(got.input_details, {"cached_tokens": 7})
            self.assertIn("duplicate_key", got.warnings)
            self.setUp()
            got = outcome(higress(nested_ai("input_token_details",
                                            pairs + [("cached_tokens", "8")], as_text)))
            self.assertIsInstance(got, BadLine, got)
            self.assertEqual(got.kind, "duplicate_key")

    def test_a_plain_detail_map_and_usage_are_not_flagged(self):
        for member, pairs in (("input_token_details", [("cached_tokens", "3")]),
                              ("output_token_details", [("reasoning_tokens", "2")]),
                              ("usage", [("cost", "0.25")])):
            for as_text in (False, True):
                self.setUp()
                got = outcome(higress(nested_ai(member, pairs, as_text)))
                self.assertIsInstance(got, Request, got)
                self.assertNotIn("duplicate_key", got.warnings)


class NestedDuplicatesThroughTheMonitor(TempDirTest):
    def test_only_rounds_without_differing_nested_copies_are_stored(self):
        rng = random.Random(77)
        lines, billed, refused = [], [], 0
        for n in range(200):
            member = rng.choice(list(BUCKETS))
            key = rng.choice(BUCKETS[member])
            first, second, same = copies(rng)
            ai_s = nested_ai(member, [(key, first), (spell(key, rng), second)],
                             rng.random() < 0.5, n).replace(
                '"input_token":1000', f'"input_token":{5000 + n}')
            lines.append(higress(ai_s, n) + b"\n")
            if same:
                billed.append(5000 + n)
            else:
                refused += 1
        log = self.tmp / "access.log"
        write_lines(log, lines)
        err = io.StringIO()
        with Monitor(MonitorConfig(log_paths=[str(log)], output_dir=self.out), err=err) as m:
            m.poll_once()
        docs = load_store(self.out)
        got = sorted(r["input_tokens"] for d in docs.values() for r in d["rounds"])
        self.assertEqual(got, sorted(billed))
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["bad_lines"].get("duplicate_key", 0), refused)
        self.assertEqual(state.counters["warnings"].get("duplicate_key", 0), len(billed))


if __name__ == "__main__":
    unittest.main()
