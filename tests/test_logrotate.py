"""Rotation by the real logrotate binary, with a writer appending while it rotates, and
the monitor run between and across rotations (LOG_ROTATION.md documents each mode)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time

from tests.helpers import TempDirTest, load_store, make_line, require_tool

SEED = int(os.environ.get("ASM_ROTATE_SEED", "7"))


class Writer(threading.Thread):
    """Appends numbered lines. ``reopen``: opens the path for every line (a writer that
    follows create-style rotation); otherwise one O_APPEND descriptor for good (the
    writer copytruncate exists for)."""

    def __init__(self, path, total: int, reopen: bool, pause: threading.Event | None = None):
        super().__init__(daemon=True)
        self.path, self.total, self.reopen, self.pause = path, total, reopen, pause
        self.written = 0
        self.times: dict[int, tuple[float, float]] = {}   # line -> (before, after) its write

    def run(self) -> None:
        rng = random.Random(SEED)
        fd = None if self.reopen else os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for n in range(1, self.total + 1):
            while self.pause is not None and self.pause.is_set():
                time.sleep(0.001)
            data = make_line(n, session=f"agent:{n % 9}", history=1 + n % 5)
            before = time.monotonic()
            if self.reopen:
                with open(self.path, "ab") as f:
                    f.write(data)
            else:
                os.write(fd, data)
            self.times[n] = (before, time.monotonic())
            self.written = n
            if rng.random() < 0.05:
                time.sleep(0.002)
        if fd is not None:
            os.close(fd)


class RealLogrotate(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        require_tool(self, "logrotate")
        self.log = self.tmp / "access.log"
        self.log.touch()
        self.status = self.tmp / "logrotate.status"
        self.logrotate_runs: list[tuple[float, float]] = []   # (start, end) of each run

    def config(self, *directives: str) -> str:
        conf = self.tmp / "logrotate.conf"
        body = "\n    ".join(("rotate 5", "missingok", *directives))
        conf.write_text(f"{self.log} {{\n    {body}\n}}\n")
        os.chmod(conf, 0o644)
        return str(conf)

    def logrotate(self, conf: str) -> None:
        started = time.monotonic()
        proc = subprocess.run(["logrotate", "-f", "-s", str(self.status), conf],
                              capture_output=True, text=True)
        self.logrotate_runs.append((started, time.monotonic()))
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def monitor(self) -> None:
        code, _out, err = self.run_monitor(self.log, extra=["--rotate-wait", "0.5"])
        self.assertEqual(code, 0, err)

    def scenario(self, directives: tuple[str, ...], reopen: bool, total: int = 1200,
                 rotations: int = 4, quiesce: bool = False) -> tuple[list[int], int]:
        conf = self.config(*directives)
        pause = threading.Event() if quiesce else None
        writer = self.writer = Writer(self.log, total, reopen, pause)
        rng = random.Random(SEED)
        writer.start()
        for i in range(rotations):
            time.sleep(rng.uniform(0.05, 0.25))
            if pause is not None:
                pause.set()
                time.sleep(0.01)
            self.logrotate(conf)
            if pause is not None:
                pause.clear()
            if i % 2 == 0:
                self.monitor()       # between rotations; odd ones rotate twice in a row
        writer.join()
        self.monitor()
        time.sleep(0.6)              # past --rotate-wait: old rotations are final
        self.monitor()
        got = sorted(r["input_tokens"] - 100 for d in load_store(self.out).values()
                     for r in d["rounds"])
        return got, writer.written

    def assertExactlyOnce(self, got: list[int], written: int) -> None:
        self.assertEqual(len(got), len(set(got)), "a line was counted twice")
        self.assertEqual(got, list(range(1, written + 1)))

    def test_create_mode_with_writer_appending(self):
        got, written = self.scenario(("create",), reopen=True)
        self.assertExactlyOnce(got, written)

    def test_compress_with_delaycompress(self):
        got, written = self.scenario(("create", "compress", "delaycompress"), reopen=True,
                                     rotations=5)
        self.assertExactlyOnce(got, written)
        self.assertTrue(any(n.endswith(".gz") for n in os.listdir(self.tmp)))

    def test_compress_without_delaycompress(self):
        got, written = self.scenario(("create", "compress"), reopen=True)
        self.assertExactlyOnce(got, written)

    def test_copytruncate_with_quiet_writer_during_rotation_is_exact(self):
        got, written = self.scenario(("copytruncate",), reopen=False, quiesce=True)
        self.assertExactlyOnce(got, written)

    def test_copytruncate_with_busy_writer_never_double_counts(self):
        got, written = self.scenario(("copytruncate",), reopen=False)
        self.assertEqual(len(got), len(set(got)), "a line was counted twice")
        self.assertTrue(set(got) <= set(range(1, written + 1)))
        # logrotate's documented slice: lines written between its copy and its truncate
        # are lost, and only those. How many depends on how long logrotate runs (on a
        # loaded machine, longer), so the test checks when each lost line was written:
        # while a logrotate process was running, never before or after one.
        lost = sorted(set(range(1, written + 1)) - set(got))
        outside = [n for n in lost if not any(
            start <= self.writer.times[n][1] and self.writer.times[n][0] <= end
            for start, end in self.logrotate_runs)]
        self.assertEqual(outside, [], f"lost outside logrotate's copy-truncate window "
                         f"({len(lost)} lost in all)")

    def test_monitor_stopped_across_several_rotations(self):
        conf = self.config("create", "compress", "delaycompress")
        for batch in range(4):
            with open(self.log, "ab") as f:
                for n in range(batch * 50 + 1, batch * 50 + 51):
                    f.write(make_line(n))
            if batch == 0:
                self.monitor()
            self.logrotate(conf)
        self.monitor()
        got = sorted(r["input_tokens"] - 100 for d in load_store(self.out).values()
                     for r in d["rounds"])
        self.assertEqual(got, list(range(1, 201)))

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
