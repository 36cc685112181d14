"""Attack: a client writes extra ai_log keys through a header of a log format that is not
declared and whose header fields have names not known here (nginx-style
``http_user_agent``), hoping to bill another session, or to hide its own paid round.

One of several ai_logs in a line is the format's own; the others are a client's, written
after the value of a raw header. So the genuine one is known only when nothing before it
can be a raw header: every key before the line's first ai_log is one the gateway writes
(forgery.GATEWAY_FIELDS: Higress's own non-header fields, the skill's ``timestamp``,
``__file_offset__``); the line's first key always is one, since a client's keys follow
its header's value. Then the first ai_log is billed, the line flagged ``forged``. Else
(a header of unknown name, or a known raw one, before the first ai_log) no reader can tell
the genuine one from a copy: the line is counted ``ambiguous_ai_log`` (reported, never
billed), or ``forged_non_ai`` when no copy is an AI one. Before, every such line was
dropped as a forged non-AI line: a paid round hidden as a free one, uncounted.

Generated (seeded): formats of gateway keys, unknown-name headers and a known raw one, with
ai_log and the attacked header at every pair of places; 1-3 extra ai_log keys spelled
plain, with \\u escapes (either case) or with blanks around the colon, valued as another
session's round or ``-``; the genuine ai_log a round or ``-``; valid lines and lines a
stray quote broke (the salvage path). Each through parse_line, then a sample through
main.py (cron) and the CLI's summaries.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unittest

from tests.helpers import ROOT, TempDirTest, load_store, write_lines
from tests.test_attack_escaped_keys import spelled
from tests.loggen import go_json
from agent_session_monitor.ingest.forgery import GATEWAY_FIELDS
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request
from agent_session_monitor.ingest.state import load_state

READ_TIME = "2026-03-01T00:00:00.000Z"
START = "2026-02-01T09:00:00.000Z"
GATEWAY = ["start_time", "method", "response_code", "duration", "timestamp",
           "__file_offset__", "route_name"]
UNKNOWN_HEADERS = ["http_user_agent", "http_referer", "ua", "x_real_ip", "http_x_forwarded_for"]
KNOWN_RAW = ["user_agent", "x_forwarded_for"]
FORGED = {"session_id": "victim", "model": "gpt-4o", "input_token": 5_000_000,
          "output_token": 5_000_000}


def genuine_ai(n: int) -> dict:
    return {"session_id": f"alice-{n % 4}", "model": "gpt-4o", "input_token": 1000 + n,
            "output_token": 10 + n % 7, "messages": [{"role": "user", "content": f"q {n}"}]}


def extra_keys(rng: random.Random, count: int) -> tuple[str, list[bool]]:
    """What a client appends to a header's value: ``count`` ai_log keys (closing the
    header's string, the last value left open for the genuine closing quote), and for
    each whether it is an AI one."""
    text, ai = "", []
    for _ in range(count):
        spelling = rng.choice(("plain", "escaped", "blanks"))
        key = spelled(rng, "ai_log") if spelling == "escaped" else "ai_log"
        colon = " : " if spelling == "blanks" else ":"
        is_ai = rng.random() < 0.7
        body = json.dumps(go_json(FORGED))[1:-1] if is_ai else "-"
        text += f'","{key}"{colon}"{body}'
        ai.append(is_ai)
    if rng.random() < 0.3:   # a key of its own last, as if another header followed
        text += '","x_note":"'
    return text, ai


def make_case(rng: random.Random, n: int, layout: list[str], attacked: str) -> dict:
    """A line of ``layout`` (ai_log string-escaped, other values pasted raw) whose
    ``attacked`` header carries 1-3 extra ai_logs; and what must come of it."""
    genuine_is_ai = rng.random() < 0.8
    genuine = go_json(genuine_ai(n)) if genuine_is_ai else "-"
    extra, extra_ai = extra_keys(rng, rng.randint(1, 3))
    broken = rng.random() < 0.25
    parts = []
    for k in layout:
        if k == "ai_log":
            parts.append('"ai_log":' + json.dumps(genuine))
            continue
        value = {"start_time": START, "timestamp": START, "__file_offset__": str(n),
                 "method": "POST", "response_code": "200"}.get(k, f"v{n}")
        if k == attacked:
            value += extra
            if broken:
                value += '" stray'
        parts.append(f'"{k}":"{value}"')
    raw = ("{" + ",".join(parts) + "}").encode()
    g, h = layout.index("ai_log"), layout.index(attacked)
    # The genuine ai_log is the line's first one, with only gateway keys before it.
    known = h > g and all(k in GATEWAY_FIELDS for k in layout[:g])
    if known:
        expect = "billed" if genuine_is_ai else "forged_non_ai"
    else:
        expect = "ambiguous_ai_log" if genuine_is_ai or any(extra_ai) else "forged_non_ai"
    return {"raw": raw, "n": n, "expect": expect, "broken": broken}


def layouts(rng: random.Random) -> list[tuple[list[str], str]]:
    """(layout, attacked header): a five-key format with ai_log and the header at every
    pair of places, then 300 seeded larger formats."""
    out = []
    base = ["start_time", "method", "response_code"]
    for header in ("http_user_agent", "user_agent"):
        for g in range(4):
            for h in range(5):
                layout = base[:g] + ["ai_log"] + base[g:]
                layout.insert(h, header)
                out.append((layout, header))
    for _ in range(300):
        keys = rng.sample(GATEWAY, rng.randint(0, 4)) + rng.sample(UNKNOWN_HEADERS,
                                                                   rng.randint(1, 2))
        if rng.random() < 0.3:
            keys.append(rng.choice(KNOWN_RAW))
        keys.append("ai_log")
        rng.shuffle(keys)
        headers = [k for k in keys if k in UNKNOWN_HEADERS or k in KNOWN_RAW]
        out.append((keys, rng.choice(headers)))
    return out


def generated(seed: int, per_layout: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for layout, attacked in layouts(rng):
        for _ in range(per_layout):
            cases.append(make_case(rng, len(cases), layout, attacked))
    return cases


def outcome(raw: bytes):
    try:
        return parse_line(raw, READ_TIME)
    except BadLine as bad:
        return bad


class SecondAiLogInAnUndeclaredFormat(unittest.TestCase):
    def test_the_genuine_ai_log_is_billed_when_its_place_is_known_else_counted_ambiguous(self):
        cases = generated(16, 6)
        seen: dict[str, int] = {}
        for case in cases:
            raw, n, expect = case["raw"], case["n"], case["expect"]
            got = outcome(raw)
            seen[expect] = seen.get(expect, 0) + 1
            with self.subTest(n=n):
                if isinstance(got, Request):   # never a client's copy
                    self.assertNotEqual(got.session_id, "victim", raw[:300])
                if expect == "billed":
                    self.assertIsInstance(got, Request, raw[:400])
                    self.assertEqual((got.session_id, got.input_token),
                                     (f"alice-{n % 4}", 1000 + n))
                    self.assertIn("forged", got.warnings)
                elif expect == "forged_non_ai":
                    self.assertEqual(got, "forged_non_ai", raw[:400])
                else:
                    self.assertIsInstance(got, BadLine, raw[:400])
                    self.assertEqual(got.kind, "ambiguous_ai_log", raw[:400])
        # The class is covered: each outcome, many times, on valid and broken lines.
        self.assertGreater(len(cases), 1800)
        for kind in ("billed", "forged_non_ai", "ambiguous_ai_log"):
            self.assertGreater(seen.get(kind, 0), 100, seen)
        self.assertGreater(sum(c["broken"] for c in cases), 300)


class SecondAiLogThroughMainAndTheCli(TempDirTest):
    def test_cron_pass_and_cli_bill_the_known_rounds_and_count_the_ambiguous_ones(self):
        cases = generated(61, 1)
        log = self.tmp / "access.log"
        write_lines(log, [c["raw"] + b"\n" for c in cases])
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp)],
            capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        billed = [c for c in cases if c["expect"] == "billed"]
        ambiguous = sum(c["expect"] == "ambiguous_ai_log" for c in cases)
        free = sum(c["expect"] == "forged_non_ai" for c in cases)
        self.assertGreater(min(len(billed), ambiguous, free), 10)
        docs = load_store(self.out)
        self.assertEqual(set(docs), {f"alice-{c['n'] % 4}" for c in billed})
        stored = sorted(r["input_tokens"] for d in docs.values() for r in d["rounds"])
        self.assertEqual(stored, sorted(1000 + c["n"] for c in billed))
        state, _ = load_state(self.out / ".state.json", None)
        counters = state.counters
        self.assertEqual(counters["bad_lines"], {"ambiguous_ai_log": ambiguous})
        self.assertEqual(counters["rounds_stored"], len(billed))
        self.assertEqual(counters["non_ai_lines"], free)
        self.assertEqual(counters["forged_lines"], len(cases) - ambiguous)
        self.assertIn("skipped ambiguous_ai_log line in", run.stderr)
        # The CLI's summaries say the same: the genuine tokens, no victim.
        cli = [sys.executable, str(ROOT / "scripts" / "cli.py"), "--data-dir", str(self.out),
               "--json"]
        listed = json.loads(subprocess.run(cli + ["list"], capture_output=True, text=True,
                                           env=env, check=True, timeout=120).stdout)
        text = json.dumps(listed)
        self.assertNotIn("victim", text)
        models = json.loads(subprocess.run(cli + ["stats-model"], capture_output=True,
                                           text=True, env=env, check=True,
                                           timeout=120).stdout)
        self.assertIn(str(sum(1000 + c["n"] for c in billed)), json.dumps(models))


if __name__ == "__main__":
    unittest.main()
