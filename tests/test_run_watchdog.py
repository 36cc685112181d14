"""A test that hangs fails, and the suite still ends with its one-line result
(tests/run.py's watchdog).

CI once ran out of its 90 minutes inside one test of test_stop_bounded: the run was
killed and printed no result at all. Here a module of hanging tests runs under run.py
with a 2 s limit: one blocked on a lock nobody releases (TestHung gets it out), one
that swallows TestHung and keeps waiting (the run ends after the grace with the
summary line), and the tests around them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.helpers import ROOT, TempDirTest

HANGING = '''
import threading, time, unittest

class A(unittest.TestCase):
    def test_1_passes_before(self):
        pass

    def test_2_waits_on_a_lock_nobody_releases(self):
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()

    def test_3_passes_after(self):
        pass
'''

STUBBORN = '''
import time, unittest

class B(unittest.TestCase):
    def test_1_passes_before(self):
        pass

    def test_2_swallows_every_exception(self):
        while True:
            try:
                time.sleep(0.05)
            except Exception:
                pass

    def test_3_never_reached(self):
        pass
'''


ALONE = '''
import signal, threading, unittest

class C(unittest.TestCase):
    def test_1_the_runner_adds_no_thread(self):
        # the monitor forks its helpers only while it is the one thread
        self.assertEqual(threading.active_count(), 1, threading.enumerate())

    def test_2_leaves_sigterm_blocked(self):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def test_3_finds_it_unblocked_again(self):
        self.assertNotIn(signal.SIGTERM, signal.pthread_sigmask(signal.SIG_BLOCK, set()))
'''


class Watchdog(TempDirTest):
    def run_module(self, name: str, text: str) -> subprocess.CompletedProcess:
        (self.tmp / f"{name}.py").write_text(text)
        program = textwrap.dedent(f"""
            import sys, unittest
            sys.path[:0] = [{str(ROOT)!r}, {str(self.tmp)!r}]
            from tests import run
            import {name}
            sys.exit(run.main([], unittest.defaultTestLoader.loadTestsFromModule({name})))
            """)
        env = dict(os.environ, ASM_TEST_TIMEOUT="2", ASM_TEST_GRACE="3")
        return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              env=env, timeout=120)

    def test_a_hung_test_fails_and_the_run_goes_on(self):
        run = self.run_module("hanging_mod", HANGING)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.stdout.strip().splitlines()[-1], "2 passed, 1 failed, 0 skipped",
                         run.stdout + run.stderr)
        self.assertIn("still running after", run.stderr)
        self.assertIn("test_2_waits_on_a_lock_nobody_releases", run.stderr)
        self.assertIn("TestHung", run.stderr)   # the failure's traceback, listed at the end
        # every thread's stack was printed (faulthandler's form), the hung one's included
        self.assertRegex(run.stderr, r"line \d+ in test_2_waits_on_a_lock_nobody_releases")

    def test_a_test_that_swallows_the_timeout_ends_the_run_with_its_result(self):
        run = self.run_module("stubborn_mod", STUBBORN)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.stdout.strip().splitlines()[-1], "1 passed, 1 failed, 0 skipped",
                         run.stdout + run.stderr)
        self.assertIn("did not end 3 s after TestHung", run.stderr)

    def test_the_runner_stays_one_thread_and_fails_a_test_that_leaves_sigterm_blocked(self):
        run = self.run_module("alone_mod", ALONE)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.stdout.strip().splitlines()[-1], "2 passed, 1 failed, 0 skipped",
                         run.stdout + run.stderr)
        self.assertIn("FAIL: test_2_leaves_sigterm_blocked", run.stderr)
        self.assertIn("left the stop signals changed", run.stderr)
