"""A stop whose exception clean-up code replaced still ends as a stop.

CI (30 Nov 23:34, test_stop_bounded, SIGTERM at a seeded random bytecode of a follow
pass): main.py exited 1 with "internal error: RuntimeError: release unlocked lock". A
SIGTERM that cuts threading.Thread.join (CPython 3.11's _wait_for_tstate_lock) between
its "if lock.locked()" and "lock.release()" in its except clause, while the thread ends,
raises that RuntimeError in place of the stop. The state on disk is the last committed
(every write is atomic), so the run ends as the stop: 143 and "stopped; state saved.".
An exception with no stop requested is still a bug: one line, exit 1.

The class: the replacement raised after the SIGTERM at each of the first passes of a
follow run, as RuntimeError, OSError and ValueError; and the same errors with no SIGTERM."""

from __future__ import annotations

import io
import os
import signal
from unittest import mock

from agent_session_monitor.ingest.monitor import Monitor
from agent_session_monitor.monitor_cli import main as monitor_main
from tests.helpers import TempDirTest, make_line, write_lines

ERRORS = (RuntimeError("release unlocked lock"), ValueError("I/O on closed file"),
          AssertionError("invariant"))


class StopReplacedByACleanupError(TempDirTest):
    def run_follow(self, name: str, at: int, error: Exception, stop: bool) -> tuple[int, str]:
        log = self.tmp / f"{name}.log"
        write_lines(log, [make_line(i, session=f"s{i % 3}") for i in range(1, 30)])
        real, passes = Monitor.poll_once, [0]

        def poll(monitor):
            stats = real(monitor)
            passes[0] += 1
            if passes[0] == at:
                if not stop:
                    raise error
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    sum(range(10))   # the handler raises the stop here
                except KeyboardInterrupt:
                    raise error   # what the interrupted clean-up raised instead
            return stats

        err = io.StringIO()
        argv = ["--log-path", str(log), "--output-dir", str(self.tmp / f"{name}-out"),
                "--allow-log-dir", str(self.tmp), "--follow", "-q", "--refresh-interval",
                "0.001"]
        with mock.patch.object(Monitor, "poll_once", poll), \
                mock.patch.dict(os.environ, {"AGENT_SESSION_MONITOR_DEBUG": ""}):
            code = monitor_main(argv, out=io.StringIO(), err=err)
        return code, err.getvalue()

    def test_an_error_that_replaced_a_stop_ends_as_the_stop_and_one_without_is_a_bug(self):
        for n, error in enumerate(ERRORS):
            for at in (1, 2, 3):
                with self.subTest(error=type(error).__name__, passes=at):
                    code, err = self.run_follow(f"s{n}-{at}", at, error, stop=True)
                    self.assertEqual((code, err.strip().splitlines()),
                                     (143, ["stopped; state saved."]))
                    code, err = self.run_follow(f"b{n}-{at}", at, error, stop=False)
                    self.assertEqual(code, 1, err)
                    self.assertIn("internal error", err)
