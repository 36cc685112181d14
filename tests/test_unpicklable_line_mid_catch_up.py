"""One client line whose question (any JSON the ai_log holds) or messages nest a few
hundred levels deep: JSON decodes it, pickle refuses it (RecursionError). In a catch-up
its checkpoint goes to the commit process as a pickle, so on main of 09:57 every pass
failed at the same place with an internal error: one line stopped the monitor for good.
Such lines at seeded random places of a cron catch-up must be
stored like any other, and the store must equal the thread-fallback run's."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from tests.helpers import ROOT, load_store, write_lines
from tests.test_commit_process import FAULT_VARS, SEED, SMALL_BATCHES, CommitProcessTest, agent_lines


def deep_line(n: int, depth: int, where: str) -> bytes:
    nested = json.loads("[" * depth + "]" * depth)
    messages = [{"role": "user", "content": nested if where == "messages" else "hi"}]
    ai = {"model": "gpt-4o", "input_token": 7, "output_token": 1, "messages": messages,
          "question": nested if where == "question" else "hi", "answer": "a",
          "session_id": f"deep-{n}"}
    # (start_time before the raw X-Request-Id, or it is not an event time)
    return json.dumps({"ai_log": json.dumps(ai), "start_time": "2026-02-01T09:00:00.000Z",
                       "request_id": f"deep-{n}"}).encode() + b"\n"


class UnpicklableLineMidCatchUp(CommitProcessTest):
    def setUp(self) -> None:
        rng = random.Random(SEED + 9)
        super().setUp()   # self.log: 600 agent lines, self.reference: their thread run
        lines = agent_lines(601, 600, 150, SEED + 6)
        self.deep = 0
        for where in ("question", "messages"):
            lines.insert(rng.randrange(len(lines)), deep_line(self.deep, rng.randint(400, 900), where))
            self.deep += 1
        write_lines(self.log, lines)

    def run_main(self, *extra: str, thread: bool = False, out=None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        env["ASM_COMMIT_PROCESS"] = "0" if thread else "1"
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(out or self.out), "--allow-log-dir", str(self.tmp), "-q", *SMALL_BATCHES, *extra],
            env=env, capture_output=True, text=True, timeout=300)

    def test_a_line_too_deep_to_pickle_is_stored_in_a_catch_up_and_stops_nothing(self):
        reference = self.tmp / "thread"
        run = self.run_main(thread=True, out=reference)
        self.assertEqual(run.returncode, 0, run.stderr)
        run = self.run_main()
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertNotIn("internal error", run.stderr)
        docs = load_store(self.out)
        for n in range(self.deep):
            self.assertIn(f"deep-{n}", docs)
        self.assertEqual(docs, load_store(reference))
        self.reference = reference
        self.assert_converged()
