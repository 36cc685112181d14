"""A stop while the commit thread writes waits for it; the index is never closed under it.

Found by the second cold attacker (30 Nov): SIGTERM during a follow catch-up with the
commit on a thread (ASM_COMMIT_PROCESS=0) segfaulted 2 runs of ~25. CPython 3.11's
Thread.join, cut by a signal handler that raises (the stop), releases in its clean-up
the lock the still-running thread holds and marks it stopped; every later join()
returned at once. The monitor then took the commit's state as saved and, on exit,
closed the SQLite index while the thread was still writing rows into it (and once, the
thread ending between the clean-up's check and release, raised "release unlocked lock").

The class: a commit thread slowed in its file writes, a SIGTERM at seeded delays after it
starts writing (the main thread waiting for it, or reading the next lines), in a
one-pass run; the thread's index update must come before the index is closed, and the
thread must be over when the run is."""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time
from unittest import mock

from agent_session_monitor.errors import Terminated
from agent_session_monitor.ingest import commit as commit_mod
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.store.index import Index
from tests.helpers import TempDirTest, make_line, write_lines

TRIALS = int(os.environ.get("ASM_COMMIT_THREAD_STOP_TRIALS", "6"))


class StopWhileACommitThreadWrites(TempDirTest):
    def trial(self, n: int, delay: float) -> list[str]:
        log, out = self.tmp / f"{n}.log", self.tmp / f"{n}-out"
        write_lines(log, [make_line(i, session=f"s{i % 4}", pad=400) for i in range(1, 200)])
        events, writing = [], threading.Event()
        real_write, real_update, real_close = (commit_mod.atomic_write_many,
                                               Index.update_prepared, Index.close)

        def slow_write(directory, items, *a, **k):
            writing.set()
            time.sleep(0.4)
            return real_write(directory, items, *a, **k)

        def update(index, prepared):
            real_update(index, prepared)
            events.append("rows written")

        def close(index):
            events.append("index closed")
            real_close(index)

        def stop_later():
            writing.wait(10)
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGTERM)

        def terminate(signum, frame):
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
        stopper = threading.Thread(target=stop_later)
        config = MonitorConfig(log_paths=[str(log)], output_dir=out, checkpoint_bytes=30_000)
        try:
            with mock.patch.dict(os.environ, {"ASM_COMMIT_PROCESS": "0",
                                              "ASM_PARSE_AHEAD_BYTES": "-1"}), \
                    mock.patch.object(commit_mod, "atomic_write_many", slow_write), \
                    mock.patch.object(Index, "update_prepared", update), \
                    mock.patch.object(Index, "close", close):
                stopper.start()
                try:
                    with Monitor(config, err=io.StringIO()) as monitor:
                        monitor.poll_once()
                except KeyboardInterrupt:
                    pass
                stopper.join()
        finally:
            signal.signal(signal.SIGTERM, previous)
        threads = [t for t in threading.enumerate() if t.name == "asm-commit"]
        self.assertEqual(threads, [], "a commit thread outlived its monitor")
        return events

    def test_a_stop_waits_for_the_commit_thread_before_closing_the_index(self):
        rng = random.Random(7)
        for n in range(TRIALS):
            delay = rng.uniform(0.02, 0.35)
            with self.subTest(delay=round(delay, 3)):
                events = self.trial(n, delay)
                # The run's last close (the exit) comes after every commit's rows (a
                # catch-up also closes and reopens the index before it forks).
                self.assertEqual(events[-1], "index closed", events)
                self.assertIn("rows written", events)
