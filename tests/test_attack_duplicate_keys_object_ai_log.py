"""Attack: a key written twice inside an ai_log written as a JSON *object*.

Some producers (older configs, the skill's own examples) put an object in ``ai_log``
instead of a string (input-format.md: accept both). A repeated key was detected only in
the string form: in the object form json kept the last copy silently, so two
``input_token`` members billed whichever came last. Both forms must be one policy
(ai_log.repeated_keys): differing copies of a billing key never billed
(``duplicate_key`` bad line), equal copies billed and flagged. Generated: every billing
and harmless key x equal / different copies x every place x with and without messages
x detail maps as strings and as objects (a bucket repeated inside) x Higress's line and
the skill's example line, each read in both forms: the outcomes must be the same.
"""

from __future__ import annotations

import itertools
import json
import random
import unittest

from agent_session_monitor.ingest import history
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state
from tests.helpers import TempDirTest, load_store, write_lines
from tests.test_ai_log_duplicate_keys import (HARMLESS, MONEY, ai_text, higress, members,
                                              outcome, skill)

# Detail maps written as objects (an empty or custom attribute config), a bucket twice:
# (equal copies, differing copies).
OBJECT_DETAILS = {
    "input_token_details": ('{"cached_tokens":0,"cached_tokens":0}',
                            '{"cached_tokens":0,"cached_tokens":900}'),
    "output_token_details": ('{"reasoning_tokens":7,"reasoning_tokens":7}',
                             '{"reasoning_tokens":7,"reasoning_tokens":0}'),
}


def as_object(line: bytes, ai: str, fmt) -> bytes:
    """The same line with its ai_log written as the object itself, not a string."""
    encoded = json.dumps(ai).encode() if fmt is skill else json.dumps(ai, ensure_ascii=False).encode()
    assert encoded in line, (line[:200], encoded[:200])
    return line.replace(encoded, ai.encode(), 1)


def summary(got) -> tuple:
    if isinstance(got, BadLine):
        return ("bad", got.kind)
    if isinstance(got, str):
        return ("skipped", got)
    return ("round", got.session_id, got.input_token, got.output_token, got.cached_tokens,
            got.ai.get("model"), json.dumps(got.input_details, sort_keys=True),
            json.dumps(got.output_details, sort_keys=True), sorted(got.warnings))


class ObjectAndStringAiLogsAreOnePolicy(unittest.TestCase):
    def test_every_repeated_key_gives_the_same_outcome_in_both_forms(self):
        cases = 0
        keys = {**MONEY, **HARMLESS, **{f"{k} (object)": v for k, v in OBJECT_DETAILS.items()}}
        for (name, (genuine, other)), same, fmt, with_messages in itertools.product(
                keys.items(), (True, False), (higress, skill), (True, False)):
            key = name.split(" ")[0]
            base = members(3, with_messages)
            if name.endswith("(object)"):
                pairs = [(k, (genuine if same else other) if k == key else v) for k, v in base]
                variants = [(0, pairs)]
            else:
                variants = []
                for at in range(len(base) + 1):
                    pairs = [(k, v if k != key else genuine) for k, v in base]
                    pairs.insert(at, (key, genuine if same else other))
                    variants.append((at, pairs))
            for at, pairs in variants:
                history.CACHE.clear()
                history.RAW.clear()
                ai = ai_text(pairs)
                as_string = fmt(ai, 2)
                string_got, object_got = outcome(as_string), outcome(as_object(as_string, ai, fmt))
                with self.subTest(key=name, same=same, fmt=fmt.__name__, messages=with_messages,
                                  at=at):
                    self.assertEqual(summary(object_got), summary(string_got), ai[:200])
                    if key in MONEY and not same:
                        self.assertEqual(summary(object_got), ("bad", "duplicate_key"))
                    elif isinstance(object_got, Request):
                        self.assertIn("duplicate_key", object_got.warnings)
                cases += 1
        self.assertGreater(cases, 800)

    def test_plain_object_ai_logs_are_not_flagged(self):
        rng = random.Random(5)
        for n in range(200):
            fmt = rng.choice((higress, skill))
            ai = ai_text(members(n, rng.random() < 0.8))
            got = outcome(as_object(fmt(ai, n), ai, fmt))
            self.assertIsInstance(got, Request)
            self.assertNotIn("duplicate_key", got.warnings)


class ObjectAiLogsThroughTheMonitor(TempDirTest):
    def test_differing_copies_are_never_billed_equal_ones_billed_and_flagged(self):
        rng = random.Random(11)
        lines, billed = [], []
        for n in range(200):
            key = rng.choice(list(MONEY) + list(HARMLESS))
            genuine, other = {**MONEY, **HARMLESS}[key]
            same = rng.random() < 0.4
            pairs = [(k, str(1000 + n) if k == "input_token" and key != k else v)
                     for k, v in members(n)]
            pairs.insert(rng.randrange(len(pairs) + 1), (key, genuine if same else other))
            ai = ai_text(pairs)
            lines.append(as_object(skill(ai, n), ai, skill) + b"\n")
            if same or key in HARMLESS:
                billed.append(1000 + n if key != "input_token" else 1000)
        log = self.tmp / "access.log"
        write_lines(log, lines)
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {"alice"})
        self.assertEqual(sorted(r["input_tokens"] for r in docs["alice"]["rounds"]),
                         sorted(billed))
        state, _ = load_state(self.out / ".state.json", None)
        self.assertEqual(state.counters["bad_lines"]["duplicate_key"], 200 - len(billed))
        self.assertEqual(state.counters["warnings"]["duplicate_key"], len(billed))
        self.assertIn("skipped duplicate_key line in", err)


if __name__ == "__main__":
    unittest.main()
