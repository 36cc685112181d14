"""A parse worker that stops answering (kill -STOP, a debugger, a stuck page fault): the
monitor must not wait for it forever (under cron that is a silent stall: every later run
finds the lock held and exits quietly). After ASM_PARSE_TIMEOUT seconds without an
answer it kills the worker and parses the rest of the pass itself, as when the worker
dies: the same store, the worker reaped. The stop lands at a seeded random batch."""

from __future__ import annotations

import os
import random
import signal
from unittest import mock

from agent_session_monitor.ingest import parse_ahead
from tests.test_parse_ahead import SEED, ParseAheadTest, hostile_log, write_log

TIMEOUT = "1"


class _Hung(Exception):
    pass


class StoppedParseWorker(ParseAheadTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        write_log(self.log, hostile_log(random.Random(SEED + 7), n_real=400))
        self.reference = self.tmp / "reference"
        self.passes(self.reference, [self.log], -1)

    def test_a_stopped_worker_is_given_up_on_and_the_pass_stores_the_same(self):
        rng = random.Random(SEED)
        for stop_at in sorted({1, rng.randint(2, 6)}):
            real_send = parse_ahead.ParseWorker.send
            sent, stopped = [], []

            def send(worker, *args, **kwargs):
                sent.append(1)
                if len(sent) == stop_at:
                    os.kill(worker.pid, signal.SIGSTOP)
                    stopped.append(worker.pid)
                return real_send(worker, *args, **kwargs)

            def hung(signum, frame):
                raise _Hung

            out = self.tmp / f"stopped{stop_at}"
            previous = signal.signal(signal.SIGALRM, hung)
            signal.alarm(120)   # a hang becomes a failure, not a stuck suite
            try:
                with mock.patch.dict(os.environ, {parse_ahead.TIMEOUT_ENV: TIMEOUT}), \
                        mock.patch.object(parse_ahead.ParseWorker, "send", send):
                    run = self.passes(out, [self.log], 0)
            except _Hung:
                self.fail(f"the monitor waited for its stopped parse worker (batch {stop_at}) "
                          "for two minutes")
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
                for pid in stopped:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.assertTrue(stopped, "the pass sent fewer batches than that")
            self.assertEqual(run["forks"], 1)
            self.assertEqual(run["err"].count("parse worker"), 1, run["err"])
            self.assertSameStores(self.reference, out)
