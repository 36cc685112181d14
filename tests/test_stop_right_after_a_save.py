"""A SIGTERM right after a state was saved does not take the state back.

The follow loop answers a stop by saving the state of the last commit (the offsets and
counters the monitor remembers as saved). Under load, CI twice saw a follower stopped
just after its first pass had written its files and its state: the state on disk then
had no sources (test_faults.MissingLog) or no counters (test_attack_modes_differential):
the SIGTERM landed between save_state and the lines that remember what was saved, so the
stop rewound to the pair of before and saved it over the good one. Nothing is counted
twice that way (the next run reads the log again and finds its rounds stored), but a
restart re-reads the whole log and the counters are wrong until it has.

The class: a real SIGTERM (the handler main() installs) at every one of the first 200
points after save_state returns where a signal can land (helpers.SignalPoints) and at
every 37th up to 3,000, in the synchronous checkpoint of a follow pass, worker on and
off; the state on disk after the stop must describe the whole log."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from unittest import mock

from agent_session_monitor.errors import Terminated
from agent_session_monitor.ingest import commit as commit_mod
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from tests.helpers import SignalPoints, TempDirTest, make_line, write_lines

# Every signal point of the first 200 after the save (the window was a deepcopy wide:
# hundreds), then every 37th up to 3,000 (into the next pass).
OPCODES = [*range(1, 201), *range(201, int(os.environ.get("ASM_AFTER_SAVE_OPCODES", "3000")), 37)]


class StopRightAfterASave(TempDirTest):
    def trial(self, n: int, worker: bool) -> dict:
        base = self.tmp / f"{n}-{worker}"
        base.mkdir()
        log, out = base / "access.log", base / "out"
        write_lines(log, [make_line(i, session=f"s{i % 3}") for i in range(1, 31)])
        config = MonitorConfig(log_paths=[str(log)], output_dir=out, follow=True)
        real = commit_mod.save_state
        count = [0]
        points = SignalPoints()

        def tracer(frame, event, arg):
            frame.f_trace_opcodes = True
            if points.is_point(frame, event):
                count[0] += 1
                if count[0] == n:
                    sys.settrace(None)
                    os.kill(os.getpid(), signal.SIGTERM)
            return tracer

        def save_then_stop(path, state):
            real(path, state)
            count[0] = 0
            sys.settrace(tracer)
            sys._getframe(1).f_trace = tracer   # the checkpoint's frame, from here on
            sys._getframe(1).f_trace_opcodes = True

        def terminate(signum, frame):
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
        env = {"ASM_PARSE_AHEAD_BYTES": "0" if worker else "-1"}
        try:
            with mock.patch.dict(os.environ, env), Monitor(config, err=io.StringIO()) as monitor:
                try:
                    with mock.patch.object(commit_mod, "save_state", save_then_stop):
                        monitor.poll_once()
                        monitor.poll_once()   # (the SIGTERM came after the checkpoint)
                except KeyboardInterrupt:
                    monitor.checkpoint(idle_save=True)   # what the follow loop does
        except KeyboardInterrupt:
            pass   # it landed in the monitor's exit: main() ends there with 143
        finally:
            sys.settrace(None)
            signal.signal(signal.SIGTERM, previous)
        return json.loads((out / ".state.json").read_text()), log.stat().st_size

    def test_a_sigterm_at_any_bytecode_after_a_save_keeps_the_state(self):
        for worker in (False, True):
            for n in OPCODES:
                with self.subTest(worker=worker, opcode=n):
                    state, size = self.trial(n, worker)
                    self.assertEqual([s["offset"] for s in state["sources"]], [size])
                    self.assertEqual(state["counters"].get("lines_read"), 30)
                    self.assertEqual(state["counters"].get("rounds_stored"), 30)
