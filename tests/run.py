#!/usr/bin/env python3
"""Run the whole unit-test suite and end with one line: ``N passed, N failed, N skipped``.

    python3 tests/run.py               # everything
    python3 tests/run.py -k rotation   # tests whose name matches (repeatable: any of them)
    python3 tests/run.py -v            # one line per test

Progress goes to the terminal one line per test module (its counts and time) as each
module finishes; failures are listed in full after the summary table. A test needing a
tool that is not installed (chromium, logrotate, a test-only Python package) is skipped
with its reason; the reasons are listed before the last line.
"""

import os
import sys
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class ModuleProgress(unittest.TextTestResult):
    """Counts per test module, printed when the run moves on to the next module."""

    def __init__(self, stream, descriptions, verbosity):
        super().__init__(stream, descriptions, verbosity)
        self.quiet = verbosity < 2
        self.modules: list[tuple[str, dict, float]] = []
        self._current: str | None = None
        self._counts: dict = {}
        self._started = 0.0

    def _module_of(self, test) -> str:
        return type(test).__module__.rsplit(".", 1)[-1]

    def startTest(self, test):
        module = self._module_of(test)
        if module != self._current:
            self._finish_module()
            self._current, self._counts, self._started = module, {"passed": 0, "failed": 0,
                                                                  "skipped": 0}, time.monotonic()
        super().startTest(test)

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


def main(argv: list[str]) -> int:
    loader = unittest.TestLoader()
    patterns = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-k"]
    if patterns:
        loader.testNamePatterns = [f"*{p}*" for p in patterns]
    suite = loader.discover(os.path.join(ROOT, "tests"), pattern="test_*.py", top_level_dir=ROOT)
    verbosity = 2 if "-v" in argv else 1
    started = time.monotonic()
    result = unittest.TextTestRunner(verbosity=verbosity, buffer=True,
                                     resultclass=ModuleProgress).run(suite)
    skipped = len(result.skipped)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - skipped - len(result.expectedFailures)
    slowest = sorted(result.modules, key=lambda m: -m[2])[:5]
    print(f"\n{len(result.modules)} modules in {time.monotonic() - started:.0f} s; slowest: "
          + ", ".join(f"{name} {seconds:.0f} s" for name, _, seconds in slowest))
    failing = [name for name, counts, _ in result.modules if counts["failed"]]
    if failing:
        print("failing modules: " + ", ".join(failing))
    for test, reason in result.skipped:
        print(f"skipped: {test.id()}: {reason}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
