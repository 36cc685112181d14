#!/usr/bin/env python3
"""Run the whole unit-test suite and end with one line: ``N passed, N failed, N skipped``.

    python3 tests/run.py               # everything
    python3 tests/run.py -k rotation   # tests whose name matches (repeatable: any of them)
    python3 tests/run.py -v            # one line per test

Progress goes to the terminal one line per test module (its counts and time) as each
module finishes; failures are listed in full after the summary table. A test needing a
tool that is not installed (chromium, logrotate, a test-only Python package) is skipped
with its reason; the reasons are listed before the last line.

A test that hangs must not hang the run: CI has a fixed time, and a run it kills prints
no result at all. A watchdog gives each test ``ASM_TEST_TIMEOUT`` seconds (600): past
that it prints every thread's stack, raises ``TestHung`` in the test (it fails, the run
goes on) and, if the test is still there ``ASM_TEST_GRACE`` seconds (60) later, ends
the run with its counts so far and this test counted failed. A test must also leave the
stop signals as it found them (a SIGTERM left blocked hangs a later test's stop).
"""

import faulthandler
import os
import signal
import sys
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class TestHung(Exception):
    """Raised in a test that ran past its time (the watchdog's signal)."""


class Watchdog:
    """A time limit per test, kept without a thread: the monitor forks its helpers
    only while it is the one thread of the process (a test runner's thread would
    silently turn every in-process run into its threaded fallback). faulthandler's
    own C thread prints the stacks; SIGALRM raises ``TestHung`` in the test, then
    ends the run ``grace`` seconds later; faulthandler ends it if even that cannot
    run (the main thread stuck in C)."""

    def __init__(self, limit: float, grace: float, result: "ModuleProgress") -> None:
        self.limit, self.grace, self.result = limit, grace, result
        self.test: str | None = None
        self.stage = 0

    def start_test(self, test_id: str) -> None:
        self.test, self.stage = test_id, 0
        faulthandler.dump_traceback_later(self.limit, exit=False, file=sys.__stderr__)
        signal.signal(signal.SIGALRM, self._alarm)
        signal.setitimer(signal.ITIMER_REAL, self.limit + 0.5)

    def stop_test(self) -> None:
        self.test = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()

    def _alarm(self, _signum, _frame) -> None:
        if self.test is None:
            return
        if self.stage == 0:
            self.stage = 1
            self._say(f"{self.test}: still running after {self.limit:.0f} s (its stacks "
                      "are above); raising TestHung in it")
            faulthandler.dump_traceback_later(self.grace + 5, exit=True, file=sys.__stderr__)
            signal.setitimer(signal.ITIMER_REAL, self.grace)
            raise TestHung(f"ran past ASM_TEST_TIMEOUT ({self.limit:g} s)")
        self._say(f"{self.test}: did not end {self.grace:.0f} s after TestHung; "
                  "ending the run here")
        print(self.result.summary_line(extra_failed=1), file=sys.__stdout__, flush=True)
        os._exit(1)

    @staticmethod
    def _say(text: str) -> None:
        print(f"\n{text}", file=sys.__stderr__, flush=True)


class ModuleProgress(unittest.TextTestResult):
    """Counts per test module, printed when the run moves on to the next module."""

    def __init__(self, stream, descriptions, verbosity):
        super().__init__(stream, descriptions, verbosity)
        self.quiet = verbosity < 2
        self.modules: list[tuple[str, dict, float]] = []
        self._current: str | None = None
        self._counts: dict = {}
        self._started = 0.0
        self.watchdog: Watchdog | None = None

    def summary_line(self, extra_failed: int = 0) -> str:
        skipped = len(self.skipped)
        failed = len(self.failures) + len(self.errors) + len(self.unexpectedSuccesses)
        passed = self.testsRun - failed - skipped - len(self.expectedFailures) - extra_failed
        return f"{passed} passed, {failed + extra_failed} failed, {skipped} skipped"

    def _module_of(self, test) -> str:
        return type(test).__module__.rsplit(".", 1)[-1]

    def _signal_state(self) -> tuple:
        """What a test must leave as it found it: the main thread's blocked signals and
        the handlers of SIGINT and SIGTERM. A test that leaves SIGTERM blocked makes a
        later one's stop wait for ever (the follower polls on)."""
        return (frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, set()) & _STOP_SIGNALS),
                tuple(signal.getsignal(sig) for sig in sorted(_STOP_SIGNALS)))

    def startTest(self, test):
        self._signals_before = self._signal_state()
        module = self._module_of(test)
        if module != self._current:
            self._finish_module()
            self._current, self._counts, self._started = module, {"passed": 0, "failed": 0,
                                                                  "skipped": 0}, time.monotonic()
        if self.watchdog:
            self.watchdog.start_test(test.id())
        super().startTest(test)

    def stopTest(self, test):
        if self.watchdog:
            self.watchdog.stop_test()
        if threading._active_limbo_lock._is_owned():
            # A lock of threading's own left held by this thread (an exception raised
            # at the end of its ``with`` block): every later thread's exit would wait.
            while threading._active_limbo_lock._is_owned():
                threading._active_limbo_lock.release()
            try:
                raise AssertionError("left threading._active_limbo_lock held")
            except AssertionError:
                self.addFailure(test, sys.exc_info())
        after = self._signal_state()
        if after != self._signals_before:
            blocked, handlers = self._signals_before
            for sig, handler in zip(sorted(_STOP_SIGNALS), handlers):
                signal.signal(sig, signal.SIG_IGN)   # a pending one is dropped here
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
            signal.pthread_sigmask(signal.SIG_SETMASK, (mask - _STOP_SIGNALS) | blocked)
            for sig, handler in zip(sorted(_STOP_SIGNALS), handlers):
                signal.signal(sig, handler)
            try:
                raise AssertionError(f"left the stop signals changed: blocked/handlers "
                                     f"{self._signals_before} -> {after}")
            except AssertionError:
                self.addFailure(test, sys.exc_info())
        super().stopTest(test)

    def _finish_module(self) -> None:
        if self._current is None:
            return
        seconds = time.monotonic() - self._started
        self.modules.append((self._current, self._counts, seconds))
        if self.quiet:
            c = self._counts
            mark = "FAIL" if c["failed"] else "ok"
            self.stream.write(f"{self._current:<28} {c['passed']:4d} passed {c['failed']:3d} failed "
                              f"{c['skipped']:3d} skipped {seconds:7.1f} s  {mark}\n")
            self.stream.flush()

    def stopTestRun(self):
        self._finish_module()
        self._current = None
        super().stopTestRun()

    # Counting; in quiet mode nothing else is printed per test (no dots).
    def addSuccess(self, test):
        self._counts["passed"] += 1
        unittest.TestResult.addSuccess(self, test) if self.quiet else super().addSuccess(test)

    def addFailure(self, test, err):
        self._counts["failed"] += 1
        unittest.TestResult.addFailure(self, test, err) if self.quiet else super().addFailure(test, err)

    def addError(self, test, err):
        if self._current is None:   # a module that failed to import, or a class fixture
            self._current, self._counts, self._started = (
                str(test), {"passed": 0, "failed": 0, "skipped": 0}, time.monotonic())
        self._counts["failed"] += 1
        unittest.TestResult.addError(self, test, err) if self.quiet else super().addError(test, err)

    def addSubTest(self, test, subtest, err):
        # A failing subtest fails its test: count it in the module's line too.
        if err is not None:
            self._counts["failed"] += 1
        super().addSubTest(test, subtest, err)

    def addSkip(self, test, reason):
        self._counts["skipped"] += 1
        unittest.TestResult.addSkip(self, test, reason) if self.quiet else super().addSkip(test, reason)

    def addExpectedFailure(self, test, err):
        unittest.TestResult.addExpectedFailure(self, test, err) if self.quiet else \
            super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test):
        self._counts["failed"] += 1
        unittest.TestResult.addUnexpectedSuccess(self, test) if self.quiet else \
            super().addUnexpectedSuccess(test)


def main(argv: list[str], suite: unittest.TestSuite | None = None) -> int:
    if suite is None:
        loader = unittest.TestLoader()
        patterns = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-k"]
        if patterns:
            loader.testNamePatterns = [f"*{p}*" for p in patterns]
        suite = loader.discover(os.path.join(ROOT, "tests"), pattern="test_*.py",
                                top_level_dir=ROOT)
    verbosity = 2 if "-v" in argv else 1
    started = time.monotonic()
    limit = float(os.environ.get("ASM_TEST_TIMEOUT", "600"))
    runner = unittest.TextTestRunner(verbosity=verbosity, buffer=True, resultclass=ModuleProgress)
    made = runner._makeResult

    def make_result():
        result = made()
        result.watchdog = Watchdog(limit, float(os.environ.get("ASM_TEST_GRACE", "60")), result)
        return result

    runner._makeResult = make_result
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    slowest = sorted(result.modules, key=lambda m: -m[2])[:5]
    print(f"\n{len(result.modules)} modules in {time.monotonic() - started:.0f} s; slowest: "
          + ", ".join(f"{name} {seconds:.0f} s" for name, _, seconds in slowest))
    failing = [name for name, counts, _ in result.modules if counts["failed"]]
    if failing:
        print("failing modules: " + ", ".join(failing))
    for test, reason in result.skipped:
        print(f"skipped: {test.id()}: {reason}")
    print(result.summary_line())
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
