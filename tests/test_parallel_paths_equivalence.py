"""The same hostile log gives the same store whichever way its commits are made: one
synchronous commit at the end, many background commits by a forked commit process, the
same on the thread fallback, and a long-lived follow-mode monitor fed in random bursts
(half lines included) that forks a commit process for every burst big enough. Session
files must be byte-identical, the index identical, and the index-backed reports
(stats-model, list, show) identical.

Lines: fuzzed and extreme lines (test_fuzz_pipeline's generators) around real traffic
(loggen), seeded. Each mode runs in a fresh interpreter (no other thread: the commit
process is really used) with the read time fixed, since a line without a usable time
takes the time it was read."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT, TempDirTest, write_lines
from tests.loggen import iter_lines
from tests.test_commit_process import index_snapshot
from tests.test_fuzz_pipeline import generated_lines

SEED = int(os.environ.get("ASM_EQUIV_SEED", "4242"))

SCRIPT = textwrap.dedent("""
    import io, json, os, random, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from agent_session_monitor.ingest import monitor as monitor_module
    from tests.helpers import record_commit_process_starts
    from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

    mode, log, out, seed = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    monitor_module.utc_now = lambda: "2026-02-03T04:05:06Z"
    started = record_commit_process_starts()
    small = 20000
    if mode == "sync":
        config = MonitorConfig(log_paths=[str(log)], output_dir=out)
    elif mode in ("process", "thread"):
        config = MonitorConfig(log_paths=[str(log)], output_dir=out, checkpoint_bytes=small)
    if mode != "follow":
        with Monitor(config, err=io.StringIO()) as monitor:
            monitor.poll_once()
    else:
        data = log.read_bytes()
        fed = out.parent / "follow.log"
        fed.write_bytes(b"")
        config = MonitorConfig(log_paths=[str(fed)], output_dir=out, checkpoint_bytes=small,
                               follow=True)
        rng = random.Random(seed)
        at = 0
        with Monitor(config, err=io.StringIO()) as monitor:
            while at < len(data):
                step = rng.choice([rng.randint(1, 4000), rng.randint(20000, 200000)])
                with open(fed, "ab") as f:
                    f.write(data[at:at + step])
                monitor.poll_once()
                at += step
    print(json.dumps(started))
""")


class ParallelPathsEquivalence(TempDirTest):
    def run_mode(self, mode: str, log: Path) -> tuple[Path, list]:
        out = self.tmp / mode / "sessions"
        out.parent.mkdir()
        env = dict(os.environ, ASM_COMMIT_PROCESS="0" if mode == "thread" else "1")
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), mode, str(log), str(out),
                              str(SEED)], env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        return out, json.loads(run.stdout)

    def files(self, out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())
                if p.suffix == ".json" and not p.name.startswith(".")}

    def reports(self, out: Path) -> list[str]:
        answers = []
        commands = [["stats-model"], ["list", "--limit", "0"], ["stats-consumer"]]
        listing = json.loads(self.cli(out, "list", "--limit", "0"))
        rng = random.Random(SEED)
        rows = listing if isinstance(listing, list) else listing.get("sessions", [])
        for row in rng.sample(rows, min(8, len(rows))):
            commands.append(["show", row["session_id"]])
        for command in commands:
            answers.append(self.cli(out, *command))
        return answers

    def cli(self, out: Path, *command: str) -> str:
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli.py"), "--data-dir",
                              str(out), "--json", *command], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(run.returncode, 0, (command, run.stderr))
        return run.stdout

    def test_hostile_log_gives_the_same_store_with_every_commit_path_in_cron_and_follow(self):
        rng = random.Random(SEED)
        hostile = generated_lines(rng, 1500)
        real = [line for _, line in zip(range(600), iter_lines(SEED, 3_000_000))]
        mixed: list[bytes] = []
        for line in [*(h + b"\n" for h in hostile), *real]:
            mixed.insert(rng.randint(0, len(mixed)), line)
        log = self.tmp / "access.log"
        write_lines(log, mixed)
        reference, started = self.run_mode("sync", log)
        self.assertEqual(started, [])   # nothing big enough for a background commit
        want_files = self.files(reference)
        self.assertGreater(len(want_files), 50)
        want_index, want_reports = index_snapshot(reference), self.reports(reference)
        for mode in ("process", "thread", "follow"):
            with self.subTest(mode=mode):
                out, started = self.run_mode(mode, log)
                if mode == "thread":
                    self.assertEqual(set(started), {None})
                else:   # one per pass: the cron pass, every big enough follow burst
                    self.assertGreater(len(started), 1 if mode == "follow" else 0)
                    self.assertNotIn(None, started)
                got = self.files(out)
                self.assertEqual(sorted(got), sorted(want_files))
                differ = [name for name in want_files if got[name] != want_files[name]]
                self.assertEqual(differ, [], f"{len(differ)} session files differ")
                self.assertEqual(index_snapshot(out), want_index)
                self.assertEqual(self.reports(out), want_reports)
