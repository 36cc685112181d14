"""A large synchronous checkpoint writes its index rows in a forked child while the
monitor writes the files (ingest/index_helper.py). What it stores must be what one
process stores, byte for byte and row id for row id; and the child must never commit
rows whose files are not durable: killed with the monitor, killed alone, failing, or
left behind by an error or an interrupt while the files are written."""

from __future__ import annotations

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

from agent_session_monitor.ingest import index_helper
from agent_session_monitor.ingest.index_helper import SPLIT_ENV, IndexHelper
from agent_session_monitor.store.durable import FAULT_ENV, FAULT_ERRNO_ENV, FAULT_SCOPE_ENV
from agent_session_monitor.store.sessions import SessionStore
from tests.helpers import ROOT, TempDirTest, load_store, make_line, write_lines

SEED = int(os.environ.get("ASM_SPLIT_SEED", "20261130"))
SPLIT = {SPLIT_ENV: "0"}        # every checkpoint with sessions splits
ONE_PROCESS = {SPLIT_ENV: "-1"}
CLEAN = (FAULT_ENV, FAULT_ERRNO_ENV, FAULT_SCOPE_ENV, SPLIT_ENV, "ASM_COMMIT_PROCESS")


def agent_lines(rng: random.Random, n_lines: int, sessions: int, first: int = 1,
                histories: dict | None = None) -> list[bytes]:
    """Agents re-logging their history; some lines unsessioned, some with CJK text."""
    histories = {} if histories is None else histories
    lines = []
    for n in range(first, first + n_lines):
        session = None if rng.random() < 0.03 else f"agent:{rng.randrange(sessions)}"
        histories[session] = histories.get(session, 0) + 2
        line = make_line(n, session=session, history=histories[session],
                         model=rng.choice(["gpt-4o", "claude-sonnet-4", "no-such-model"]),
                         request_id=rng.random() < 0.8, pad=rng.randrange(300))
        if rng.random() < 0.1:
            line = line.replace(b"answer ", "答え ".encode())
        lines.append(line)
    return lines


def index_tables(out: Path) -> dict:
    """Every table of the index (full-text shadow tables included), row ids included."""
    db = sqlite3.connect(f"file:{out / '.index.sqlite'}?mode=ro", uri=True)
    try:
        tables = {}
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                  "ORDER BY name"):
            try:
                rows = db.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid').fetchall()
            except sqlite3.OperationalError:   # WITHOUT ROWID shadow tables
                rows = sorted(db.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
            tables[name] = rows
        return tables
    finally:
        db.close()


def store_bytes(out: Path) -> dict:
    files = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))
             if not name.startswith(".")}
    state = json.loads((out / ".state.json").read_text())
    state.pop("written_at", None)
    return {"files": files, "state": state, "index": index_tables(out)}


def record_helper_starts() -> tuple[list, object]:
    """Patch IndexHelper.start to note each fork (False: the fork failed); returns the
    list and the patcher to stop."""
    started: list = []
    real = IndexHelper.start.__func__

    def start(cls, index, sessions, *ahead):
        helper = real(cls, index, sessions, *ahead)
        started.append(helper is not None)
        return helper

    patcher = mock.patch.object(IndexHelper, "start", classmethod(start))
    patcher.start()
    return started, patcher


def children() -> set[str]:
    me = os.getpid()
    return set(Path(f"/proc/{me}/task/{me}/children").read_text().split())


class SplitCheckpointTest(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.saved_env = {k: os.environ.pop(k) for k in CLEAN if k in os.environ}
        self.addCleanup(os.environ.update, self.saved_env)
        self.log = self.tmp / "access.log"
        # In the whole suite's process, threads of earlier tests (a web server's) would
        # keep every checkpoint in one process: none of them takes part in a commit.
        patcher = mock.patch.object(index_helper.threading, "active_count", lambda: 1)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.children_before = children()   # earlier tests' children are not ours

    def assert_no_new_child(self, message: str = "") -> None:
        self.assertEqual(children() - self.children_before, set(), message)

    def monitor(self, env: dict, out: Path | None = None, *extra: str) -> tuple[int, str]:
        with mock.patch.dict(os.environ, env):
            code, _out, err = self.run_monitor(self.log, out=out, extra=["-q", *extra])
        return code, err

    def assert_no_rows_committed(self, out: Path) -> None:
        db = sqlite3.connect(f"file:{out / '.index.sqlite'}?mode=ro", uri=True)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM sessions").fetchone()[0], 0,
                             "index rows committed before their files were durable")
            pending = db.execute("SELECT value FROM meta WHERE key = 'pending'").fetchone()
            self.assertTrue(pending and json.loads(pending[0]), "the pending mark was lost")
        finally:
            db.close()


class SplitCheckpointStoresWhatOneProcessStores(SplitCheckpointTest):
    def test_seeded_logs_in_passes_store_and_index_the_same_bytes_and_row_ids(self):
        for case in range(6):
            rng = random.Random(SEED + case)
            sessions = rng.choice([1, 3, 40, 150])
            content = [] if case % 3 else ["--no-content"]
            with self.subTest(case=case, sessions=sessions, content=content):
                self.log.unlink(missing_ok=True)
                histories: dict = {}
                first = 1
                split_out, single_out = self.tmp / f"split-{case}", self.tmp / f"single-{case}"
                started, patcher = record_helper_starts()
                try:
                    for _pass in range(rng.randint(1, 3)):
                        n = rng.randint(20, 400)
                        write_lines(self.log, agent_lines(rng, n, sessions, first, histories))
                        first += n
                        code, err = self.monitor(SPLIT, split_out, *content)
                        self.assertEqual(code, 0, err)
                        code, err = self.monitor(ONE_PROCESS, single_out, *content)
                        self.assertEqual(code, 0, err)
                        self.assertEqual(store_bytes(split_out), store_bytes(single_out))
                finally:
                    patcher.stop()
                self.assertTrue(started and all(started),
                                f"the split runs did not fork a helper: {started}")
                self.assert_no_new_child()

    def test_by_default_only_a_large_checkpoint_with_a_core_idle_splits(self):
        rng = random.Random(SEED)
        write_lines(self.log, agent_lines(rng, 150, 3))
        big = index_helper.SPLIT_MAX_RESIDENT + 1
        for limit, new, idle, resident, expected in (
                (1000, 50, True, 0, []), (100, 50, False, 0, []), (100, 200, True, 0, []),
                (100, 50, True, big, []), (100, 50, True, 0, [True])):
            with self.subTest(limit=limit, new=new, idle=idle, resident=resident):
                started, patcher = record_helper_starts()
                out = self.tmp / f"out-{limit}-{new}-{idle}-{resident}"
                try:
                    with mock.patch.object(index_helper, "SPLIT_ROUNDS", limit), \
                            mock.patch.object(index_helper, "SPLIT_NEW_ROUNDS", new), \
                            mock.patch.object(index_helper, "spare_core", lambda: idle), \
                            mock.patch.object(index_helper, "resident_bytes", lambda: resident):
                        code, err = self.monitor({}, out)
                finally:
                    patcher.stop()
                self.assertEqual(code, 0, err)
                self.assertEqual(started, expected)

    def test_a_follower_splits_its_catch_up_not_a_few_new_lines_of_a_long_session(self):
        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        rng, histories = random.Random(SEED), {}
        write_lines(self.log, agent_lines(rng, 150, 2, 1, histories))
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True)
        started, patcher = record_helper_starts()
        try:
            with mock.patch.object(index_helper, "SPLIT_ROUNDS", 50), \
                    mock.patch.object(index_helper, "SPLIT_NEW_ROUNDS", 100), \
                    mock.patch.object(index_helper, "spare_core", lambda: True), \
                    mock.patch.object(index_helper, "resident_bytes", lambda: 0), \
                    Monitor(config, err=io.StringIO()) as monitor:
                # resident_bytes: the whole suite's process passes 160 MB by then (CI).
                monitor.poll_once()          # 150 new rounds of 2 sessions: split
                write_lines(self.log, agent_lines(rng, 3, 2, 151, histories))
                monitor.poll_once()          # 3 new rounds of sessions of ~75: not
        finally:
            patcher.stop()
        self.assertEqual(started, [True])
        self.assertEqual(sum(len(d["rounds"]) for d in load_store(self.out).values()), 153)


class SplitCheckpointNeverCommitsAheadOfTheFiles(SplitCheckpointTest):
    def setUp(self) -> None:
        super().setUp()
        write_lines(self.log, agent_lines(random.Random(SEED), 600, 30))
        self.reference = self.tmp / "reference"
        code, err = self.monitor(ONE_PROCESS, self.reference)
        self.assertEqual(code, 0, err)

    def assert_converges(self) -> None:
        code, err = self.monitor(SPLIT)
        self.assertEqual(code, 0, err)
        self.assertEqual(load_store(self.out), load_store(self.reference))
        mine, theirs = store_bytes(self.out), store_bytes(self.reference)
        self.assertEqual(mine["files"], theirs["files"])
        self.assertEqual(mine["state"]["counters"], theirs["state"]["counters"])
        db = sqlite3.connect(f"file:{self.out / '.index.sqlite'}?mode=ro", uri=True)
        ref = sqlite3.connect(f"file:{self.reference / '.index.sqlite'}?mode=ro", uri=True)
        query = ("SELECT file, rounds, input, output, cost, size FROM sessions ORDER BY file")
        self.assertEqual(db.execute(query).fetchall(), ref.execute(query).fetchall())
        db.close()
        ref.close()
        self.assert_no_new_child()

    def test_sigkill_of_the_monitor_between_files_and_index_takes_the_helper_uncommitted(self):
        env = {k: v for k, v in os.environ.items() if k not in CLEAN}
        env.update({FAULT_ENV: "index:0", **SPLIT})
        run = subprocess.run([sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
                              "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                              "-q"], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, -signal.SIGKILL, run.stderr)
        self.assertEqual(len(load_store(self.out)), len(load_store(self.reference)),
                         "the files were not written before the kill")
        self.assertFalse((self.out / ".state.json").exists())
        # The helper dies with the monitor (PR_SET_PDEATHSIG), its transaction unfinished.
        deadline = time.monotonic() + 10
        while self._helpers_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(self._helpers_alive(), "the helper outlived its monitor")
        self.assert_no_rows_committed(self.out)
        self.assert_converges()

    def _helpers_alive(self) -> bool:
        mark = str(self.out).encode()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if mark in f.read():
                            return True
                except OSError:
                    continue
        return False

    def test_a_helper_killed_before_its_commit_is_a_failed_commit(self):
        real = IndexHelper.commit

        def commit(helper, names, sizes):
            os.kill(helper.pid, signal.SIGKILL)
            return real(helper, names, sizes)

        with mock.patch.object(IndexHelper, "commit", commit):
            code, err = self.monitor(SPLIT)
        self.assertNotEqual(code, 0)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("the process writing its index rows ended before it committed them", err)
        self.assertFalse((self.out / ".state.json").exists())
        self.assert_no_rows_committed(self.out)
        self.assert_converges()

    def test_a_helper_that_fails_reports_it_and_commits_nothing(self):
        # Patched before the fork: the child inherits it.
        with mock.patch.object(index_helper, "replace_prepared",
                               side_effect=sqlite3.OperationalError("disk I/O error")):
            code, err = self.monitor(SPLIT)
        self.assertNotEqual(code, 0)
        self.assertIn("failed: OperationalError: disk I/O error", err)
        self.assertFalse((self.out / ".state.json").exists())
        self.assert_no_rows_committed(self.out)
        self.assert_converges()

    def test_an_interrupt_while_the_files_are_written_kills_the_helper_uncommitted(self):
        real = SessionStore.flush

        def flush(store):
            written = real(store)
            raise KeyboardInterrupt

        fds = len(os.listdir("/proc/self/fd"))
        with mock.patch.object(SessionStore, "flush", flush):
            code, _err = self.monitor(SPLIT)
        self.assertEqual(code, 130)
        self.assert_no_new_child("the helper was not reaped")
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds, "a pipe end was left open")
        self.assert_no_rows_committed(self.out)
        self.assert_converges()

    def test_a_full_disk_while_the_files_are_written_commits_no_index_row(self):
        with mock.patch.dict(os.environ, {FAULT_ENV: "write:5", FAULT_ERRNO_ENV: "ENOSPC"}):
            code, err = self.monitor(SPLIT)
        self.assertNotEqual(code, 0)
        self.assertIn("No space left on device", err)
        self.assert_no_new_child()
        self.assert_no_rows_committed(self.out)
        self.assert_converges()
