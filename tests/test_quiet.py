"""``main.py -q``: no summary and no warnings, but every error (interfaces.md: "quiet and
progress output"; a cron line with -q mails only what needs a person).

Warnings (counted in .state.json either way): bad lines skipped, forged lines, a log
truncated or rewritten, notes. Errors, printed whatever -q says: a log that cannot be
read or is refused by the allow-list, lines lost (data loss), a store that cannot be
written, bad usage.
"""

from __future__ import annotations

import io
import os
from unittest import mock

from tests.helpers import TempDirTest, make_line, write_lines
from tests.test_forgery import PAYLOADS, inject

NOISY = [b"not json\n", b'{"ai_log":"{\\"input_token\\":-1}"}\n', b"\xff\xfe\n",
         inject(1, {"user_agent": PAYLOADS["second_ai_log"]})]


class QuietMonitor(TempDirTest):
    def noisy_log(self):
        log = self.tmp / "access.log"
        write_lines(log, [make_line(0)] + NOISY + [make_line(1)])
        return log

    def test_warnings_are_printed_without_q(self):
        code, out, err = self.run_monitor(self.noisy_log())
        self.assertEqual(code, 0, err)
        self.assertIn("skipped bad_json line", err)
        self.assertIn("forged line", err)
        self.assertIn("rounds stored", out)

    def test_q_prints_no_summary_and_no_warning_of_any_kind(self):
        log = self.noisy_log()
        code, out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, out, err), (0, "", ""))
        # A truncation and a rewrite in place between runs: warnings, counted, silent.
        write_lines(log, [make_line(2)], "wb")
        code, out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, out, err), (0, "", ""))
        with open(log, "r+b") as f:
            f.write(make_line(3)[:20])
        write_lines(log, NOISY)
        code, out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, out, err), (0, "", ""))
        state = (self.out / ".state.json").read_text()
        self.assertIn('"bad_json"', state)
        self.assertIn('"file_events"', state)

    def test_q_still_prints_every_error(self):
        log = self.noisy_log()
        self.run_monitor(log, extra=["-q"])
        # Lines lost: the log rotated past every kept rotation while stopped.
        write_lines(log, [make_line(9)])   # unread when its file rotates out of reach
        for n in range(3):
            for k in (2, 1):
                if (self.tmp / f"access.log.{k}").exists():
                    os.replace(self.tmp / f"access.log.{k}", self.tmp / f"access.log.{k + 1}")
            os.replace(log, self.tmp / "access.log.1")
            write_lines(log, [make_line(10 + n)])
        code, out, err = self.run_monitor(log, extra=["-q", "--max-rotate", "1"])
        self.assertEqual(out, "")
        self.assertIn("data loss", err)
        self.assertNotIn("skipped", err)
        # Unreadable (EACCES injected: as root every file is readable), as test_faults.
        from agent_session_monitor.ingest import tail
        real_open = tail.open_log

        def denied(path, *a, **kw):
            if str(path) == str(log):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **kw)

        write_lines(log, [make_line(20)])
        with mock.patch.object(tail, "open_log", denied):
            code, out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.strip(), f"warning: cannot read {log}: Permission denied")
        # A store that cannot be written: one error line, exit 1.
        real = os.open

        def unwritable(path, flags, *a, **kw):
            if str(path).startswith(str(self.out)) and flags & os.O_CREAT:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, flags, *a, **kw)

        with mock.patch("os.open", unwritable):
            code, out, err = self.run_monitor(log, extra=["-q"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("main.py: error:", err)
        # Refused by the allow-list: one error line, exit 1.
        outside = self.tmp.parent / f"{self.tmp.name}-outside.log"
        write_lines(outside, [make_line(0)])
        self.addCleanup(outside.unlink)
        from agent_session_monitor.monitor_cli import main as monitor_main
        o, e = io.StringIO(), io.StringIO()
        code = monitor_main(["--log-path", str(outside), "--output-dir", str(self.out),
                             "--allow-log-dir", str(self.tmp), "-q"], out=o, err=e)
        self.assertEqual((code, o.getvalue()), (2, ""))
        self.assertIn("error", e.getvalue())


class QuietAfterAKill(TempDirTest):
    """-q prints errors, and the repair of what a killed run left: a monitor killed
    mid-write (the OOM killer, kill -9) leaves no other trace a cron mail would show, so
    the next run says so in one line, with -q too; nothing else, and nothing lost."""

    def test_the_run_after_a_kill_says_so_in_one_note_with_q_too(self):
        import signal
        import subprocess
        import sys
        from tests.helpers import ROOT, stored_inputs

        log = self.tmp / "access.log"
        write_lines(log, [make_line(n, session=f"s{n % 40}") for n in range(400)])
        argv = [sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q"]
        for quiet in (True, False):
            with self.subTest(quiet=quiet):
                if self.out.exists():
                    import shutil
                    shutil.rmtree(self.out)
                env = dict(os.environ, ASM_FAULT_BATCH="rename:3")
                killed = subprocess.run(argv, env=env, capture_output=True, text=True,
                                        timeout=120)
                self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr)
                env.pop("ASM_FAULT_BATCH")
                after = subprocess.run(argv if quiet else argv[:-1], env=env,
                                       capture_output=True, text=True, timeout=120)
                self.assertEqual(after.returncode, 0, after.stderr)
                notes = after.stderr.strip().splitlines()
                self.assertEqual(len(notes), 1, after.stderr)
                self.assertRegex(notes[0], r"^note: the previous run was killed mid-write: "
                                 r"re-indexed the \d+ sessions? it had left pending "
                                 r"\(nothing lost\)$")
                self.assertEqual(after.stdout == "", quiet, after.stdout)
                self.assertEqual(stored_inputs(self.out), [100 + n for n in range(400)])
                # The repair is done once: the next run is silent with -q.
                again = subprocess.run(argv, env=env, capture_output=True, text=True,
                                       timeout=120)
                self.assertEqual((again.returncode, again.stdout, again.stderr), (0, "", ""))
