"""SIGKILL at random moments of a catch-up with its commit process: the monitor, the
commit child, or the whole process group (a container's OOM kill), several times over on
the same store before a last clean run. Wall-clock kills land where fault hooks do not
(between two syscalls of a batch, inside SQLite, while the batch is pickled or read). Each
seed must converge: the same session files, the same index, and the same answers from the
index-backed reports as one uninterrupted run, with no process left behind.

ASM_KILL_SEEDS widens the class (default 4 seeds of 3 kills each)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from agent_session_monitor.ingest import commit_process
from tests.helpers import ROOT, wait_until_catching_sigterm, write_lines
from tests.test_commit_process import (
    FAULT_VARS, SEED, SMALL_BATCHES, CommitProcessTest, agent_lines,
)

SEEDS = int(os.environ.get("ASM_KILL_SEEDS", "4"))
KILLS_PER_SEED = 3
REPORTS = (["list", "--json", "--limit", "0"], ["stats-model", "--json"],
           ["stats-consumer", "--json"], ["stats-date", "--json"], ["export", "--format", "json", "-"])


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class RandomKills(CommitProcessTest):
    def setUp(self) -> None:
        super().setUp()
        write_lines(self.log, agent_lines(601, 1400, 150, SEED + 5))
        self.reference = self.tmp / "reference-long"
        with mock.patch.dict(os.environ, {commit_process.DISABLE_ENV: "0"}):
            self.assertEqual(self.run_monitor(self.log, out=self.reference)[0], 0)

    def reports(self, out: Path) -> list[str]:
        answers = []
        for command in REPORTS:
            run = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli.py"), "--data-dir",
                                  str(out), *command], capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, (command, run.stderr))
            # (the export says when it was made: the one line allowed to differ)
            answers.append(re.sub(r'"generated_at": "[^"]*"', "", run.stdout))
        return answers

    def kill_at_random(self, rng: random.Random, duration: float) -> str:
        """One monitor run killed at a random moment; what was killed."""
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "-q", *SMALL_BATCHES],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        target = rng.choice(("monitor", "child", "group"))
        deadline = time.monotonic() + rng.uniform(0.1, duration)
        victims: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        if target == "child":
            victims = children_of(proc.pid)
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif target == "group":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            proc.kill()
        _out, err = proc.communicate(timeout=120)
        if target == "child" and proc.returncode not in (None, 0, -signal.SIGKILL):
            # A killed commit process is a failed commit: one clear line, never a traceback.
            self.assertEqual(proc.returncode, 1, err)
            self.assertNotIn("Traceback", err)
            self.assertIn("nothing was lost", err.strip().splitlines()[-1])
        else:
            self.assertNotIn("Traceback", err)
        self.wait_until_free()
        self.assert_state_not_ahead()
        return f"{target}@{proc.returncode}"

    def test_sigkill_of_monitor_child_or_group_at_random_moments_converges(self):
        start = time.monotonic()
        run = self.main_py(*SMALL_BATCHES)
        self.assertEqual(run.returncode, 0, run.stderr)
        duration = time.monotonic() - start
        self.assert_converged()
        expected = self.reports(self.reference)
        self.assertEqual(self.reports(self.out), expected)
        for seed in range(SEEDS):
            rng = random.Random(SEED * 1000 + seed)
            with self.subTest(seed=seed):
                self.fresh_store()
                what = [self.kill_at_random(rng, duration) for _ in range(KILLS_PER_SEED)]
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, (what, run.stderr))
                self.assert_converged()
                self.assertEqual(self.reports(self.out), expected, what)

    def test_sigterm_to_a_follower_at_random_moments_of_its_catch_up_saves_and_converges(self):
        """systemctl stop (the whole group) or kill (the monitor only) at a random moment:
        exit 143 after saving, no child left, and a restart converges."""
        start = time.monotonic()
        self.assertEqual(self.main_py(*SMALL_BATCHES).returncode, 0)
        duration = time.monotonic() - start
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        for seed in range(SEEDS):
            rng = random.Random(SEED * 2000 + seed)
            with self.subTest(seed=seed):
                self.fresh_store()
                proc = subprocess.Popen(
                    [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
                     "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q",
                     "--follow", *SMALL_BATCHES],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    start_new_session=True)
                # From the moment it handles SIGTERM (main.py's first lines; before
                # that a SIGTERM is the kernel's kill): start-up, catch-up or idle.
                # Seed 2 once came 0.1 s after the start, before the handler on a
                # loaded machine: exit -15 (the default action) or, in Monitor's
                # start-up, 143 without the line below.
                self.assertTrue(wait_until_catching_sigterm(proc.pid), proc.poll())
                time.sleep(rng.uniform(0.0, duration))
                group = rng.random() < 0.5
                if group:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
                _out, err = proc.communicate(timeout=120)
                self.assertEqual(proc.returncode, 143, (group, err))
                self.assertEqual(err.strip().splitlines()[-1:], ["stopped; state saved."], err)
                self.wait_until_free()
                self.assert_state_not_ahead()
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()
