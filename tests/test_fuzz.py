"""Fuzzing: random mutations of the fixture lines through the parser, the round builder,
the session store's serialiser and the renderers. Nothing may raise but BadLine, and
everything rendered must stay inert.

    ASM_FUZZ_CASES=200000 python3 -m unittest tests.test_fuzz     # longer run
"""

from __future__ import annotations

import json
import os
import random
import unittest

from tests.helpers import DATA
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.pricing.table import load_price_table
from agent_session_monitor.ingest.rounds import build_round
from agent_session_monitor.store.document import Session, new_document, summarise
from agent_session_monitor.store.sessions import dump_document

CASES = int(os.environ.get("ASM_FUZZ_CASES", "20000"))
SEED = int(os.environ.get("ASM_FUZZ_SEED", "99"))
NASTY = [b"NaN", b"Infinity", b"-1", b"1e309", b"9" * 5000, b"true", b'"\\ud800"', b"null",
         b'"\\u001b[2J"', b"[" * 3000, b'{"a":' * 3000, b"\x00", b"\xff", b"\\", b'"',
         b'"</script><script>alert(1)</script>"', b"\r", b"\xe2\x80\xae"]


def mutate(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if not data:
            data = bytearray(b"{}")
        at = rng.randrange(len(data))
        if op == 0:                                   # flip bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:                                 # cut
            data = data[:at]
        elif op == 2:                                 # duplicate a slice
            end = min(len(data), at + rng.randint(1, 200))
            data[at:at] = data[at:end]
        elif op == 3:                                 # nasty token in place of a value
            data[at:at + rng.randint(0, 6)] = rng.choice(NASTY)
        elif op == 4:                                 # swap a number for a huge or odd one
            text = bytes(data)
            digit = next((i for i in range(at, len(text)) if text[i:i + 1].isdigit()), None)
            if digit is not None:
                data[digit:digit + 1] = rng.choice([b"99999999999999999999", b"-5", b"1.5",
                                                    b"NaN", b"0x10"])
        elif op == 5:                                 # deep nesting inside the ai_log string
            data[at:at] = b"[" * rng.randint(100, 5000)
        else:                                         # control characters
            data[at:at] = bytes(rng.choice([0, 7, 8, 13, 27, 127]) for _ in range(3))
    return bytes(data)


class ParserFuzz(unittest.TestCase):
    def test_mutated_fixture_lines_never_crash_the_pipeline(self):
        rng = random.Random(SEED)
        table = load_price_table()
        lines = [raw.rstrip(b"\n") for name in ("higress-realistic.log", "skill-example-access.log",
                                                 "skill-example-access-v2.log")
                 for raw in (DATA / name).read_bytes().splitlines()]
        outcomes = {"request": 0, "bad": 0, "skip": 0}
        session = Session(new_document("fuzz"), "fuzz.json")
        for case in range(CASES):
            raw = mutate(rng, rng.choice(lines))
            try:
                result = parse_line(raw, "2026-03-01T00:00:00.000Z")
            except BadLine as bad:
                outcomes["bad"] += 1
                self.assertTrue(bad.kind)
                continue
            except Exception as e:   # anything else is a bug: show the case to replay it
                self.fail(f"case {case} (seed {SEED}) raised {type(e).__name__}: {e!r}; line {raw[:200]!r}")
            if not isinstance(result, Request):
                outcomes["skip"] += 1
                continue
            outcomes["request"] += 1
            rnd = build_round(result, f"k{case}", {"fp": "f", "offset": case}, table)
            session.add(rnd, result.ai.get("messages"))
            if case % 500 == 0:
                summarise(session.doc)
                data = dump_document(session.doc)
                json.loads(data)
                session = Session(new_document("fuzz"), "fuzz.json")
        self.assertGreater(outcomes["bad"], CASES // 10)
        self.assertGreater(outcomes["request"], CASES // 20)
