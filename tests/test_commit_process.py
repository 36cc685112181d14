"""The commit process of a catch-up (ingest/commit_process.py): kill it, fill its disk,
kill the monitor that forked it, stop the pair with SIGTERM or Ctrl-C, in cron and in
follow mode. Every time: one clear line, never a traceback; ``.state.json`` never ahead
of the session files; no child left behind; and a restart converges exactly (session
files and index) to an uninterrupted run."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from agent_session_monitor.errors import MonitorError
from agent_session_monitor.ingest import commit_process
from agent_session_monitor.ingest.commit_process import CommitProcess
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.store.durable import FAULT_ENV, FAULT_ERRNO_ENV, FAULT_SCOPE_ENV, DirLock
from tests.helpers import (ROOT, TempDirTest, load_store, make_line, record_commit_process_starts,
                           write_lines)

SEED = int(os.environ.get("ASM_CRASH_SEED", "20261124"))
FAULT_VARS = (FAULT_ENV, FAULT_SCOPE_ENV, FAULT_ERRNO_ENV, commit_process.DISABLE_ENV)
SMALL_BATCHES = ["--checkpoint-bytes", "100000"]   # about ten batches


def agent_lines(first: int, count: int, sessions: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    histories: dict[str, int] = {}
    lines = []
    for n in range(first, first + count):
        session = f"agent:{rng.randrange(sessions)}"
        histories[session] = histories.get(session, 0) + 2
        lines.append(make_line(n, session=session, history=min(histories[session], 12),
                               request_id=rng.random() < 0.8, pad=rng.randrange(200)))
    return lines


def index_snapshot(out: Path) -> tuple:
    """What readers answer from: every session row and the per-round sums, and the
    pending marks (none once a run has ended well)."""
    db = sqlite3.connect(out / ".index.sqlite")
    try:
        rows = db.execute("SELECT file, session_id, rounds, input, output, cost, size "
                          "FROM sessions ORDER BY file").fetchall()
        rounds = db.execute("SELECT count(*), sum(input), sum(output) FROM round_usage").fetchone()
        pending = db.execute("SELECT value FROM meta WHERE key = 'pending'").fetchone()
    finally:
        db.close()
    return rows, rounds, json.loads(pending[0]) if pending else []


def line_starts(log: Path) -> list[int]:
    starts, pos = [], 0
    with open(log, "rb") as f:
        for line in f:
            starts.append(pos)
            pos += len(line)
    return starts


class CommitProcessTest(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        write_lines(self.log, agent_lines(1, 600, 150, SEED + 1))
        self.reference = self.tmp / "reference"
        with mock.patch.dict(os.environ, {commit_process.DISABLE_ENV: "0"}):
            code, _out, err = self.run_monitor(self.log, out=self.reference)
        self.assertEqual(code, 0, err)

    def main_py(self, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        clean.update(env or {})
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
             "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q", *extra],
            env=clean, capture_output=True, text=True, timeout=120)

    def in_fresh_interpreter(self) -> bool:
        """For a test that runs the monitor in this process and needs it to fork: where
        other tests left threads running (the commit process is then rightly replaced
        by the thread fallback), run this test alone in a fresh interpreter instead.
        True if it did (and passed there)."""
        import threading

        if threading.active_count() == 1:
            return False
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        run = subprocess.run([sys.executable, "-m", "unittest", self.id()], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-4000:])
        return True

    def fresh_store(self) -> None:
        import shutil

        shutil.rmtree(self.out, ignore_errors=True)

    def assert_state_not_ahead(self) -> None:
        """I3: every line before the saved offset has its round in a session file."""
        state_file = self.out / ".state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        stored = {(r["source"]["fp"], r["source"]["offset"])
                  for doc in load_store(self.out).values() for r in doc["rounds"]}
        for src in state["sources"]:
            missing = [s for s in line_starts(self.log)
                       if s < src["offset"] and (src["fp"][:16], s) not in stored]
            self.assertEqual(missing, [], f"state at offset {src['offset']} is ahead of "
                                          f"{len(missing)} lines not in any session file")

    def assert_converged(self) -> None:
        self.assertEqual(load_store(self.out), load_store(self.reference))
        self.assertEqual(index_snapshot(self.out), index_snapshot(self.reference))
        self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".tmp-")], [])

    def wait_until_free(self) -> None:
        """The store's lock is free and no process of this store is left (the commit
        process holds the inherited lock while it lives)."""
        deadline = time.monotonic() + 20
        while True:
            lock = DirLock(self.out)
            if lock.try_acquire():
                lock.release()
                if not processes_of(self.out):
                    return
            self.assertLess(time.monotonic(), deadline, "a commit process outlived its monitor")
            time.sleep(0.02)


def processes_of(out: Path) -> list[int]:
    """Live (not zombie) processes whose command line names ``out``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if str(out).encode() in cmdline and status.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry))
    return found


def is_reaped(pid: int) -> bool:
    """``pid``, a child of this process, has been waited for (no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


class CronMode(CommitProcessTest):
    def test_commit_process_killed_at_every_step_rewinds_and_converges(self):
        for step in ("write:3", "sync:3", "rename:1", "rename:7", "dir:0", "index:0", "state:0"):
            with self.subTest(step=step):
                self.fresh_store()
                run = self.main_py(*SMALL_BATCHES, env={FAULT_ENV: step, FAULT_SCOPE_ENV: "child"})
                self.assertEqual(run.returncode, 1, run.stderr)
                self.assertEqual(len(run.stderr.strip().splitlines()), 1, run.stderr)
                self.assertIn("commit process", run.stderr)
                self.assertIn("killed by SIGKILL", run.stderr)
                self.assertIn("nothing was lost", run.stderr)
                self.assert_state_not_ahead()
                self.wait_until_free()
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()

    def test_disk_full_or_denied_in_the_commit_process_is_the_same_failed_commit(self):
        for name in ("ENOSPC", "EACCES"):
            with self.subTest(errno=name):
                self.fresh_store()
                for step in ("write:4", "sync:2", "rename:5"):
                    run = self.main_py(*SMALL_BATCHES, env={FAULT_ENV: step, FAULT_SCOPE_ENV: "child",
                                                            FAULT_ERRNO_ENV: name})
                    self.assertEqual(run.returncode, 1, run.stderr)
                    # (after the first failure, a note that the pending index rows of
                    # the failed commit were repaired may come first)
                    lines = run.stderr.strip().splitlines()
                    self.assertEqual(lines[-1],
                        f"main.py: error: cannot write the store in {self.out}: "
                        f"{os.strerror(getattr(errno, name))}; nothing was lost, the same lines "
                        "are read again once it is writable (free space?)")
                    self.assertTrue(all(line.startswith("note: ") for line in lines[:-1]), lines)
                    self.assert_state_not_ahead()
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()

    def test_fault_in_the_commit_process_kills_the_whole_monitor(self):
        # What BatchedSyncCrash's kills mean inside a commit process: both die.
        for step in ("write:5", "rename:9", "state:0"):
            with self.subTest(step=step):
                self.fresh_store()
                run = self.main_py(*SMALL_BATCHES, env={FAULT_ENV: step})
                self.assertEqual(run.returncode, -signal.SIGKILL, run.stderr)
                self.wait_until_free()
                self.assert_state_not_ahead()
                run = self.main_py(*SMALL_BATCHES)
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()

    def test_monitor_killed_while_its_commit_process_writes_frees_the_store(self):
        rng = random.Random(SEED)
        for step in ("write:2", f"sync:{rng.randint(1, 20)}", f"rename:{rng.randint(1, 20)}", "index:0",
                     "state:0"):
            with self.subTest(step=step):
                self.fresh_store()
                run = self.main_py(*SMALL_BATCHES, env={FAULT_ENV: step, FAULT_SCOPE_ENV: "parent"})
                self.assertEqual(run.returncode, -signal.SIGKILL, run.stderr)
                # The child dies with its monitor: the lock is free for the next one.
                self.wait_until_free()
                self.assert_state_not_ahead()
                run = self.main_py(*SMALL_BATCHES)   # a restart right after
                self.assertEqual(run.returncode, 0, run.stderr)
                self.assert_converged()

    def test_interrupt_mid_catch_up_leaves_no_child_and_resumes_exactly(self):
        if self.in_fresh_interpreter():
            return
        started = spy_on_start(self)
        calls = {"n": 0}
        real = Monitor._handle

        def interrupt_later(monitor, *args):
            calls["n"] += 1
            if calls["n"] == 400:
                raise KeyboardInterrupt
            return real(monitor, *args)

        with mock.patch.object(Monitor, "_handle", interrupt_later):
            code, _out, err = self.run_monitor(self.log, extra=SMALL_BATCHES)
        self.assertEqual(code, 130, err)
        self.assertTrue(started and all(started), "no commit process was started")
        self.assertTrue(all(is_reaped(pid) for pid in started))
        self.assert_state_not_ahead()
        code, _out, err = self.run_monitor(self.log, extra=SMALL_BATCHES)
        self.assertEqual(code, 0, err)
        self.assertTrue(all(is_reaped(pid) for pid in started))
        self.assert_converged()

    def test_sigterm_to_the_process_group_mid_catch_up_saves_and_leaves_no_child(self):
        write_lines(self.log, agent_lines(601, 2000, 150, SEED + 2))
        self.reference = self.tmp / "reference-long"
        with mock.patch.dict(os.environ, {commit_process.DISABLE_ENV: "0"}):
            self.assertEqual(self.run_monitor(self.log, out=self.reference)[0], 0)
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "-q", "--follow", *SMALL_BATCHES],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        children: list[str] = []
        deadline = time.monotonic() + 60
        while not children and proc.poll() is None and time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                pass
            time.sleep(0.005)
        self.assertTrue(children, "the catch-up ended before its commit process was seen")
        os.killpg(proc.pid, signal.SIGTERM)   # systemctl stop: the whole group
        _out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 143, err)
        self.assertEqual(err.strip().splitlines(), ["stopped; state saved."])
        self.wait_until_free()
        self.assert_state_not_ahead()
        run = self.main_py(*SMALL_BATCHES)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assert_converged()


def spy_on_start(test) -> list:
    """Record the pid of every commit process started (None: the thread fallback)."""
    real = CommitProcess.__dict__["start"]
    test.addCleanup(setattr, CommitProcess, "start", real)
    return record_commit_process_starts()


class FollowMode(CommitProcessTest):
    def test_long_lived_monitor_forks_again_after_its_commit_process_died(self):
        if self.in_fresh_interpreter():
            return
        started = spy_on_start(self)
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out,
                               checkpoint_bytes=100000, follow=True)
        clean = {k: "" for k in FAULT_VARS}
        with Monitor(config, err=io.StringIO()) as monitor:
            with mock.patch.dict(os.environ, {**clean, FAULT_ENV: "rename:3", FAULT_SCOPE_ENV: "child"}):
                with self.assertRaisesRegex(MonitorError, "commit process .* killed by SIGKILL"):
                    monitor.poll_once()
            self.assertIsNone(monitor._commit_proc)
            self.assertTrue(is_reaped(started[0]))
            with mock.patch.dict(os.environ, clean):
                monitor.poll_once()        # the retry of the follow loop
                self.assertIsNone(monitor._commit_proc)   # ended with its pass
                more = agent_lines(601, 600, 150, SEED + 3)
                write_lines(self.log, more)
                monitor.poll_once()        # a new burst: a new commit process
                write_lines(self.log, more[:1])   # a duplicate line: nothing new
                monitor.poll_once()
        self.assertEqual(len(started), 3, started)
        self.assertTrue(all(started) and len(set(started)) == 3, started)
        self.assertTrue(all(is_reaped(pid) for pid in started))
        reference = self.tmp / "reference-more"
        with mock.patch.dict(os.environ, {commit_process.DISABLE_ENV: "0"}):
            self.assertEqual(self.run_monitor(self.log, out=reference)[0], 0)
        self.reference = reference
        self.assert_converged()

    def test_the_thread_fallback_is_used_where_other_threads_run(self):
        import threading

        started = spy_on_start(self)
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        try:
            code, _out, err = self.run_monitor(self.log, extra=SMALL_BATCHES)
        finally:
            stop.set()
            other.join()
        self.assertEqual(code, 0, err)
        self.assertEqual(started, [None])
        self.assert_converged()

    def test_commit_process_ends_when_told_even_if_another_fork_holds_its_pipe(self):
        if self.in_fresh_interpreter():
            return
        # A process the monitor forks later without exec (a parser process, say) holds a
        # copy of the pipe's writing end: end of file never comes, so the monitor says
        # "no more commits" in the pipe, and reaping the child does not wait.
        holders: list[int] = []
        real = CommitProcess.start.__func__

        def start(cls, *args):
            proc = real(cls, *args)
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            holders.append(pid)
            return proc

        def end_holders():
            for pid in holders:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

        self.addCleanup(end_holders)
        with mock.patch.object(CommitProcess, "start", classmethod(start)), \
                mock.patch.dict(os.environ, {commit_process.TIMEOUT_ENV: "30"}):
            began = time.monotonic()
            code, _out, err = self.run_monitor(self.log, extra=SMALL_BATCHES)
            elapsed = time.monotonic() - began
        self.assertEqual(code, 0, err)
        self.assertEqual(len(holders), 1)
        self.assertLess(elapsed, 20, "the monitor waited for its child's end of file")
        self.assert_converged()


_SIGNAL_AT_FORK = r"""
import os, signal, sys
from pathlib import Path
from agent_session_monitor.ingest import commit_process

def handler(signum, frame):   # as monitor_cli's: SIGTERM ends the monitor like Ctrl-C
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, handler)
# systemctl stop at the worst moment: the signal reaches both sides right at the fork.
os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM),
                    after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))
store = Path(sys.argv[1])
try:
    proc = commit_process.CommitProcess.start(store, store / ".state.json")
except KeyboardInterrupt:
    print("interrupted after the fork")
else:
    print("not interrupted", proc)
me = os.getpid()
print("children", Path(f"/proc/{me}/task/{me}/children").read_text().split())
"""


class SignalAtTheFork(TempDirTest):
    def test_sigterm_at_the_fork_interrupts_the_monitor_not_the_child(self) -> None:
        # Without the signals held across the fork, the monitor's handler ran in the
        # child before it ignored them (a KeyboardInterrupt traceback from threading's
        # after-fork hook on the monitor's stderr) and the monitor's own interrupt was
        # lost in its after-fork hook.
        if not hasattr(signal, "pthread_sigmask") or not Path("/proc/self/task").exists():
            self.skipTest("needs pthread_sigmask and /proc (Linux)")
        self.out.mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if k != commit_process.DISABLE_ENV}
        run = subprocess.run([sys.executable, "-c", _SIGNAL_AT_FORK, str(self.out)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.stderr, "")
        self.assertEqual(run.stdout.splitlines(), ["interrupted after the fork", "children []"])
