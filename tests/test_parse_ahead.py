"""Parsing ahead in a second process (ingest/parse_ahead.py): a catch-up parsed by the
worker stores, counts, reports and warns exactly what one parsed in the monitor's own
process does, on seeded logs mixing real traffic, sub-agent spawns, duplicates and
hostile lines; a worker killed mid-pass changes nothing but a warning; neither a failed
pass nor a killed monitor leaves a zombie or an orphan; small passes stay in process.

The other suites run with either path forced: ASM_PARSE_AHEAD_BYTES=0 (every pass
parses ahead) or -1 (never), e.g. ``ASM_PARSE_AHEAD_BYTES=0 python3 tests/run.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from tests.helpers import ROOT, TempDirTest, load_store, write_lines
from tests.loggen import iter_records
from tests.openclaw_logs import mix
from tests.test_fuzz_pipeline import cli, generated_lines
from agent_session_monitor.errors import MonitorError
from agent_session_monitor.ingest import commit as commit_module
from agent_session_monitor.ingest.commit_process import DISABLE_ENV
from agent_session_monitor.ingest import monitor as monitor_module
from agent_session_monitor.ingest import parse_ahead
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

SEED = int(os.environ.get("ASM_PARSE_AHEAD_SEED", "20261130"))
READ_TIME = "2026-11-30T09:00:00.000Z"   # lines without a time get the pass's read time


def hostile_log(rng: random.Random, n_real: int = 700) -> list[bytes]:
    """Generated agent traffic (bad, non-AI, duplicate and unsessioned lines among it),
    OpenClaw sub-agent spawns, fuzzed and extreme lines, CRLF, NUL padding, a message
    list nested too deep for pickle: shuffled in blocks, so sessions interleave."""
    real = [line for line, _e, _k in iter_records(
        rng.randrange(2**31), sessions=60, max_requests=30, bad_every=37, non_ai_every=11,
        unsessioned_every=17, duplicate_every=13, content_scale=2)][:n_real]
    spawns = mix(rng.randrange(2**31), parents=3, unrelated=2, forged=True).sorted_lines()
    hostile = generated_lines(rng, 300)
    deep = ('{"ai_log":"{\\"session_id\\":\\"deep\\",\\"model\\":\\"gpt-4o\\",\\"input_token'
            '\\":5,\\"output_token\\":1,\\"messages\\":[' + "[" * 700 + "]" * 700 + ']}",'
            '"start_time":"2026-02-01T09:00:00Z"}').encode()
    lines = [line.rstrip(b"\n") for line in real + spawns] + hostile + [deep, deep]
    lines += [b"\x00" * 40 + lines[3], lines[5] + b"\r", b"", b"   "]
    blocks = [lines[i:i + 7] for i in range(0, len(lines), 7)]
    rng.shuffle(blocks)
    return [line for block in blocks for line in block]


def write_log(path: Path, lines: list[bytes]) -> None:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line + b"\n")


class ParseAheadTest(TempDirTest):
    def passes(self, out: Path, logs: list[Path], ahead: int, config: dict | None = None,
               steps=None) -> dict:
        """Run the monitor (one long-lived one: a pass per step) into ``out`` with
        parsing ahead forced on (0) or off (-1); what it said and counted."""
        config = MonitorConfig(log_paths=[str(p) for p in logs], output_dir=out,
                               checkpoint_bytes=60_000, **(config or {}))
        err = io.StringIO()
        stats, forks = [], []
        real_init = parse_ahead.ParseWorker.__init__

        def counting_init(worker, *args, **kwargs):
            real_init(worker, *args, **kwargs)
            forks.append(worker.pid)

        forced = {} if ahead is None else {"ASM_PARSE_AHEAD_BYTES": str(ahead)}
        with mock.patch.dict(os.environ, forced), \
                mock.patch.object(monitor_module, "utc_now", lambda: READ_TIME), \
                mock.patch.object(parse_ahead.ParseWorker, "__init__", counting_init), \
                Monitor(config, err=err, progress=False) as monitor:
            for step in steps or [None]:
                if step is not None:
                    step()
                stats.append(dataclasses.asdict(monitor.poll_once()))
            redecoded = monitor.ahead_redecoded
        for pid in forks:
            self.assertReaped(pid)
        state = json.loads((out / ".state.json").read_bytes())
        state.pop("written_at")
        for source in state["sources"]:
            source.pop("mtime")   # the logs were written again for each run
        self.maxDiff = None
        return {"stats": stats, "err": err.getvalue(), "forks": len(forks),
                "redecoded": redecoded, "state": state}

    def assertReaped(self, pid: int) -> None:
        # A zombie still has a /proc entry (state Z); a reaped process has none.
        self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} was not reaped")

    def assertSameStores(self, a: Path, b: Path) -> None:
        names = sorted(n for n in os.listdir(a) if not n.startswith("."))
        self.assertEqual(names, sorted(n for n in os.listdir(b) if not n.startswith(".")))
        for name in names:
            self.assertEqual((a / name).read_bytes(), (b / name).read_bytes(), name)
        for argv in (["list", "--json", "--limit", "0"], ["stats-model", "--json"],
                     ["stats-consumer", "--json"], ["export", "--format", "json"]):
            self.assertEqual(cli(a, *argv)[:2], cli(b, *argv)[:2], argv)
        ids = sorted(load_store(a), key=str)
        for sid in [i for i in ids if isinstance(i, str)][:8]:
            self.assertEqual(cli(a, "show", sid, "--json")[:2], cli(b, "show", sid, "--json")[:2])


class SameResults(ParseAheadTest):
    def test_parsed_ahead_or_here_the_store_reports_counts_and_warnings_are_the_same(self):
        rng = random.Random(SEED)
        for trial in range(2):
            lines = hostile_log(rng)
            third = len(lines) // 3
            logs = self.tmp / f"logs{trial}"
            logs.mkdir()
            with gzip.open(logs / "access.log.2.gz", "wb") as f:
                f.write(b"".join(line + b"\n" for line in lines[:third]))
            write_log(logs / "access.log.1", lines[third:2 * third])
            write_log(logs / "access.log", lines[2 * third:2 * third + third // 2])
            rest = lines[2 * third + third // 2:]
            snapshot = logs / "snapshot"
            snapshot.mkdir()
            for p in logs.glob("access.log*"):
                (snapshot / p.name).write_bytes(p.read_bytes())

            def restore() -> None:
                for p in snapshot.iterdir():
                    (logs / p.name).write_bytes(p.read_bytes())

            def append() -> None:   # a follow-mode monitor's later passes
                write_lines(logs / "access.log", [line + b"\n" for line in rest])

            runs = {}
            for ahead in (-1, 0):
                restore()
                out = self.tmp / f"store{trial}{ahead}"
                runs[ahead] = self.passes(out, [logs / "access.log"], ahead,
                                          config={"follow": True}, steps=[None, append])
            here, there = runs[-1], runs[0]
            self.assertEqual(here["forks"], 0)
            self.assertEqual(there["forks"], 2, "every pass forced to parse ahead")
            for key in ("stats", "err", "state"):
                self.assertEqual(here[key], there[key], f"{key} (trial {trial}, seed {SEED})")
            self.assertGreater(here["stats"][0]["rounds"], 300)
            self.assertTrue(here["stats"][0]["bad"] and here["stats"][0]["forged"]
                            and here["stats"][0]["duplicates"], here["stats"][0])
            self.assertAlmostEqual(there["redecoded"], 0, delta=40)
            self.assertSameStores(self.tmp / f"store{trial}-1", self.tmp / f"store{trial}0")

    def test_session_filter_and_privacy_mode_are_the_same_parsed_ahead(self):
        lines = hostile_log(random.Random(SEED + 1), n_real=400)
        log = self.tmp / "access.log"
        write_log(log, lines)
        sid = next(s for s in load_ids(lines) if s)
        for config in ({"session_key": sid}, {"store_content": False}):
            runs = {ahead: self.passes(self.tmp / f"s{ahead}{len(config)}{sorted(config)[0]}",
                                       [log], ahead, config) for ahead in (-1, 0)}
            for key in ("stats", "err", "state"):
                self.assertEqual(runs[-1][key], runs[0][key], f"{key} {config}")
            self.assertSameStores(self.tmp / f"s-11{sorted(config)[0]}",
                                  self.tmp / f"s01{sorted(config)[0]}")


def request(n: int, session: str, messages: list) -> bytes:
    ai = {"session_id": session, "model": "gpt-4o", "input_token": 100 + n, "output_token": 7,
          "messages": messages, "question": messages[-1]["content"], "answer": f"a{n}"}
    return json.dumps({"ai_log": json.dumps(ai), "start_time":
                       f"2026-02-01T09:{n // 60:02d}:{n % 60:02d}.000Z"}).encode()


def load_ids(lines: list[bytes]) -> list[str]:
    import json
    ids = []
    for line in lines:
        try:
            ids.append(json.loads(json.loads(line)["ai_log"]).get("session_id"))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            pass
    return [i for i in ids if isinstance(i, str) and i.startswith("agent:")]


class Continuations(ParseAheadTest):
    def test_a_request_continuing_a_repeated_older_line_is_linked_as_here(self):
        # The worker's last line of the session is a repeat of an older one (skipped by
        # its key here), whose history differs from the round this session ends on.
        u = [{"role": "user", "content": f"u{i}"} for i in range(6)]
        x = [{"role": "user", "content": f"x{i}"} for i in range(6)]
        a, b = request(1, "s", u[:2]), request(2, "s", x[:3])
        lines = [a, b, a, request(3, "s", u[:3]), request(4, "s", u[:4]),
                 b, request(5, "s", x[:5]), request(6, "s", [*u[:2], *x[:2]])]
        lines += [request(7 + i, f"t{i % 3}", u[:1 + i // 3]) for i in range(12)]
        log = self.tmp / "access.log"
        write_log(log, lines)
        for ahead in (-1, 0):
            self.passes(self.tmp / f"c{ahead}", [log], ahead)
        self.assertSameStores(self.tmp / "c-1", self.tmp / "c0")
        rounds = load_store(self.tmp / "c0")["s"]["rounds"]
        self.assertEqual(len(rounds), 6)


class TooDeepToPickle(ParseAheadTest):
    def test_a_message_list_too_deep_to_pickle_neither_stops_a_pass_nor_is_lost(self):
        # JSON decodes 700 levels; pickle refuses far fewer. Such a line crosses neither
        # to the parse worker's monitor nor to the commit process: it is parsed and
        # committed in the monitor's process, and the next run has nothing new.
        deep = ('{"ai_log":"{\\"session_id\\":\\"deep\\",\\"model\\":\\"gpt-4o\\",'
                '\\"input_token\\":5,\\"output_token\\":1,\\"messages\\":['
                + "[" * 700 + "]" * 700 + ']}","start_time":"2026-02-01T09:00:00Z"}').encode()
        lines = [request(n, f"s{n % 20}", [{"role": "user", "content": "x" * 1500 + str(n)}])
                 for n in range(600)]
        lines.insert(100, deep)
        log = self.tmp / "access.log"
        write_log(log, lines)
        for ahead in ("-1", "0"):
            out = self.tmp / f"deep{ahead}"
            with mock.patch.dict(os.environ, {"ASM_PARSE_AHEAD_BYTES": ahead}):
                code, _out, err = self.run_monitor(log, out=out,
                                                   extra=["--checkpoint-bytes", "100000"])
                self.assertEqual(code, 0, err)
                code, stdout, err = self.run_monitor(log, out=out)
            self.assertEqual(code, 0, err)
            self.assertIn("Nothing new", stdout)
            self.assertIn("deep", load_store(out))
            self.assertEqual(sum(len(d["rounds"]) for d in load_store(out).values()), 601)
        self.assertSameStores(self.tmp / "deep-1", self.tmp / "deep0")


class WorkerFailures(ParseAheadTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        write_log(self.log, hostile_log(random.Random(SEED + 2), n_real=400))
        self.reference = self.tmp / "reference"
        self.passes(self.reference, [self.log], -1)

    def test_a_worker_killed_mid_pass_is_reaped_and_the_pass_stores_the_same(self):
        for kill_at in (1, 5):
            real_send = parse_ahead.ParseWorker.send
            sent = []

            def send(worker, *args):
                sent.append(1)
                if len(sent) == kill_at:
                    os.kill(worker.pid, signal.SIGKILL)
                    time.sleep(0.05)
                return real_send(worker, *args)

            out = self.tmp / f"killed{kill_at}"
            with mock.patch.object(parse_ahead.ParseWorker, "send", send):
                run = self.passes(out, [self.log], 0)
            self.assertEqual(run["forks"], 1)
            self.assertIn("parse worker process ended (killed by signal 9)", run["err"])
            self.assertEqual(run["err"].count("parse worker"), 1)
            self.assertSameStores(self.reference, out)

    def test_a_failed_commit_mid_pass_reaps_the_worker_and_the_next_pass_converges(self):
        real = commit_module.atomic_write_many
        calls = []

        def fill_up(directory, items):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(directory, items)

        forks = []
        real_init = parse_ahead.ParseWorker.__init__

        def counting_init(worker, *args, **kwargs):
            real_init(worker, *args, **kwargs)
            forks.append(worker.pid)

        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out,
                               checkpoint_bytes=60_000, follow=True)
        # Commits on the thread: a mock does not reach a commit process.
        with mock.patch.dict(os.environ, {"ASM_PARSE_AHEAD_BYTES": "0", DISABLE_ENV: "0"}), \
                mock.patch.object(monitor_module, "utc_now", lambda: READ_TIME), \
                mock.patch.object(parse_ahead.ParseWorker, "__init__", counting_init), \
                Monitor(config, err=io.StringIO(), progress=False) as monitor:
            with mock.patch.object(commit_module, "atomic_write_many", fill_up):
                with self.assertRaisesRegex(MonitorError, "No space left on device"):
                    monitor.poll_once()
            self.assertEqual(len(forks), 1)
            self.assertReaped(forks[0])
            monitor.poll_once()
        self.assertEqual(len(forks), 2)
        self.assertReaped(forks[1])
        # The same documents; not always the same bytes, in either path: after a rewind
        # ondisk.py may spell a round's messages_offset out where it could leave it out.
        self.assertEqual(load_store(self.reference), load_store(self.out))

class MonitorKilled(ParseAheadTest):
    def test_sigkill_of_the_monitor_leaves_no_orphan_and_a_rerun_converges(self):
        # Every line with its own event time (a line without one takes the pass's read
        # time, which differs from one killed pass to the next).
        big = self.tmp / "big.log"
        write_lines(big, [line for line, _e, _k in iter_records(
            SEED, sessions=120, max_requests=30, bad_every=37, non_ai_every=11,
            unsessioned_every=17, duplicate_every=13, content_scale=2)])
        reference = self.tmp / "big-reference"
        self.passes(reference, [big], -1)
        env = {**os.environ, "ASM_PARSE_AHEAD_BYTES": "0"}
        command = [sys.executable, str(ROOT / "main.py"), "--log-path", str(big),
                   "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                   "--checkpoint-bytes", "200000", "-q"]
        rng = random.Random(SEED)
        orphans_checked = 0
        for _attempt in range(4):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            worker = wait_for_child(proc.pid, timeout=10)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if worker is not None:
                orphans_checked += 1
                deadline = time.monotonic() + 10
                while process_alive(worker) and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertFalse(process_alive(worker), "the worker outlived its monitor")
        final = subprocess.run(command, env=env, capture_output=True, text=True)
        self.assertEqual(final.returncode, 0, final.stderr)
        self.assertGreater(orphans_checked, 0, "no kill landed while a worker ran")
        self.assertEqual(load_store(self.out), load_store(reference))



def wait_for_child(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    return int(entry)
        time.sleep(0.005)
    return None


def process_alive(pid: int) -> bool:
    """Running or not yet reaped by its (new) parent; an orphan would stay so."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class WhenItForks(ParseAheadTest):
    def test_a_catch_up_forks_a_worker_and_an_appended_line_stays_in_process(self):
        lines = hostile_log(random.Random(SEED + 4), n_real=500)
        log = self.tmp / "access.log"
        write_log(log, lines[:-1])
        size = log.stat().st_size
        env = {k: v for k, v in os.environ.items() if k != "ASM_PARSE_AHEAD_BYTES"}
        # An idle machine, and no thread left behind by an earlier test of the suite.
        with mock.patch.dict(os.environ, env, clear=True), \
                mock.patch.object(os, "getloadavg", lambda: (0.2, 0.2, 0.2)), \
                mock.patch.object(monitor_module.threading, "active_count", lambda: 1):
            run = self.passes(self.out, [log], None,
                              config={"parse_ahead_bytes": size // 2, "follow": True},
                              steps=[None, lambda: write_log_append(log, lines[-1:])])
        self.assertEqual(run["forks"], 1, "the catch-up forks, the appended line does not")
        self.assertEqual(run["stats"][1]["lines"], 1)

    def test_a_machine_without_an_idle_core_parses_in_process(self):
        lines = hostile_log(random.Random(SEED + 5), n_real=200)
        log = self.tmp / "access.log"
        write_log(log, lines)
        env = {k: v for k, v in os.environ.items() if k != "ASM_PARSE_AHEAD_BYTES"}
        # Busy on average and another task runnable now; others at work on average
        # (past cores + 0.5) though idle this instant; or one core.
        for load, running, cores in ((1.7, 2, 2), (2.6, 1, 2), (0.0, 1, 1)):
            with mock.patch.dict(os.environ, env, clear=True), \
                    mock.patch.object(os, "getloadavg", lambda: (load, load, load)), \
                    mock.patch.object(parse_ahead, "runnable_now", lambda: running), \
                    mock.patch.object(os, "cpu_count", lambda: cores), \
                    mock.patch.object(monitor_module.threading, "active_count", lambda: 1):
                run = self.passes(self.tmp / f"busy{load}-{running}-{cores}", [log], None,
                                  config={"parse_ahead_bytes": 0})
            self.assertEqual(run["forks"], 0, (load, running, cores))

    def test_an_average_raised_by_earlier_runs_forks_when_nothing_else_runs_now(self):
        # The 1-minute average lags: runs a few seconds ago (a benchmark's, cron's) keep
        # it above 1.5 on an idle machine.
        lines = hostile_log(random.Random(SEED + 6), n_real=200)
        log = self.tmp / "access.log"
        write_log(log, lines)
        env = {k: v for k, v in os.environ.items() if k != "ASM_PARSE_AHEAD_BYTES"}
        with mock.patch.dict(os.environ, env, clear=True), \
                mock.patch.object(os, "getloadavg", lambda: (1.7, 1.2, 0.8)), \
                mock.patch.object(parse_ahead, "runnable_now", lambda: 1), \
                mock.patch.object(os, "cpu_count", lambda: 2), \
                mock.patch.object(monitor_module.threading, "active_count", lambda: 1):
            run = self.passes(self.out, [log], None, config={"parse_ahead_bytes": 0})
        self.assertEqual(run["forks"], 1)


def write_log_append(path: Path, lines: list[bytes]) -> None:
    write_lines(path, [line + b"\n" for line in lines])
