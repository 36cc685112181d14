"""Attacks on the index helper (index_helper.py) from outside its own tests.

- a SIGTERM that comes while the helper is being forked (an at-fork hook of the parent
  sends it), in --follow and in a cron pass: the monitor stops with 143 and one line, no
  helper is left (no zombie), no traceback, and the next plain pass leaves the store and
  its index what a plain pass alone leaves;
- the index held locked by another writer for longer than SQLite's busy timeout while a
  forced helper writes: one clear line, a non-zero exit, no state ahead of the index, and
  a converging next pass.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

from tests.helpers import ROOT, TempDirTest, load_store, make_line, write_lines
from tests.test_attack_speedwork import _STOPPED_WHILE_FORKING

# ASM_COMMIT_PROCESS=0 would forbid the helper's fork too (index_helper.wanted); a log
# this small starts no commit process.
HELPER_ONLY = {"ASM_PARSE_AHEAD_BYTES": "-1", "ASM_SPLIT_COMMIT_ROUNDS": "0"}
PLAIN = {"ASM_PARSE_AHEAD_BYTES": "-1", "ASM_COMMIT_PROCESS": "0",
         "ASM_SPLIT_COMMIT_ROUNDS": "-1"}


def index_rows(out) -> list:
    db = sqlite3.connect(f"file:{out / '.index.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT file, rounds, input, output, cost, size FROM sessions "
                          "ORDER BY file").fetchall()
    finally:
        db.close()


class IndexHelperUnderAttack(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        write_lines(self.log, [make_line(n, session=f"s{n % 40}", history=1 + n // 40)
                               for n in range(400)])

    def env(self, extra: dict) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        env.update(extra)
        return env

    def main(self, out, extra: dict, *args: str, script: str | None = None):
        argv = ([sys.executable, "-c", script, str(ROOT)] if script
                else [sys.executable, str(ROOT / "main.py")])
        argv += ["--log-path", str(self.log), "--output-dir", str(out),
                 "--allow-log-dir", str(self.tmp), "-q", *args]
        return subprocess.run(argv, env=self.env(extra), capture_output=True, text=True,
                              timeout=60)

    def assert_converges(self) -> None:
        reference = self.tmp / "reference"
        self.assertEqual(self.main(reference, PLAIN).returncode, 0)
        run = self.main(self.out, PLAIN)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(load_store(self.out), load_store(reference))
        self.assertEqual(index_rows(self.out), index_rows(reference))

    def no_children_left(self, run) -> None:
        # The monitor was the child of subprocess.run: a helper it left would be
        # reparented, still running, with the store's path in its argv.
        mark = str(self.out).encode()
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        self.assertNotIn(mark, f.read(), f"process {pid} outlived the monitor")
                except OSError:
                    continue

    def test_a_stop_during_the_helpers_fork_in_follow_mode(self):
        run = self.main(self.out, HELPER_ONLY, "--follow", "--refresh-interval", "0.05",
                        script=_STOPPED_WHILE_FORKING)
        self.assertEqual(run.returncode, 143, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        self.assertNotIn("Exception ignored", run.stderr)
        self.assertLessEqual(len(run.stderr.strip().splitlines()), 1, run.stderr)
        self.no_children_left(run)
        self.assert_converges()

    def test_a_stop_during_the_helpers_fork_in_a_cron_pass(self):
        run = self.main(self.out, HELPER_ONLY, script=_STOPPED_WHILE_FORKING)
        self.assertEqual(run.returncode, 143, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        self.assertNotIn("Exception ignored", run.stderr)
        self.no_children_left(run)
        self.assert_converges()

    def test_an_index_locked_by_another_writer_past_the_busy_timeout(self):
        # A first pass creates the index; then a writer takes it and holds it for 8 s
        # (SQLite's busy timeout here is 5 s) while the next pass's helper writes.
        write_lines(self.log, [make_line(n, session=f"s{n % 40}", history=1 + n // 40)
                               for n in range(40)])
        self.assertEqual(self.main(self.out, PLAIN).returncode, 0)
        state_before = (self.out / ".state.json").read_bytes()
        write_lines(self.log, [make_line(n, session=f"s{n % 40}", history=1 + n // 40)
                               for n in range(400)])
        locked, release = threading.Event(), threading.Event()

        def hold():
            db = sqlite3.connect(self.out / ".index.sqlite", isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(8)
            db.execute("ROLLBACK")
            db.close()
        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait(10)
        try:
            run = self.main(self.out, HELPER_ONLY)
        finally:
            release.set()
            holder.join()
        self.assertNotIn("Traceback", run.stderr)
        if run.returncode != 0:
            self.assertEqual(len(run.stderr.strip().splitlines()), 1, run.stderr)
            self.assertIn("locked", run.stderr)
            # Deleting an index another program holds is not the fix for a lock.
            self.assertNotIn("delete it", run.stderr)
            self.assertEqual((self.out / ".state.json").read_bytes(), state_before,
                             "the state moved past an index that was not written")
        self.no_children_left(run)
        self.assert_converges()


if __name__ == "__main__":
    import unittest

    unittest.main()
