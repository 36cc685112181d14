"""The activity counters of ``.state.json`` (lines read, rounds stored, duplicates
skipped, non-AI, forged and bad lines by kind, warnings by kind) after SIGKILLs in the
middle of catch-ups: the monitor, one of its children (the commit process or the parse
worker), or the whole process group, or a SIGTERM (state saved), at seeded random moments, several times over on the
same store, in cron mode and in ``--follow``, with the commit process and with the commit
thread (ASM_COMMIT_PROCESS=0), the parse worker forced on (ASM_PARSE_AHEAD_BYTES=0) and
small checkpoints (many commits per run). A restart to completion must end with exactly
the counters of one clean run: a line counted once, however many runs read it.

Before the fix a pass's counts were saved only at its end: the rounds its checkpoints
committed before a kill were never counted as stored, and the same lines, read again
after the restart, counted as duplicates (a 60 MB follow catch-up killed at 2.5 s:
rounds_stored 4,273 and duplicates_skipped 4,312 for 8,585 rounds and no duplicate).

``passes`` differs by design: it counts the passes that ran to their end, saved with that
end (a run killed mid-pass adds none): in cron mode at least the runs that exited 0, at
most every run.

ASM_COUNTER_KILL_SEEDS widens the class (default 2 seeds per mode and commit path)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time

from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from tests.helpers import (ROOT, TempDirTest, load_store, make_line, wait_until_catching_sigterm,
                           write_lines)
from tests.loggen import iter_records
from tests.test_commit_process import FAULT_VARS, CommitProcessTest, index_snapshot
from tests.test_forgery import FIELDS, PAYLOADS, inject
from tests.test_random_kills import children_of

SEED = int(os.environ.get("ASM_CRASH_SEED", "20261130"))
SEEDS = int(os.environ.get("ASM_COUNTER_KILL_SEEDS", "2"))
KILLS_PER_SEED = 3
LOG_BYTES = 1_500_000
# Forks on for every pass, and a checkpoint every ~60 KB: a dozen commits per run.
FORCED = ["--checkpoint-bytes", "60000"]
FORKS_ON = {"ASM_PARSE_AHEAD_BYTES": "0"}


def hostile_log(seed: int, size_limit: int = LOG_BYTES) -> list[bytes]:
    """A seeded log with every kind of line the counters count: rounds, exact duplicate
    lines (a shipper's retry), non-AI lines, every bad kind, salvaged lines (a quote in
    a User-Agent), unsessioned requests and forged lines (keys written through a header)."""
    rng = random.Random(f"forged-{seed}")
    lines, size, n = [], 0, 0
    records = iter_records(seed, sessions=None, max_requests=3, bad_every=9, non_ai_every=7,
                           unsessioned_every=11, duplicate_every=5, quoted_ua_every=13)
    for line, _event, _kind in records:
        lines.append(line)
        size += len(line)
        if rng.random() < 0.04:
            n += 1
            lines.append(inject(n, {rng.choice(FIELDS): PAYLOADS[rng.choice(sorted(PAYLOADS))]}))
        if size >= size_limit:
            return lines
    raise AssertionError("unreachable")


def places(out) -> set:
    """(file fingerprint, offset) of every round stored in ``out``."""
    return {(r["source"]["fp"], r["source"]["offset"])
            for doc in load_store(out).values() for r in doc["rounds"]}


class CountersAcrossKills(CommitProcessTest):
    def setUp(self) -> None:
        TempDirTest.setUp(self)   # (not CommitProcessTest's log: this one is hostile)
        self.log = self.tmp / "access.log"
        write_lines(self.log, hostile_log(SEED))
        self.reference = self.tmp / "reference"
        run = self.main_once(self.reference, {"ASM_PARSE_AHEAD_BYTES": "-1",
                                              "ASM_COMMIT_PROCESS": "0"}, [])
        self.assertEqual(run.returncode, 0, run.stderr)
        self.expected = self.counters(self.reference)
        self.reference_places = places(self.reference)
        for name in ("lines_read", "rounds_stored", "duplicates_skipped", "non_ai_lines",
                     "forged_lines"):
            self.assertGreater(self.expected.get(name, 0), 0, (name, self.expected))
        self.assertGreaterEqual(len(self.expected["bad_lines"]), 4, self.expected)
        self.assertIn("salvaged", self.expected["warnings"])
        # A clean run's rounds_stored is every round in the store.
        self.assertEqual(self.expected["rounds_stored"],
                         index_snapshot(self.reference)[1][0])

    def assert_state_not_ahead(self) -> None:
        """Every round the clean run stored from before a saved offset is in the store
        (this log has lines that store no round: CommitProcessTest's check expects one)."""
        state_file = self.out / ".state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        stored = places(self.out)
        for src in state["sources"]:
            missing = sorted(offset for fp, offset in self.reference_places
                             if fp == src["fp"][:16] and offset < src["offset"]
                             and (fp, offset) not in stored)
            self.assertEqual(missing, [], f"state at offset {src['offset']} is ahead of "
                                          f"{len(missing)} rounds not in any session file")

    def fresh_store(self) -> None:
        super().fresh_store()
        self.out.mkdir()   # (wait_until_free locks it: a run killed before it made it)

    def main_once(self, out, env: dict, extra: list) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        clean.update(env)
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(out), "--allow-log-dir", str(self.tmp), "-q", *extra],
            env=clean, capture_output=True, text=True, timeout=120)

    def counters(self, out) -> dict:
        counters = json.loads((out / ".state.json").read_text())["counters"]
        self.passes = counters.pop("passes", 0)
        return counters

    def kill_at_random(self, rng: random.Random, env: dict, follow: bool,
                       duration: float) -> tuple[str, bool]:
        """One run killed at a random moment: what was killed, and whether the run had
        already ended well (a cron pass that finished before the kill)."""
        clean = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        clean.update(env)
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "-q", *FORCED,
             *(["--follow"] if follow else [])],
            env=clean, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        target = rng.choice(("monitor", "child", "group", "sigterm"))
        if target == "sigterm":
            # Counted from the moment it handles SIGTERM (before it, the kernel's kill).
            wait_until_catching_sigterm(proc.pid)
        deadline = time.monotonic() + rng.uniform(0.15, duration)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        if target == "child":
            children = children_of(proc.pid)
            if children:   # the commit process or the parse worker
                try:
                    os.kill(rng.choice(children), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if follow:   # a follower lives on (and reads again): end it a moment later
                time.sleep(rng.uniform(0, 1.5))
                proc.kill()
        elif target == "group":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif target == "sigterm":   # systemctl stop (the group) or kill (the monitor)
            try:
                if rng.random() < 0.5:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            proc.kill()
        _out, err = proc.communicate(timeout=120)
        self.assertNotIn("Traceback", err)
        if target == "sigterm" and follow:
            # Wherever it came, start-up included: 143 and the line.
            self.assertEqual(proc.returncode, 143, err)
            self.assertEqual(err.strip().splitlines()[-1:], ["stopped; state saved."], err)
        self.wait_until_free()
        self.assert_state_not_ahead()
        return f"{target}@{proc.returncode}", proc.returncode == 0

    def check_mode(self, follow: bool, commit_process: bool) -> None:
        env = dict(FORKS_ON)
        if not commit_process:
            env["ASM_COMMIT_PROCESS"] = "0"
        start = time.monotonic()
        run = self.main_once(self.out, env, FORCED)
        self.assertEqual(run.returncode, 0, run.stderr)
        duration = time.monotonic() - start
        # The forced paths count as the plain one does.
        self.assertEqual(self.counters(self.out), self.expected)
        self.assertEqual(self.passes, 1)
        for seed in range(SEEDS):
            rng = random.Random(f"{SEED}-{follow}-{commit_process}-{seed}")
            with self.subTest(follow=follow, commit_process=commit_process, seed=seed):
                self.fresh_store()
                kills = [self.kill_at_random(rng, env, follow, duration)
                         for _ in range(KILLS_PER_SEED)]
                what = [w for w, _ in kills]
                run = self.main_once(self.out, env, FORCED)
                self.assertEqual(run.returncode, 0, (what, run.stderr))
                self.assert_converged()
                self.assertEqual(self.counters(self.out), self.expected, what)
                # Each run that exited 0 ended its pass; a run killed may have saved
                # its pass's end just before (follow: passes also count empty polls).
                if not follow:
                    self.assertGreaterEqual(self.passes, 1 + sum(ended for _, ended in kills))
                    self.assertLessEqual(self.passes, 1 + len(kills), what)

    def test_cron_catch_ups_killed_with_the_commit_process_count_every_line_once(self):
        self.check_mode(follow=False, commit_process=True)

    def test_cron_catch_ups_killed_with_the_commit_thread_count_every_line_once(self):
        self.check_mode(follow=False, commit_process=False)

    def test_follow_catch_ups_killed_with_the_commit_process_count_every_line_once(self):
        self.check_mode(follow=True, commit_process=True)

    def test_follow_catch_ups_killed_with_the_commit_thread_count_every_line_once(self):
        self.check_mode(follow=True, commit_process=False)


class CountersOfAReRead(TempDirTest):
    def test_a_log_truncated_and_written_again_with_the_same_bytes_counts_duplicates(self):
        """The other way a line is found stored from its very place: a file truncated and
        rewritten with what it held. A real re-read (duplicates), not rounds of a lost
        commit: one follow-mode monitor, the truncation seen between two polls."""
        log = self.tmp / "access.log"
        lines = [make_line(n, session=f"s{n % 7}") for n in range(40)]
        write_lines(log, lines, "wb")
        config = MonitorConfig(log_paths=[str(log)], output_dir=self.out, follow=True)
        with Monitor(config, err=io.StringIO()) as monitor:
            self.assertEqual(monitor.poll_once().rounds, 40)
            write_lines(log, lines[:25], "wb")      # truncated, the head written again
            stats = monitor.poll_once()
            self.assertEqual((stats.rounds, stats.duplicates, stats.recovered), (0, 25, 0))
            write_lines(log, lines[25:])            # and the rest of it
            stats = monitor.poll_once()
            self.assertEqual((stats.rounds, stats.duplicates, stats.recovered), (0, 15, 0))
        counters = json.loads((self.out / ".state.json").read_text())["counters"]
        self.assertEqual((counters["rounds_stored"], counters["duplicates_skipped"],
                          counters["lines_read"], counters["passes"]), (40, 40, 80, 3))
