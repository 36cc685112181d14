"""What a cron catch-up pays before its first line and after its last: the modules it
imports and the way main.py leaves. Each run is a real main.py process on seeded logs
(tests/loggen.py) whose stores are compared with a run of the same log in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import TempDirTest, load_store
from tests.loggen import iter_records

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

MODULES = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
           "sys.argv = sys.argv[2:]; from agent_session_monitor import monitor_cli; "
           "code = monitor_cli.main(sys.argv[1:]); "
           "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith("
           "('concurrent', 'logging')))]))")


def write_log(path: Path, seed: int, sessions: int) -> int:
    lines = 0
    with open(path, "wb") as f:
        for line, _event, _kind in iter_records(seed, sessions=sessions, max_requests=6,
                                                bad_every=37, non_ai_every=29,
                                                duplicate_every=41):
            f.write(line)
            lines += 1
    return lines


class CatchUpImports(TempDirTest):
    """A catch-up whose batch is synced whole (128 files and more) never needs the
    fsync thread pool, so it does not import concurrent.futures (and the logging it
    brings: ~5 ms of every run's start-up); a smaller batch still makes and uses it."""

    def run_pass(self, log: Path, out: Path, env: dict | None = None) -> tuple[int, list]:
        proc = subprocess.run(
            [PYTHON, "-c", MODULES, str(ROOT), "main.py", "--log-path", str(log),
             "--output-dir", str(out), "--allow-log-dir", str(self.tmp), "-q"],
            capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
        self.assertEqual(proc.stderr, "")
        code, modules = json.loads(proc.stdout)
        return code, modules

    def test_a_whole_batch_catch_up_imports_no_thread_pool(self) -> None:
        for seed in (3, 11):
            log = self.tmp / f"whole-{seed}.log"
            write_log(log, seed, 160)
            out = self.tmp / f"out-whole-{seed}"
            code, modules = self.run_pass(log, out)
            self.assertEqual(code, 0)
            files = load_store(out)
            self.assertGreaterEqual(len(files), 128)   # a whole batch: one syncfs
            self.assertEqual(modules, [], f"seed {seed}")

    def test_small_batches_still_sync_on_the_pool(self) -> None:
        for seed, sessions in ((5, 2), (7, 9), (13, 40)):
            log = self.tmp / f"small-{seed}.log"
            write_log(log, seed, sessions)
            pooled, plain = self.tmp / f"out-pool-{seed}", self.tmp / f"out-plain-{seed}"
            code, modules = self.run_pass(log, pooled)
            self.assertEqual(code, 0)
            self.assertIn("concurrent.futures", modules, f"seed {seed}")
            # The same log forced through per-file fsyncs: the same store.
            code, _ = self.run_pass(log, plain, {"ASM_BATCH_SYNC": "fsync"})
            self.assertEqual(code, 0)
            self.assertEqual(load_store(pooled), load_store(plain))
            self.assertEqual(len(load_store(pooled)), sessions)


class MainExits(TempDirTest):
    """main.py leaves without tearing the interpreter down (os._exit): what it printed
    is still all there, its exit status is main()'s, a closed stdout is no traceback,
    and the store equals one written by main() called in-process."""

    def main_py(self, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        # Buffered as under cron (PYTHONUNBUFFERED would print as it goes).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ASM_") and k != "PYTHONUNBUFFERED"}
        return subprocess.run([PYTHON, str(ROOT / "main.py"), *args], stdout=stdout,
                              stderr=subprocess.PIPE, timeout=300, env=env)

    def test_output_status_and_store_as_in_process(self) -> None:
        from agent_session_monitor.monitor_cli import main
        import io

        for seed in (1, 2, 4):
            log = self.tmp / f"a-{seed}.log"
            write_log(log, seed, 5 + 7 * seed)
            out_a, out_b = self.tmp / f"a-{seed}", self.tmp / f"b-{seed}"
            args = ["--log-path", str(log), "--output-dir", str(out_a),
                    "--allow-log-dir", str(self.tmp)]
            proc = self.main_py(*args)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            text, err = io.StringIO(), io.StringIO()
            code = main(args[:2] + ["--output-dir", str(out_b)] + args[4:], out=text, err=err)
            self.assertEqual(code, 0)
            self.assertEqual(proc.stdout.decode(), text.getvalue())
            self.assertTrue(proc.stdout.startswith(b"Read "), proc.stdout)
            self.assertEqual(proc.stderr.decode(), err.getvalue())
            self.assertEqual(load_store(out_a), load_store(out_b))
            state_a = json.loads((out_a / ".state.json").read_text())
            state_b = json.loads((out_b / ".state.json").read_text())
            self.assertEqual(state_a["counters"], state_b["counters"])
            self.assertFalse([p for p in os.listdir(out_a) if p.startswith(".tmp-")])

    def test_error_status_and_message_survive_the_exit(self) -> None:
        proc = self.main_py("--log-path", str(self.tmp / "missing.log"), "--output-dir",
                            str(self.tmp / "out"), "--allow-log-dir", str(self.tmp))
        self.assertEqual(proc.returncode, 1)
        self.assertIn(b"no access log at", proc.stderr)
        self.assertEqual(proc.stderr.count(b"\n"), 1)

    def test_a_closed_stdout_is_no_traceback(self) -> None:
        log = self.tmp / "c.log"
        write_log(log, 9, 20)
        r, w = os.pipe()
        os.close(r)   # the reader is gone before main.py prints its summary
        try:
            proc = self.main_py("--log-path", str(log), "--output-dir", str(self.tmp / "c"),
                                "--allow-log-dir", str(self.tmp), stdout=w)
        finally:
            os.close(w)
        self.assertNotIn(b"Traceback", proc.stderr)
        self.assertNotIn(b"Exception ignored", proc.stderr)
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(len(load_store(self.tmp / "c")), 20)

    def test_profiled_as_the_issue_says_the_profile_is_written(self) -> None:
        # python3 -m cProfile main.py ...: the profiler prints after the script returns.
        log = self.tmp / "p.log"
        write_log(log, 12, 4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        proc = subprocess.run(
            [PYTHON, "-m", "cProfile", "-s", "tottime", str(ROOT / "main.py"), "--log-path",
             str(log), "--output-dir", str(self.tmp / "p"), "--allow-log-dir", str(self.tmp)],
            capture_output=True, timeout=300, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(b"Ordered by: internal time", proc.stdout)
        self.assertIn(b"function calls", proc.stdout)
        self.assertEqual(len(load_store(self.tmp / "p")), 4)

    def test_a_full_disk_under_stdout_is_one_line_and_status_1(self) -> None:
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full on this system")
        log = self.tmp / "f.log"
        write_log(log, 10, 3)
        with open("/dev/full", "wb") as full:
            proc = self.main_py("--log-path", str(log), "--output-dir", str(self.tmp / "f"),
                                "--allow-log-dir", str(self.tmp), stdout=full)
        self.assertEqual(proc.returncode, 1)
        self.assertNotIn(b"Traceback", proc.stderr)
        self.assertIn(b"main.py: error: cannot write the output", proc.stderr)
        self.assertEqual(len(load_store(self.tmp / "f")), 3)
