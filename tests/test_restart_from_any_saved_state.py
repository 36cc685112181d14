"""A run restarted from any state a catch-up saved counts every line once.

A kill can land right after any commit, so every ``.state.json`` a pass writes is one a
next run may start from. Each must describe its log file: the offset, and the hash of
the bytes before it (``tail``), which the next run checks to tell "go on from here" from
"this file was rewritten in place: read it all again". Found by CI (test_counters_
across_kills, cron, commit process, seed 1: every counter doubled): with the parse
worker, the reader of a cron pass closes the log at its end while up to a few batches
read are not handled yet; a checkpoint due in that drain could not hash the file and
saved the new offset with the tail of the pass's start. A run killed after it took the
log for one rewritten, read it all again and counted every line twice (the store
converged: the same rounds, found again).

The class: seeded hostile logs (every kind of line the counters count) read in two
passes (a first part, then the rest appended or the log rotated), the parse worker
forced on and off, the commit on a thread and in the commit process, small
checkpoints. Every state saved, by either process, must hash the bytes before its
offset; runs restarted from seeded choices of them (the drain's last among them) on the
finished store must end with the counters of a run that was never interrupted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path
from unittest import mock

from agent_session_monitor.ingest import commit as commit_mod, commit_process as process_mod
from agent_session_monitor.ingest.logfile import tail_hash
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from tests.helpers import TempDirTest, write_lines
from tests.test_counters_across_kills import hostile_log

SEEDS = int(os.environ.get("ASM_RESTART_SEEDS", "3"))
CHECKPOINT = 20_000   # ~20 commits a pass
LOG_BYTES = 300_000
RESTARTS = 3          # restarts per scenario, besides the last state of each pass


def counters(out: Path) -> dict:
    found = json.loads((out / ".state.json").read_text())["counters"]
    found.pop("passes", None)   # passes ended: a restarted run adds its own
    return found


class RestartFromAnySavedState(TempDirTest):
    def scenario(self, seed: int, worker: bool, commit_process: bool, rotate: bool) -> None:
        rng = random.Random(f"restart-{seed}-{worker}-{commit_process}-{rotate}")
        lines = hostile_log(seed, LOG_BYTES)
        split = rng.randrange(len(lines) // 5, len(lines) * 4 // 5)
        base = self.tmp / f"{seed}-{worker}-{commit_process}-{rotate}"
        base.mkdir()
        log, out, saved_log = base / "access.log", base / "out", base / "states.jsonl"
        write_lines(log, lines[:split])
        real = commit_mod.save_state

        def recording(path, state):
            real(path, state)
            # Appended by whichever process saved it (the commit process is forked).
            with open(saved_log, "ab") as f:
                f.write(path.read_bytes().replace(b"\n", b" ") + b"\n")

        env = {"ASM_PARSE_AHEAD_BYTES": "0" if worker else "-1",
               "ASM_COMMIT_PROCESS": "1" if commit_process else "0"}
        config = MonitorConfig(log_paths=[str(log)], output_dir=out,
                               checkpoint_bytes=CHECKPOINT)
        with mock.patch.dict(os.environ, env), \
                mock.patch.object(commit_mod, "save_state", recording), \
                mock.patch.object(process_mod, "save_state", recording):
            with Monitor(config, err=io.StringIO()) as monitor:
                monitor.poll_once()
            if rotate:   # the rest written to a new log: the first is drained as a rotation
                os.rename(log, base / "access.log.1")
            write_lines(log, lines[split:])
            with Monitor(config, err=io.StringIO()) as monitor:
                monitor.poll_once()
        expected = counters(out)
        states = [json.loads(line) for line in saved_log.read_bytes().splitlines()]
        self.assertGreater(len(states), 10, "the passes committed too rarely to test anything")
        files = {}   # fingerprint -> the file (a source's path may be its old name)
        for path in (log, base / "access.log.1"):
            if path.exists():
                head = path.read_bytes()
                files.update({hashlib.sha256(head[:n]).hexdigest(): path
                              for n in {src["fp_len"] for state in states
                                        for src in state["sources"]}})
        for n, state in enumerate(states):
            for src in state["sources"]:
                with open(files[src["fp"]], "rb") as f:
                    self.assertEqual(src["tail"], tail_hash(f, src["offset"]),
                                     f"state {n} of {len(states)} saved offset "
                                     f"{src['offset']} of {files[src['fp']].name} with the "
                                     "tail of another")
        picks = set(rng.sample(range(len(states)), min(RESTARTS, len(states))))
        picks.add(len(states) - 1)
        for n in sorted(picks):
            restarted = base / f"restart-{n}"
            shutil.copytree(out, restarted)
            (restarted / ".state.json").write_text(json.dumps(states[n]))
            (restarted / ".state.json.bak").unlink(missing_ok=True)
            config = MonitorConfig(log_paths=[str(log)], output_dir=restarted,
                                   checkpoint_bytes=CHECKPOINT)
            with mock.patch.dict(os.environ, env), Monitor(config, err=io.StringIO()) as monitor:
                monitor.poll_once()
            self.assertEqual(counters(restarted), expected, f"restarted from state {n}")

    def test_every_state_saved_describes_its_file_and_a_restart_counts_once(self):
        for seed in range(SEEDS):
            for worker in (True, False):
                for commit_process in (True, False):
                    for rotate in (False, True):
                        with self.subTest(seed=seed, worker=worker,
                                          commit_process=commit_process, rotate=rotate):
                            self.scenario(seed, worker, commit_process, rotate)
