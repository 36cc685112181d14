"""An idle --follow monitor does not rewrite .state.json (nor its .bak) on every poll, yet
the saved state never lags what it describes: new lines, a rotation with no new bytes,
copytruncate, a file that vanished, are each saved by the pass that saw them, so a restart
(or a SIGKILL) after any of them re-bills nothing and loses nothing.

The spy is the file itself: every save replaces .state.json (a new inode, via the atomic
rename) and links the old one to .state.json.bak.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.ingest.state import load_state
from tests.helpers import ROOT, TempDirTest, load_store, make_line, stored_inputs, write_lines

IDLE_PASSES = 6


def saved_view(path) -> dict:
    """What a saved state describes: everything but when it was written and how many
    passes ran (an idle poll's count is kept in memory until the next save)."""
    data = json.loads(path.read_bytes())
    data.pop("written_at", None)
    data["counters"].pop("passes", None)
    return data


def memory_view(monitor: Monitor) -> dict:
    data = json.loads(monitor.state.to_json())
    data.pop("written_at", None)
    data["counters"].pop("passes", None)
    return data


def stamp(path) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


class IdleFollowSaves(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        self.state_path = self.out / ".state.json"
        self.bak = self.out / ".state.json.bak"
        self.n = 0

    def append(self, count: int, path=None) -> None:
        write_lines(path or self.log, [make_line(self.n + i) for i in range(count)])
        self.n += count

    def monitor(self) -> Monitor:
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               rotate_wait=0.0)
        return Monitor(config, err=io.StringIO())

    def assert_idle_passes_write_nothing(self, monitor: Monitor) -> None:
        before = stamp(self.state_path), stamp(self.bak) if self.bak.exists() else None
        for _ in range(IDLE_PASSES):
            stats = monitor.poll_once()
            self.assertEqual(stats.lines, 0)
        after = stamp(self.state_path), stamp(self.bak) if self.bak.exists() else None
        self.assertEqual(after, before, "an idle pass rewrote the state")
        self.assertEqual(saved_view(self.state_path), memory_view(monitor))

    def assert_saved_now(self, monitor: Monitor, what: str) -> None:
        before = stamp(self.state_path)
        monitor.poll_once()
        self.assertNotEqual(stamp(self.state_path), before, f"{what}: the state was not saved")
        self.assertEqual(saved_view(self.state_path), memory_view(monitor), what)

    def assert_restart_rebills_nothing(self) -> None:
        # A second monitor (the service restarted, or killed with SIGKILL right now)
        # reads from the saved state: every line once.
        with Monitor(MonitorConfig(log_paths=[str(self.log)], output_dir=self.out),
                     err=io.StringIO()) as cron:
            stats = cron.poll_once()
        self.assertEqual((stats.rounds, stats.duplicates), (0, 0))
        self.assertEqual(stored_inputs(self.out), [100 + i for i in range(self.n)])

    def test_idle_follow_passes_do_not_rewrite_the_state_and_new_lines_still_save_it(self):
        self.append(5)
        with self.monitor() as monitor:
            monitor.poll_once()
            self.assert_idle_passes_write_nothing(monitor)
            self.append(3)
            self.assert_saved_now(monitor, "new lines")
            self.assert_idle_passes_write_nothing(monitor)
            # Half a line: nothing to consume (the size the state records moved: one save
            # at most), then idle again; its end: saved.
            with open(self.log, "ab") as f:
                f.write(make_line(self.n)[:40])
            monitor.poll_once()
            self.assertEqual(saved_view(self.state_path), memory_view(monitor))
            self.assert_idle_passes_write_nothing(monitor)
            with open(self.log, "ab") as f:
                f.write(make_line(self.n)[40:])
            self.n += 1
            self.assert_saved_now(monitor, "a line completed")
        self.assert_restart_rebills_nothing()

    def test_rotation_without_new_bytes_is_saved_by_the_pass_that_saw_it(self):
        self.append(4)
        with self.monitor() as monitor:
            monitor.poll_once()
            self.assert_idle_passes_write_nothing(monitor)
            self.log.rename(self.tmp / "access.log.1")
            self.log.touch()
            self.assert_saved_now(monitor, "rotation (create), no new bytes")
            self.assert_idle_passes_write_nothing(monitor)
            self.append(2)
            self.assert_saved_now(monitor, "lines after a rotation")
            self.assert_idle_passes_write_nothing(monitor)
        self.assert_restart_rebills_nothing()

    def test_copytruncate_without_new_bytes_is_saved_by_the_pass_that_saw_it(self):
        self.append(4)
        with self.monitor() as monitor:
            monitor.poll_once()
            self.assert_idle_passes_write_nothing(monitor)
            shutil.copyfile(self.log, self.tmp / "access.log.1")
            os.truncate(self.log, 0)
            self.assert_saved_now(monitor, "copytruncate, no new bytes")
            self.assert_idle_passes_write_nothing(monitor)
            self.append(3)
            self.assert_saved_now(monitor, "lines after copytruncate")
        self.assert_restart_rebills_nothing()

    def test_a_vanished_rotation_changes_the_saved_state_when_it_changes_memory(self):
        self.append(3)
        with self.monitor() as monitor:
            monitor.poll_once()
            self.log.rename(self.tmp / "access.log.1")
            self.append(2)
            monitor.poll_once()
            self.assert_idle_passes_write_nothing(monitor)
            (self.tmp / "access.log.1").unlink()
            for _ in range(3):   # whenever the tailer lets the entry go, the disk follows
                monitor.poll_once()
                self.assertEqual(saved_view(self.state_path), memory_view(monitor))
            self.assert_idle_passes_write_nothing(monitor)
        self.assert_restart_rebills_nothing()

    def test_seeded_event_sequences_keep_the_saved_state_equal_to_memory(self):
        # Model check: after every pass of a random sequence of appends, idle polls,
        # rotations, copytruncates and deletions, the state on disk is the one in memory
        # (but for the pass count), and an idle pass never touches the file.
        for seed in range(6):
            with self.subTest(seed=seed):
                shutil.rmtree(self.out, ignore_errors=True)
                for p in self.tmp.glob("access.log*"):
                    p.unlink()
                self.n = 0
                rng = random.Random(seed)
                self.append(2)
                with self.monitor() as monitor:
                    for _step in range(25):
                        event = rng.choice(("append", "idle", "idle", "rotate", "copytruncate",
                                            "delete_rotated"))
                        before = stamp(self.state_path) if self.state_path.exists() else None
                        if event == "append":
                            self.append(rng.randint(1, 3))
                        elif event == "rotate" and self.log.exists():
                            self.log.rename(self.tmp / "access.log.1")
                            self.log.touch()
                        elif event == "copytruncate" and self.log.exists():
                            shutil.copyfile(self.log, self.tmp / "access.log.1")
                            os.truncate(self.log, 0)
                        elif event == "delete_rotated" and (self.tmp / "access.log.1").exists():
                            (self.tmp / "access.log.1").unlink()
                        changed_before = memory_view(monitor) if before else None
                        stats = monitor.poll_once()
                        self.assertEqual(saved_view(self.state_path), memory_view(monitor),
                                         (seed, _step, event))
                        if before and stats.lines == 0 and memory_view(monitor) == changed_before:
                            self.assertEqual(stamp(self.state_path), before, (seed, event))
                # Rotated files deleted before they were read lose their lines (counted
                # as data loss); whatever was stored, a restart adds nothing to it.
                stored = stored_inputs(self.out)
                with Monitor(MonitorConfig(log_paths=[str(self.log)], output_dir=self.out),
                             err=io.StringIO()) as cron:
                    stats = cron.poll_once()
                self.assertEqual((stats.rounds, stats.duplicates), (0, 0))
                self.assertEqual(stored_inputs(self.out), stored)
                self.assertEqual(len(stored), len(set(stored)))

    def test_an_idle_monitor_still_saves_a_heartbeat_for_the_last_pass_metric(self):
        # /metrics' asm_last_pass_timestamp_seconds is the state's written_at, and the
        # README tells operators to alert when it is 300 s old: an idle monitor is not
        # a dead one. It saves once every idle_save_seconds (60 s; 0.2 s here).
        self.append(2)
        with self.monitor() as monitor:
            monitor.poll_once()
            monitor.idle_save_seconds = 0.2
            first = stamp(self.state_path), json.loads(self.state_path.read_bytes())
            monitor.poll_once()
            self.assertEqual(stamp(self.state_path), first[0])
            time.sleep(0.25)
            monitor.poll_once()
            self.assertNotEqual(stamp(self.state_path), first[0])
            again = json.loads(self.state_path.read_bytes())
            self.assertGreater(again["written_at"], first[1]["written_at"])
            self.assertEqual(again["counters"]["passes"], first[1]["counters"]["passes"] + 2)
        self.assertEqual(Monitor.idle_save_seconds, 60.0)

    def test_a_stopped_follow_monitor_saves_the_passes_its_idle_polls_counted(self):
        # End to end: main.py --follow, idle for several polls (the state file is not
        # replaced), then SIGTERM: the state saved on the way out counts those passes.
        self.append(3)
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "--follow",
             "--refresh-interval", "0.05", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (self.state_path.exists() and load_store(self.out)):
                self.assertLess(time.monotonic(), deadline, "the monitor never stored")
                time.sleep(0.05)
            time.sleep(0.3)
            first = stamp(self.state_path)
            time.sleep(1.0)   # ~20 polls at 0.05 s
            self.assertEqual(stamp(self.state_path), first, "idle polls rewrote the state")
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
        self.assertIn("stopped; state saved.", err)
        state, _ = load_state(self.state_path, None)
        self.assertGreater(state.counters["passes"], 2)
        self.assertEqual(state.counters["rounds_stored"], 3)
