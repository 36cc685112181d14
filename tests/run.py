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
the run with its counts so far and this test counted failed.
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


class TestHung(Exception):
    """Raised in a test that ran past its time (the watchdog's signal)."""


class Watchdog:
    """One daemon thread watching the running test's age (see the module's docstring)."""

    def __init__(self, limit: float, grace: float, result: "ModuleProgress") -> None:
        self.limit, self.grace, self.result = limit, grace, result
        self.test: str | None = None
        self.since = 0.0
        self.stage = 0          # 0 watching; 1 TestHung sent; 2 gave up
        self.lock = threading.Lock()
        self.main = threading.main_thread().ident

    def start_test(self, test_id: str) -> None:
        with self.lock:
            self.test, self.since, self.stage = test_id, time.monotonic(), 0

    def stop_test(self) -> None:
        with self.lock:
            self.test = None

    def run(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                test, age, stage = self.test, time.monotonic() - self.since, self.stage
            if test is None:
                continue
            if stage == 0 and age > self.limit:
                self._say(f"\n{test}: still running after {age:.0f} s; every thread's stack:")
                faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
                with self.lock:
                    if self.test == test:
                        self.stage = 1
                # SIGALRM's handler (installed in main()) raises TestHung in the main thread.
                signal.pthread_kill(self.main, signal.SIGALRM)
            elif stage == 1 and age > self.limit + self.grace:
                self._say(f"{test}: did not end {self.grace:.0f} s after TestHung; "
                          "ending the run here")
                print(self.result.summary_line(extra_failed=1), file=sys.__stdout__, flush=True)
                os._exit(1)

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.__stderr__, flush=True)


def _raise_hung(_signum, _frame):
    raise TestHung(f"ran past ASM_TEST_TIMEOUT ({os.environ.get('ASM_TEST_TIMEOUT', '600')} s)")


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

    def startTest(self, test):
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
    signal.signal(signal.SIGALRM, _raise_hung)
    runner = unittest.TextTestRunner(verbosity=verbosity, buffer=True, resultclass=ModuleProgress)
    made = runner._makeResult

    def make_result():
        result = made()
        result.watchdog = Watchdog(limit, float(os.environ.get("ASM_TEST_GRACE", "60")), result)
        threading.Thread(target=result.watchdog.run, name="test-watchdog", daemon=True).start()
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
