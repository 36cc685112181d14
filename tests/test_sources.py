"""Many sources in one monitor: several pods' logs (globs), and standard input."""

from __future__ import annotations

import random
import subprocess
import sys

from tests.helpers import ROOT, TempDirTest, load_store, make_line, stored_inputs, write_lines


class MultiplePods(TempDirTest):
    def test_three_pods_interleaved_sessions_with_duplicates_give_ground_truth(self):
        rng = random.Random(3)
        pods = [self.tmp / f"pod-{i}" for i in range(3)]
        for pod in pods:
            pod.mkdir()
        truth: dict[str, list[int]] = {}
        for n in range(1, 601):
            session = f"agent:{n % 11}"
            truth.setdefault(session, []).append(100 + n)
            line = make_line(n, session=session, history=1 + n % 4)
            pod = rng.choice(pods)
            write_lines(pod / "access.log", [line])
            if n % 25 == 0:   # the load balancer retried: logged on a second pod too
                write_lines(rng.choice([p for p in pods if p != pod]) / "access.log", [line])
        code, out, err = self.run_monitor(self.tmp / "pod-*" / "access.log")
        self.assertEqual(code, 0, err)
        self.assertIn("3 files", out)
        docs = load_store(self.out)
        self.assertEqual(set(docs), set(truth))
        for session, inputs in truth.items():
            self.assertEqual(sorted(r["input_tokens"] for r in docs[session]["rounds"]), inputs)
        self.assertIn("24 already-stored rounds skipped", out)

    def test_repeatable_log_path_tracks_each_file_in_one_state(self):
        a, b = self.tmp / "a.log", self.tmp / "b.log"
        write_lines(a, [make_line(1), make_line(2)])
        write_lines(b, [make_line(3)])
        self.run_monitor(a, b)
        write_lines(b, [make_line(4)])
        self.run_monitor(a, b)
        self.assertEqual(stored_inputs(self.out), [101, 102, 103, 104])


class StandardInput(TempDirTest):
    def pipe(self, data: bytes, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "main.py"), "--log-path", "-",
                               "--output-dir", str(self.out), *extra],
                              input=data, capture_output=True)

    def test_piping_the_same_lines_again_counts_nothing_twice(self):
        first = b"".join(make_line(n, request_id=n % 2 == 0) for n in range(1, 41))
        self.assertEqual(self.pipe(first).returncode, 0)
        overlap = b"".join(make_line(n, request_id=n % 2 == 0) for n in range(21, 61))
        proc = self.pipe(overlap)           # kubectl logs --since=1h, run again
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(b"20 already-stored rounds skipped", proc.stdout)
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, 61)])

    def test_follow_on_stdin_ends_when_the_pipe_closes(self):
        proc = self.pipe(make_line(1) + make_line(2)[:30], "--follow")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(stored_inputs(self.out), [101])
        self.assertIn(b"bad_json", proc.stderr)     # the cut last line is counted, not lost silently
