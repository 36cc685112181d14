"""How main.py ends on a stop: the shell's convention, 128 + the signal's number.

Ctrl-C (SIGINT) exits 130, a service manager's stop (SIGTERM: systemctl stop, docker
stop, kill) exits 143; either way the state is saved first and the line
"stopped; state saved." is printed. A script or unit can then tell a stop it asked for
from a failure (1), and which stop it was.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from unittest import mock

from agent_session_monitor.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from agent_session_monitor.ingest.monitor import Monitor
from agent_session_monitor.ingest.state import load_state
from agent_session_monitor.monitor_cli import main as monitor_main
from tests.helpers import ROOT, TempDirTest, load_store, make_line, write_lines


class StopSignals(TempDirTest):
    def follow_then(self, signum: int) -> tuple[int, str]:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(n) for n in range(5)])
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
             str(self.out), "--allow-log-dir", str(self.tmp), "--follow",
             "--refresh-interval", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A shell without job control starts background jobs with SIGINT ignored,
            # and a child inherits that: give it Ctrl-C's default back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while not (self.out.is_dir() and load_store(self.out)
                       and (self.out / ".state.json").exists()):
                self.assertLess(time.monotonic(), deadline, "the monitor never stored")
                time.sleep(0.05)
            time.sleep(0.2)
            proc.send_signal(signum)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        return proc.returncode, err

    def test_sigterm_exits_143_and_sigint_130_each_after_saving_the_state(self):
        for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            with self.subTest(signal=signum.name):
                self.setUp()
                got, err = self.follow_then(signum)
                self.assertEqual(got, code, err)
                self.assertEqual(code, 128 + signum)
                self.assertIn("stopped; state saved.", err)
                self.assertNotIn("Traceback", err)
                state, _ = load_state(self.out / ".state.json", None)
                self.assertEqual(state.counters["rounds_stored"], 5)

    def test_the_codes_are_128_plus_the_signal_in_process_too(self):
        self.assertEqual((EXIT_INTERRUPTED, EXIT_TERMINATED),
                         (128 + signal.SIGINT, 128 + signal.SIGTERM))
        log = self.tmp / "access.log"
        write_lines(log, [make_line(0)])
        argv = ["--log-path", str(log), "--output-dir", str(self.out), "--allow-log-dir",
                str(self.tmp), "--follow", "--refresh-interval", "0.01"]
        real = Monitor.poll_once
        for stop, code in (("term", 143), ("int", 130)):
            with self.subTest(stop=stop):
                def poll_then_stop(monitor, stop=stop):
                    stats = real(monitor)
                    if stop == "term":
                        os.kill(os.getpid(), signal.SIGTERM)   # the handler main() installed
                    else:
                        raise KeyboardInterrupt
                    return stats
                err = io.StringIO()
                with mock.patch.object(Monitor, "poll_once", poll_then_stop):
                    got = monitor_main(argv, out=io.StringIO(), err=err)
                self.assertEqual(got, code, err.getvalue())
                self.assertIn("stopped; state saved.", err.getvalue())
