"""A commit process that stops answering (kill -STOP, a debugger, a frozen NFS mount):
the monitor must not wait for it forever. It gives up after ASM_COMMIT_TIMEOUT seconds
without progress, kills the child, says so in one line and rewinds: nothing lost, nothing
counted twice, no process left behind, and a restart converges to an uninterrupted run.
The moment of the stop is drawn at random (seeded) over the catch-up, so the child is
caught reading a batch (the monitor blocked in its write), writing one (the monitor
blocked on the reply) or between batches."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path
from unittest import mock

from agent_session_monitor.ingest import commit_process
from tests.helpers import ROOT, write_lines
from tests.test_commit_process import (
    FAULT_VARS, SEED, SMALL_BATCHES, CommitProcessTest, agent_lines,
)

TIMEOUT = 2   # seconds without progress before the monitor gives up on its child


def child_of(pid: int, deadline: float) -> int | None:
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        if children:
            return int(children[0])
        time.sleep(0.002)
    return None


class HungCommitProcess(CommitProcessTest):
    def setUp(self) -> None:
        super().setUp()
        write_lines(self.log, agent_lines(601, 1400, 150, SEED + 4))
        self.reference = self.tmp / "reference-long"
        with mock.patch.dict(os.environ, {commit_process.DISABLE_ENV: "0"}):
            self.assertEqual(self.run_monitor(self.log, out=self.reference)[0], 0)

    def start(self, *extra: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        env[commit_process.TIMEOUT_ENV] = str(TIMEOUT)
        return subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "-q", *SMALL_BATCHES, *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

    def stop_child_at_random(self, proc: subprocess.Popen, rng: random.Random) -> int | None:
        child = child_of(proc.pid, time.monotonic() + 60)
        if child is None:
            return None
        time.sleep(rng.uniform(0, 0.6))
        try:
            os.kill(child, signal.SIGSTOP)
        except ProcessLookupError:
            return None
        return child

    def test_stopped_commit_process_is_given_up_on_with_one_line_in_cron_mode(self):
        rng = random.Random(SEED)
        stopped_runs = 0
        for attempt in range(4):
            with self.subTest(attempt=attempt):
                self.fresh_store()
                proc = self.start()
                child = self.stop_child_at_random(proc, rng)
                try:
                    _out, err = proc.communicate(timeout=TIMEOUT * 10 + 30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    self.fail("the monitor waited for its stopped commit process forever")
                finally:
                    if child is not None:
                        try:
                            os.kill(child, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                if proc.returncode == 0:
                    continue   # the stop came after the last batch: nothing to wait for
                stopped_runs += 1
                self.assertEqual(proc.returncode, 1, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn("commit process", err)
                self.assertIn("nothing was lost", err)
                self.wait_until_free()
                self.assert_state_not_ahead()
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()
        self.assertGreater(stopped_runs, 0, "no stop landed while a batch was in flight")

    def test_sigterm_with_a_stopped_commit_process_still_stops_the_follower(self):
        proc = self.start("--follow")
        child = self.stop_child_at_random(proc, random.Random(SEED + 1))
        self.assertIsNotNone(child, "the catch-up ended before its commit process was seen")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)   # systemctl stop, to the monitor only
        try:
            _out, err = proc.communicate(timeout=TIMEOUT * 10 + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.fail("SIGTERM did not stop a monitor whose commit process is stopped")
        finally:
            try:
                os.kill(child, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.assertIn(proc.returncode, (1, 143), err)
        self.wait_until_free()
        self.assert_state_not_ahead()
        run = self.main_py(*SMALL_BATCHES)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assert_converged()


class TimeoutSetting(unittest.TestCase):
    def test_any_timeout_setting_is_a_wait_select_accepts(self):
        import select

        for value in ("inf", "1e309", "-inf", "nan", "-1", "0", "", "abc", "1e300", "5"):
            with self.subTest(value=value), mock.patch.dict(os.environ, {commit_process.TIMEOUT_ENV: value}):
                timeout = commit_process._timeout()
                self.assertGreater(timeout, 0)
                r, w = os.pipe()
                try:
                    self.assertEqual(select.select([], [w], [], timeout)[1], [w])
                finally:
                    os.close(r)
                    os.close(w)
        with mock.patch.dict(os.environ, {commit_process.TIMEOUT_ENV: "5"}):
            self.assertEqual(commit_process._timeout(), 5)
