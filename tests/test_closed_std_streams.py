"""main.py started with stdout or stderr closed (``>&-``, ``2>&-`` in a cron line).

Python then sets sys.stdout / sys.stderr to None. The run stored everything but left
through a traceback and exit 1 (``None.flush()`` in errors.leave), and with stderr
closed it stopped at start (``err.isatty()``) and stored nothing (found by an outside
tester, 30 Nov). Each combination on seeded logs: exit 0, and the store equal to a run
with both streams open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import TempDirTest, load_store
from tests.loggen import iter_records

ROOT = Path(__file__).resolve().parent.parent


def _closer(*fds: int):
    def close() -> None:
        for fd in fds:
            os.close(fd)
    return close


class ClosedStdStreams(TempDirTest):
    def test_a_run_with_a_closed_stream_stores_everything_and_exits_0(self) -> None:
        for seed in (2, 8):
            log = self.tmp / f"log{seed}" / "access.log"
            log.parent.mkdir()
            with open(log, "wb") as f:
                for line, _event, _kind in iter_records(seed, sessions=12, max_requests=5,
                                                        bad_every=13):
                    f.write(line)
            stores = {}
            for label, fds in (("open", ()), ("stdout", (1,)), ("stderr", (2,)),
                               ("both", (1, 2))):
                out = self.tmp / f"store{seed}-{label}"
                proc = subprocess.run(
                    [sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                     "--output-dir", str(out), "--allow-log-dir", str(log.parent)],
                    stdout=subprocess.DEVNULL if 1 not in fds else None,
                    stderr=subprocess.DEVNULL if 2 not in fds else None,
                    preexec_fn=_closer(*fds), timeout=120)
                self.assertEqual(proc.returncode, 0, (seed, label))
                self.assertTrue((out / ".state.json").exists(), (seed, label))
                stores[label] = load_store(out)
            self.assertGreater(len(stores["open"]), 5)
            for label in ("stdout", "stderr", "both"):
                self.assertEqual(stores[label].keys(), stores["open"].keys(), (seed, label))
                for key, doc in stores["open"].items():
                    self.assertEqual(len(stores[label][key]["rounds"]), len(doc["rounds"]),
                                     (seed, label, key))
                    self.assertEqual(stores[label][key]["tokens"], doc["tokens"])


if __name__ == "__main__":
    import unittest

    unittest.main()
