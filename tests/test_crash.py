"""Crash safety: SIGKILL at any point of a catch-up, restart, and the store converges to
exactly what an uninterrupted run gives (failure-scenarios.md B4: C1-C4, C10, C12)."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

from agent_session_monitor.ingest.commit_process import DISABLE_ENV
from agent_session_monitor.ingest.index_helper import SPLIT_ENV
from agent_session_monitor.store.durable import (
    BATCH_SYNC_ENV, CHUNK_FILES, WRITING_MARK, _syncfs_function,
)
from tests.helpers import ROOT, TempDirTest, load_store, make_line, write_lines

SEED = int(os.environ.get("ASM_CRASH_SEED", "20261124"))


def agent_log(path, n_lines: int, seed: int) -> None:
    rng = random.Random(seed)
    histories: dict[str, int] = {}
    lines = []
    for n in range(1, n_lines + 1):
        session = f"agent:{rng.randrange(40)}"
        histories[session] = histories.get(session, 0) + 2
        lines.append(make_line(n, session=session, history=histories[session],
                               request_id=rng.random() < 0.8, pad=rng.randrange(200)))
    write_lines(path, lines)


class CrashRecovery(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        agent_log(self.log, 1500, SEED)
        self.reference = self.tmp / "reference"
        code, _out, err = self.run_monitor(self.log, out=self.reference)
        self.assertEqual(code, 0, err)

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
                "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                "--checkpoint-bytes", "40000", "-q"]

    def test_sigkill_at_random_points_converges_to_uninterrupted_run(self):
        rng = random.Random(SEED)
        kills = 0
        for _attempt in range(40):
            proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.05, 0.6))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            kills += 1
        final = subprocess.run(self.command(), capture_output=True, text=True)
        self.assertEqual(final.returncode, 0, final.stderr)
        self.assertGreater(kills, 0, "the catch-up finished before any kill: make it longer")
        self.assertEqual(load_store(self.out), load_store(self.reference),
                         f"store differs after {kills} kills (seed {SEED})")

    def test_crash_between_session_and_state_write_counts_nothing_twice(self):
        # In process, so on the commit thread (a mock does not reach a commit process;
        # test_commit_process.py kills one at the same step).
        with mock.patch("agent_session_monitor.ingest.commit.save_state", side_effect=KeyboardInterrupt), \
                mock.patch.dict(os.environ, {DISABLE_ENV: "0"}):
            self.run_monitor(self.log, extra=["--checkpoint-bytes", "100000"])
        self.assertFalse((self.out / ".state.json").exists())
        self.assertTrue(load_store(self.out))          # sessions were written, state not
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertEqual(load_store(self.out), load_store(self.reference))

    def test_crash_between_index_mark_and_update_is_repaired(self):
        from agent_session_monitor.reports.reader import StoreReader

        # One process: a large checkpoint's rows written by a child instead are killed
        # at the same step by test_index_helper.py.
        with mock.patch("agent_session_monitor.store.index.Index.update", side_effect=KeyboardInterrupt), \
                mock.patch.dict(os.environ, {SPLIT_ENV: "-1"}):
            code, _out, _err = self.run_monitor(self.log)
        self.assertEqual(code, 130)
        reader = StoreReader.open(self.out)          # pending sessions overlaid from files
        self.assertEqual(reader.totals()["rounds"], 1500)
        reader.close()
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        reader = StoreReader.open(self.out)
        self.assertEqual(reader.totals()["rounds"], 1500)
        self.assertEqual(reader.count_sessions(), len(load_store(self.reference)))
        reader.close()

    def test_a_killed_writers_temp_files_are_cleaned_by_the_next_cron_pass(self):
        # What a writer killed mid-batch leaves: its temp files and its mark.
        self.out.mkdir(mode=0o700)
        (self.out / ".tmp-abc123").write_bytes(b'{"half": ')
        (self.out / WRITING_MARK).write_bytes(b"")
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(n for n in os.listdir(self.out) if n.startswith(".tmp-")), [])

    def test_a_cron_pass_after_a_clean_one_does_not_list_the_store(self):
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertFalse((self.out / WRITING_MARK).exists(), "a clean exit leaves no mark")
        listed = []
        real_listdir, real_scandir = os.listdir, os.scandir

        def listdir(path="."):
            listed.append(os.path.realpath(path))
            return real_listdir(path)

        def scandir(path="."):
            listed.append(os.path.realpath(path))
            return real_scandir(path)

        write_lines(self.log, [make_line(9000)])
        with mock.patch("os.listdir", listdir), mock.patch("os.scandir", scandir):
            code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertNotIn(os.path.realpath(self.out), listed)
        self.assertEqual(len(load_store(self.out)["s1"]["rounds"]), 1)   # and it was stored

    def test_stray_temp_files_without_a_mark_are_left_by_cron_and_removed_by_follow(self):
        # A version before the mark, killed, left a temp file and no mark: a cron pass does
        # not list the store for it; a long-lived monitor lists it once at its start.
        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        self.out.mkdir(mode=0o700)
        (self.out / ".tmp-abc123").write_bytes(b'{"half": ')
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertTrue((self.out / ".tmp-abc123").exists())
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               allowed_log_dirs=[str(self.tmp)])
        with Monitor(config, progress=False) as m:
            self.assertFalse((self.out / ".tmp-abc123").exists())
            self.assertTrue((self.out / WRITING_MARK).exists(), "set while it runs")
            m.poll_once()
        self.assertEqual(sorted(n for n in os.listdir(self.out) if n.startswith(".tmp-")), [])

    def test_second_monitor_exits_cleanly_while_first_holds_lock(self):
        from agent_session_monitor.store.durable import DirLock

        self.out.mkdir(mode=0o700)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
             "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
             str(self.out / ".lock")], stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), "locked")
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0)                       # cron stays quiet
        code, _out, err = self.run_monitor(self.log, extra=["--follow"])
        self.assertEqual(code, 3)
        self.assertIn("another monitor", err)
        holder.send_signal(signal.SIGKILL)              # C12: the kernel drops the lock
        holder.wait()
        lock = DirLock(self.out)
        self.assertTrue(lock.try_acquire())
        lock.release()

    def test_corrupt_state_uses_backup_or_refuses(self):
        code, _out, err = self.run_monitor(self.log)
        code, _out, err = self.run_monitor(self.log)     # a second pass makes a .bak
        (self.out / ".state.json").write_text("{broken")
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)
        self.assertIn("resumed from", err)
        (self.out / ".state.json").write_text("{broken")
        (self.out / ".state.json.bak").write_text("")
        code, _out, err = self.run_monitor(self.log)
        self.assertEqual(code, 2)
        self.assertIn("--reset-from", err)
        self.assertEqual(len(err.strip().splitlines()), 1)
        code, _out, err = self.run_monitor(self.log, extra=["--reset-from", "beginning"])
        self.assertEqual(code, 0, err)
        self.assertEqual(load_store(self.out), load_store(self.reference))


class BatchedSyncCrash(TempDirTest):
    """A checkpoint makes a whole batch of session files durable at once (write all,
    one syncfs, or where there is none an fsync per file in chunks; rename all, fsync
    the directory once). SIGKILL at any file of
    any phase of that batch (fsutil's ASM_FAULT_BATCH hook), resume, and the store still
    converges exactly; ``.state.json`` never describes data the batch had not made durable."""

    SESSIONS = 320    # more than 2 * CHUNK_FILES: a batch spans three chunks

    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        rng = random.Random(SEED + 1)
        histories: dict[str, int] = {}
        lines = []
        for n in range(1, 1201):
            session = f"agent:{rng.randrange(self.SESSIONS)}"
            histories[session] = histories.get(session, 0) + 2
            lines.append(make_line(n, session=session, history=histories[session],
                                   request_id=rng.random() < 0.8, pad=rng.randrange(200)))
        write_lines(self.log, lines)
        self.reference = self.tmp / "reference"
        code, _out, err = self.run_monitor(self.log, out=self.reference)
        self.assertEqual(code, 0, err)
        self.files = len(load_store(self.reference))
        self.assertGreater(self.files, 2 * CHUNK_FILES)

    def run_child(self, fault: str | None, *extra: str, sync: str | None = None) -> int:
        env = {k: v for k, v in os.environ.items() if k not in ("ASM_FAULT_BATCH", BATCH_SYNC_ENV)}
        if sync:
            env[BATCH_SYNC_ENV] = sync
        if fault:
            env["ASM_FAULT_BATCH"] = fault
        proc = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
             "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q", *extra],
            env=env, capture_output=True, text=True)
        self.assertIn(proc.returncode, (0, -signal.SIGKILL), proc.stderr)
        return proc.returncode

    def test_sigkill_in_every_phase_of_a_batch_converges(self):
        rng = random.Random(SEED)
        points = [("write", rng.randint(1, self.files)), ("sync", rng.randint(1, self.files)),
                  ("sync", rng.randint(CHUNK_FILES + 1, self.files)), ("rename", 1),
                  ("rename", rng.randint(2, self.files)), ("rename", self.files), ("dir", 0)]
        for (phase, k), sync in itertools.product(points, ("syncfs", "fsync")):
            with self.subTest(phase=phase, k=k, sync=sync):
                if sync == "syncfs" and _syncfs_function() is None:
                    self.skipTest("no syncfs(2) here (not Linux): batches fsync per chunk")
                shutil.rmtree(self.out, ignore_errors=True)
                # One batch for the whole log: the kill always falls inside it.
                self.assertEqual(self.run_child(f"{phase}:{k}", sync=sync), -signal.SIGKILL)
                self.assertFalse((self.out / ".state.json").exists(),
                                 "state saved before its batch was durable")
                written = len(load_store(self.out))
                if sync == "syncfs":
                    # One sync for the whole batch: nothing is renamed before it returns.
                    expected = {"write": 0, "sync": 0, "rename": k - 1, "dir": self.files}[phase]
                else:
                    # Chunks before the one killed are renamed already, except, for a kill
                    # while writing, the one whose fsyncs ran meanwhile (it is renamed
                    # once they are done); sessions ahead of the state is the safe
                    # direction (their rounds are skipped on replay).
                    whole_chunks = (k - 1) // CHUNK_FILES * CHUNK_FILES
                    expected = {"write": max(whole_chunks - CHUNK_FILES, 0),
                                "sync": whole_chunks, "rename": k - 1, "dir": self.files}[phase]
                self.assertEqual(written, expected)
                # A second kill early in the resumed run's batch, then a clean run.
                self.run_child(f"{rng.choice(['write', 'sync', 'rename'])}:{rng.randint(1, 5)}",
                               sync=sync)
                self.assertEqual(self.run_child(None, sync=sync), 0)
                self.assertEqual(load_store(self.out), load_store(self.reference),
                                 f"store differs after kills at {phase}:{k} (seed {SEED})")
                self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".tmp-")], [])

    def test_sigkill_in_a_later_batch_of_a_catch_up_converges(self):
        rng = random.Random(SEED)
        for _ in range(3):
            shutil.rmtree(self.out, ignore_errors=True)
            phase = rng.choice(["write", "sync", "rename"])
            # Many small checkpoints: the k-th file of whichever batch reaches k first.
            self.assertEqual(self.run_child(f"{phase}:{rng.randint(2, 20)}",
                                            "--checkpoint-bytes", "30000"), -signal.SIGKILL)
            self.assertEqual(self.run_child(None, "--checkpoint-bytes", "30000"), 0)
            self.assertEqual(load_store(self.out), load_store(self.reference))

    def test_disk_full_in_a_background_commit_rewinds_and_converges(self):
        import errno
        import io

        from agent_session_monitor.ingest import commit as commit_module
        from agent_session_monitor.ingest import monitor as monitor_module
        from agent_session_monitor.errors import MonitorError

        real = commit_module.atomic_write_many
        calls = []

        def fill_up(directory, items):
            calls.append(1)
            if len(calls) == 3:   # a commit running on the thread while lines are parsed
                raise OSError(errno.ENOSPC, "No space left on device")
            real(directory, items)

        # Sessions one after the other: those of the failed batch get no later round
        # that would rewrite them anyway.
        log = self.tmp / "sequential.log"
        write_lines(log, [make_line(n, session=f"seq:{n // 3}", history=1 + n % 3, pad=150)
                          for n in range(600)])
        reference = self.tmp / "sequential-reference"
        self.assertEqual(self.run_monitor(log, out=reference)[0], 0)
        config = monitor_module.MonitorConfig(log_paths=[str(log)], output_dir=self.out,
                                              checkpoint_bytes=30000, follow=True)
        # The same long-lived monitor goes on after the failure (follow mode): what it
        # holds in memory for the failed commit must not survive into the next pass.
        # On the commit thread (a mock does not reach a commit process; the disk fills
        # in one in test_commit_process.py).
        with monitor_module.Monitor(config, err=io.StringIO()) as monitor:
            with mock.patch.object(commit_module, "atomic_write_many", fill_up), \
                    mock.patch.dict(os.environ, {DISABLE_ENV: "0"}):
                with self.assertRaisesRegex(MonitorError, "No space left on device"):
                    monitor.poll_once()
            self.assertEqual(len(calls), 3)
            monitor.poll_once()
        self.assertEqual(load_store(self.out), load_store(reference))
        code, out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        self.assertIn("Nothing new", out)
        self.assertEqual(load_store(self.out), load_store(reference))


class WholeBatchSync(TempDirTest):
    """The one syncfs of a batch bigger than a chunk: how many syncs each size of batch
    costs, and what a failing or refused syncfs leaves (in process, a fake syncfs)."""

    def batch(self, n: int, tag: str = "new") -> list:
        return [(self.out / f"s{i}.json", f'{{"n": {i}, "tag": "{tag}"}}'.encode())
                for i in range(n)]

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.out.iterdir()}

    def fake_syncfs(self, code: int):
        import ctypes

        calls = []

        def syncfs(fd: int) -> int:
            calls.append(fd)
            if code:
                ctypes.set_errno(code)
                return -1
            return 0
        return syncfs, calls

    def count_fsyncs(self):
        calls = []
        real = os.fsync

        def fsync(fd):
            calls.append(fd)
            real(fd)
        return mock.patch.object(os, "fsync", fsync), calls

    def test_a_big_batch_syncs_its_filesystem_once_and_a_small_one_fsyncs_each_file(self):
        from agent_session_monitor.store import durable

        self.out.mkdir()
        for n, syncfs_expected, fsyncs_expected in (
                (3 * CHUNK_FILES + 5, 1, 1),   # only the directory after the renames
                (CHUNK_FILES + 1, 1, 1),
                (CHUNK_FILES - 1, 0, CHUNK_FILES),   # each file and the directory
                (1, 0, 2)):
            with self.subTest(n=n):
                syncfs, calls = self.fake_syncfs(0)
                patch, fsyncs = self.count_fsyncs()
                with mock.patch.object(durable, "_syncfs_function", lambda: syncfs), patch:
                    durable.atomic_write_many(self.out, self.batch(n, f"n{n}"))
                self.assertEqual((len(calls), len(fsyncs)), (syncfs_expected, fsyncs_expected))
                for path, data in self.batch(n, f"n{n}"):
                    self.assertEqual(path.read_bytes(), data)
                self.assertEqual([x for x in os.listdir(self.out) if x.startswith(".tmp-")], [])

    def test_a_failing_syncfs_renames_nothing_and_leaves_no_temp_file(self):
        import errno

        from agent_session_monitor.store import durable

        self.out.mkdir()
        durable.atomic_write_many(self.out, self.batch(3 * CHUNK_FILES, "old"))
        before = self.files()
        syncfs, calls = self.fake_syncfs(errno.EIO)
        with mock.patch.object(durable, "_syncfs_function", lambda: syncfs):
            with self.assertRaises(OSError) as caught:
                durable.atomic_write_many(self.out, self.batch(3 * CHUNK_FILES + 7, "new"))
        self.assertEqual(caught.exception.errno, errno.EIO)
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.files(), before)   # the old files whole, no new one
        self.assertEqual([x for x in os.listdir(self.out) if x.startswith(".tmp-")], [])

    def test_a_sandbox_refusing_syncfs_gets_an_fsync_per_file_instead(self):
        import errno

        from agent_session_monitor.store import durable

        self.out.mkdir()
        for code in (errno.ENOSYS, errno.EPERM):
            with self.subTest(errno=errno.errorcode[code]):
                syncfs, calls = self.fake_syncfs(code)
                patch, fsyncs = self.count_fsyncs()
                n = 2 * CHUNK_FILES + 3
                with mock.patch.object(durable, "_syncfs_function", lambda: syncfs), patch:
                    durable.atomic_write_many(self.out, self.batch(n, errno.errorcode[code]))
                self.assertEqual((len(calls), len(fsyncs)), (1, n + 1))
                for path, data in self.batch(n, errno.errorcode[code]):
                    self.assertEqual(path.read_bytes(), data)


class KilledBetweenCheckpoints(TempDirTest):
    """A catch-up of new lines appended to a log read before, killed after a mid-file
    checkpoint: that checkpoint's state must describe its file (offset and the hash of the
    bytes before it), or the next run takes the log for one rewritten in place, warns so,
    and reads it all again from its start (everything a duplicate: time lost on a big log,
    the counters off). Found by the attacker of 30 Nov; the same on 3b8f28f."""

    def test_a_restart_after_a_kill_mid_catch_up_sees_the_same_file_not_a_rewritten_one(self):
        log = self.tmp / "access.log"
        lines = [make_line(n, session=f"agent:{n % 7}", history=1 + n % 5, pad=1500)
                 for n in range(1, 241)]
        write_lines(log, lines[:80])
        base = self.tmp / "base"
        self.assertEqual(self.run_monitor(log, out=base)[0], 0)
        write_lines(log, lines[80:])
        reference = self.tmp / "reference"
        shutil.copytree(base, reference)
        self.assertEqual(self.run_monitor(log, out=reference)[0], 0)
        expected = json.loads((reference / ".state.json").read_text())["counters"]
        # Kills at a commit's files, index or state, after zero, one or more checkpoints
        # of the same catch-up were saved.
        sequences = (("write:2",), ("index:0", "write:2"), ("write:3", "dir:0"),
                     ("state:0", "write:4"), ("index:0", "index:0", "rename:3"))
        # The commit process, the commit thread, and the parse worker's read loop.
        for mode in ({}, {DISABLE_ENV: "0"}, {"ASM_PARSE_AHEAD_BYTES": "0"}):
            for faults in sequences:
                with self.subTest(faults=faults, mode=mode):
                    shutil.rmtree(self.out, ignore_errors=True)
                    shutil.copytree(base, self.out)
                    for fault in faults:
                        env = {k: v for k, v in os.environ.items() if k != "ASM_FAULT_BATCH"}
                        env.update(mode, ASM_FAULT_BATCH=fault)
                        killed = subprocess.run(
                            [sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                             "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                             "-q", "--checkpoint-bytes", "40000"],
                            env=env, capture_output=True, text=True)
                        self.assertIn(killed.returncode, (0, -signal.SIGKILL), killed.stderr)
                        self.assertNotIn("rewritten", killed.stderr)
                    code, out, err = self.run_monitor(log)
                    self.assertEqual(code, 0, err)
                    self.assertNotIn("rewritten", err + out)
                    counters = json.loads((self.out / ".state.json").read_text())["counters"]
                    for name in ("lines_read", "rounds_stored", "duplicates_skipped"):
                        self.assertEqual(counters[name], expected[name], name)
                    self.assertEqual(load_store(self.out), load_store(reference))
