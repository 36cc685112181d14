"""Faults the monitor meets unattended (issue: reliability): a full disk, unreadable
files, a log that is not there yet, the clock jumping back, a 50 MB line."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from unittest import mock

from tests.helpers import ROOT, TempDirTest, load_store, make_line, require_tool, stored_inputs, write_lines


def can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(path)], capture_output=True)
    return ok


class DiskFull(TempDirTest):
    def monitor_cmd(self, log, out) -> list[str]:
        return [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
                str(out), "--allow-log-dir", str(self.tmp)]

    def test_disk_full_keeps_the_store_and_catches_up_once_space_returns(self):
        mnt = self.tmp / "small"
        require_tool(self, "tmpfs mount (root)", found=can_mount_tmpfs(mnt))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", str(mnt)], capture_output=True)
        out = mnt / "sessions"
        log = self.tmp / "access.log"
        write_lines(log, [make_line(n, session=f"s{n % 3}") for n in range(1, 11)])
        first = subprocess.run(self.monitor_cmd(log, out), capture_output=True, text=True)
        self.assertEqual(first.returncode, 0, first.stderr)
        before = {n: (out / n).read_bytes() for n in os.listdir(out) if n.endswith(".json")}
        write_lines(log, [make_line(n, session=f"s{n % 3}", pad=4000, history=3)
                          for n in range(11, 400)])
        full = subprocess.run(self.monitor_cmd(log, out), capture_output=True, text=True)
        self.assertEqual(full.returncode, 1)
        self.assertIn("No space left on device", full.stderr)
        self.assertEqual(len(full.stderr.strip().splitlines()), 1, full.stderr)
        for name, data in before.items():        # the previous store is intact
            self.assertEqual((out / name).read_bytes(), data, name)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = subprocess.run(self.monitor_cmd(log, out), capture_output=True, text=True)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(stored_inputs(out), [100 + n for n in range(1, 400)])

    def test_file_size_limit_is_reported_and_nothing_advances(self):
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)])
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        write_lines(log, [make_line(n, pad=3000, history=4) for n in range(2, 120)])

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

        proc = subprocess.run(self.monitor_cmd(log, self.out), capture_output=True, text=True,
                              preexec_fn=limit)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("File too large", proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertEqual(stored_inputs(self.out), [101])     # nothing half-applied
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, 120)])


class Unreadable(TempDirTest):
    """EACCES is injected (as root every file is readable): R15 of the scenarios."""

    def test_unreadable_log_is_one_clear_error_and_state_kept(self):
        from agent_session_monitor.ingest import tail

        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)])
        self.run_monitor(log)
        write_lines(log, [make_line(2)])
        real_open = tail.open_log

        def denied(path, *a, **kw):
            if str(path) == str(log):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **kw)

        with mock.patch.object(tail, "open_log", denied):
            code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 1)
        self.assertEqual(err.strip(), f"warning: cannot read {log}: Permission denied")
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(len(state["sources"]), 1)           # the entry is kept, not orphaned
        self.assertIsNone(state["sources"][0]["missing_since"])
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        self.assertEqual(stored_inputs(self.out), [101, 102])

    def test_unwritable_output_directory_is_one_clear_error(self):
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)])
        self.out.mkdir(mode=0o700)
        real = os.open

        def denied(path, flags, *a, **kw):
            if str(path).startswith(str(self.out)):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, flags, *a, **kw)

        with mock.patch("os.open", denied):
            code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(str(self.out), err)
        self.assertIn("Permission denied", err)


class MissingLog(TempDirTest):
    def test_one_pass_says_the_log_is_missing(self):
        code, _out, err = self.run_monitor(self.tmp / "nope.log")
        self.assertEqual(code, 1)
        self.assertIn("no access log", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_follow_waits_for_the_log_then_reads_it_and_stops_on_sigterm(self):
        log = self.tmp / "later.log"
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                                 "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                                 "--follow", "--refresh-interval", "0.1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.8)
            write_lines(log, [make_line(1), make_line(2)])
            deadline = time.time() + 10
            while time.time() < deadline:
                if self.out.exists() and len(stored_inputs(self.out)) == 2:
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        self.assertIn("waiting for", err)
        self.assertEqual(proc.returncode, 143)
        self.assertIn("state saved", err)
        self.assertEqual(stored_inputs(self.out), [101, 102])
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(state["sources"][0]["offset"], log.stat().st_size)


class ClockAndSize(TempDirTest):
    def test_clock_going_backwards_changes_nothing(self):
        log = self.tmp / "access.log"
        write_lines(log, [make_line(n) for n in range(1, 4)])
        self.run_monitor(log)
        write_lines(log, [make_line(n) for n in range(4, 7)])
        os.utime(log, (time.time() + 86400, time.time() + 86400))   # mtime in the future
        real = time.time
        with mock.patch("time.time", lambda: real() - 30 * 86400):
            code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        self.run_monitor(log)
        self.assertEqual(stored_inputs(self.out), [101, 102, 103, 104, 105, 106])

    def test_a_50_mb_line_is_parsed_and_the_next_line_too(self):
        log = self.tmp / "access.log"
        huge = make_line(1, pad=25 * 2**20)   # the question repeats the message: ~50 MB
        self.assertGreater(len(huge), 50 * 2**20)
        write_lines(log, [huge, make_line(2)])
        code, _out, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        self.assertEqual(stored_inputs(self.out), [101, 102])
        doc = load_store(self.out)["s1"]
        self.assertGreater(len(doc["rounds"][0]["messages"][1]["content"]), 25 * 2**20)
