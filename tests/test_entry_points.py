"""Entry points under bad input (issue 13, item 13): every flag of main.py, cli.py,
webserver.py and mcp_server.py (and the console scripts of pyproject.toml, which call
the same ``main``) given values no user should give. Whatever the value: no traceback,
at most one line on stderr when it fails, exit 2 for a usage error and 1 for a runtime
one. And ``main()`` called in a process leaves that process as it found it (signal
handlers).

The values are generated per flag from the parsers themselves (argparse introspection),
so a flag added tomorrow is swept too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

from tests.helpers import ROOT, TempDirTest, make_line, write_lines

from agent_session_monitor import cli, monitor_cli
from agent_session_monitor.web import server as web

# Values a typo, a script bug or an agent talked into it passes to a flag.
BAD_VALUES = ("", " ", "abc", "-1", "0", "99999", "1e309", "nan", "-inf", "9" * 40, "1.5",
              "x" * 5000, "\u202e", "../../etc/passwd", "%s%n", "-", "=")


def flags_of(parser: argparse.ArgumentParser) -> list[tuple[list[str], argparse.Action]]:
    """(prefix argv, action) for every option that takes a value, sub-commands included."""
    found = []

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, prefix + [name])
            elif action.option_strings and action.nargs != 0:
                found.append((prefix, action))

    walk(parser, [])
    return found


class EntryPointCase(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.out.mkdir(mode=0o700)
        cwd = os.getcwd()
        os.chdir(self.tmp)        # relative values ("abc", "=") land in the temp dir
        self.addCleanup(os.chdir, cwd)

    def assert_clean(self, argv: list[str], code: int, err: str) -> None:
        self.assertNotIn("Traceback", err, argv)
        self.assertNotIn("internal error", err, argv)
        self.assertIn(code, (0, 1, 2, 3), (argv, err))
        if code in (1, 2):
            lines = err.strip("\n").splitlines()
            self.assertTrue(lines, (argv, "a failure must say why"))
            self.assertIn("error", lines[-1], (argv, err))
            if code == 2:
                self.assertEqual(len(lines), 1, (argv, err))


class BadFlagValuesAreOneLineNeverATraceback(EntryPointCase):
    def run_monitor_main(self, argv: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        code = monitor_cli.main(argv + ["--output-dir", str(self.out), "--allow-log-dir",
                                        str(self.tmp), "-q"], out=io.StringIO(), err=err)
        return code, err.getvalue()

    def test_every_main_py_flag_with_every_bad_value(self) -> None:
        swept = 0
        for prefix, action in flags_of(monitor_cli.build_parser()):
            if action.dest in ("output_dir", "allow_log_dir", "version"):
                continue   # fixed by the harness so that nothing leaves the temp dir
            for value in BAD_VALUES:
                if action.dest == "log_path" and value == "-":
                    continue  # standard input: would wait for the test's stdin
                argv = prefix + [action.option_strings[-1], value]
                with self.subTest(argv=argv[:2]):
                    code, err = self.run_monitor_main(argv)
                    self.assert_clean(argv, code, err)
                    swept += 1
        self.assertGreater(swept, 300)

    def test_every_cli_py_flag_with_every_bad_value(self) -> None:
        swept = 0
        for prefix, action in flags_of(cli.build_parser()):
            if action.dest == "data_dir":
                continue
            for value in BAD_VALUES:
                argv = ["--data-dir", str(self.out)] + prefix + [action.option_strings[-1], value]
                if prefix and prefix[0] in ("show", "url", "export"):
                    argv.append("-" if prefix[0] == "export" else "some-session")
                with self.subTest(argv=argv[2:5]):
                    out, err = io.StringIO(), io.StringIO()
                    code = cli.main(argv, out=out, err=err)
                    self.assert_clean(argv, code, err.getvalue())
                    swept += 1
        self.assertGreater(swept, 300)

    def test_every_webserver_py_flag_with_every_bad_value(self) -> None:
        swept = 0
        for prefix, action in flags_of(web.build_parser()):
            if action.dest == "data_dir":
                continue
            for value in BAD_VALUES:
                argv = ["--data-dir", str(self.out), "--port", "0", action.option_strings[-1],
                        value]
                with self.subTest(argv=argv[4:]):
                    code, err = self.run_web(argv)
                    self.assert_clean(argv, code, err)
                    swept += 1
        self.assertGreater(swept, 100)

    def test_every_mcp_server_flag_with_every_bad_value(self) -> None:
        from agent_session_monitor import mcp_server

        swept = 0
        for prefix, action in flags_of(mcp_server.build_parser()):
            for value in BAD_VALUES:
                argv = [action.option_strings[-1], value]
                if action.dest != "data_dir":
                    argv += ["--data-dir", str(self.out)]
                with self.subTest(argv=argv[:2]):
                    err = io.StringIO()
                    # An empty stdin: a server that starts ends at once, at its EOF.
                    code = mcp_server.main(argv, stdin=io.BytesIO(b""), stdout=io.BytesIO(),
                                           err=err)
                    self.assert_clean(argv, code, err.getvalue())
                    swept += 1
        self.assertGreater(swept, 30)

    def run_web(self, argv: list[str]) -> tuple[int, str]:
        """web.main without serving: serve_forever returns at once when it starts."""
        err = io.StringIO()
        with mock.patch.object(web.WebServer, "serve_forever", lambda self, *a: None), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
                mock.patch.dict(os.environ, {}, clear=False):
            for name in ("AGENT_SESSION_MONITOR_TOKEN", "AGENT_SESSION_MONITOR_LINK_SECRET"):
                os.environ.pop(name, None)
            try:
                code = web.main(argv)
            except SystemExit as e:    # argparse's way: still must be one line and 2
                code = e.code
        return code, err.getvalue()

    def test_webserver_port_out_of_range_is_a_usage_error(self) -> None:
        for port in ("99999", "65536", "-1", "abc", "1e3", "", "0x50"):
            with self.subTest(port=port):
                code, err = self.run_web(["--data-dir", str(self.out), "--port", port])
                self.assertEqual(code, 2, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn("--port", err)
        code, err = self.run_web(["--data-dir", str(self.out), "--port", "0"])
        self.assertEqual(code, 0, err)    # 0: any free port

    def test_non_finite_numbers_are_refused_where_a_number_is_wanted(self) -> None:
        for flag in ("--refresh-interval", "--rotate-wait", "--alert-timeout"):
            for value in ("inf", "1e309", "nan"):
                with self.subTest(flag=flag, value=value):
                    code, err = self.run_monitor_main([flag, value])
                    self.assertEqual(code, 2, err)
        code, err = self.run_web(["--data-dir", str(self.out), "--port", "0",
                                  "--max-lag", "nan"])
        self.assertEqual(code, 2, err)


class ScriptsAsProcesses(EntryPointCase):
    """The files users run, and the console scripts' functions, as real processes."""

    def run_script(self, *argv: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_MONITOR")}
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              timeout=60, cwd=self.tmp, env=env)

    def test_each_script_with_a_bad_value_exits_2_with_one_line(self) -> None:
        cases = [(str(ROOT / "scripts" / "webserver.py"), "--port", "99999"),
                 (str(ROOT / "scripts" / "webserver.py"), "--port", "-1"),
                 (str(ROOT / "main.py"), "--max-rotate", "-3"),
                 (str(ROOT / "main.py"), "--refresh-interval", "inf"),
                 (str(ROOT / "scripts" / "cli.py"), "list", "--limit", "many"),
                 (str(ROOT / "scripts" / "mcp_server.py"), "--no-such-flag", "x"),
                 ("-c", "import sys; sys.path.insert(0, %r); from agent_session_monitor.web.server "
                  "import main; sys.exit(main())" % str(ROOT), "--port", "70000")]
        for argv in cases:
            with self.subTest(argv=argv):
                proc = self.run_script(*argv)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)


class MaintenanceReadsNoLog(EntryPointCase):
    def test_rebuild_index_and_reprice_ignore_a_log_path_outside_the_allow_list(self) -> None:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1), make_line(2)], "wb")
        err = io.StringIO()
        self.assertEqual(monitor_cli.main(["--log-path", str(log), "--output-dir", str(self.out),
                                           "--allow-log-dir", str(self.tmp), "-q"],
                                          out=io.StringIO(), err=err), 0, err.getvalue())
        elsewhere = self.tmp / "only-this"
        elsewhere.mkdir()
        for mode in ("--rebuild-index", "--reprice"):
            for extra in ([], ["--log-path", "/etc/shadow"]):
                with self.subTest(mode=mode, extra=extra):
                    out, err = io.StringIO(), io.StringIO()
                    # The default log path (/var/log/higress/access.log) is outside the
                    # allow-list given here; these modes read no log, so it must not matter.
                    code = monitor_cli.main([mode, "--output-dir", str(self.out),
                                             "--allow-log-dir", str(elsewhere), *extra],
                                            out=out, err=err)
                    self.assertEqual(code, 0, err.getvalue())
                    self.assertNotIn("refusing", err.getvalue())


class LogPathIsADirectory(EntryPointCase):
    def test_a_directory_given_as_the_log_is_one_line_and_exit_1_not_nothing_new(self) -> None:
        logs = self.tmp / "higress"
        logs.mkdir()
        for follow in ([], ["--follow"]):
            with self.subTest(follow=follow):
                # A process with a timeout: a --follow that takes the directory for a log
                # not written yet polls it for ever.
                proc = subprocess.run(
                    [sys.executable, str(ROOT / "main.py"), "--log-path", str(logs),
                     "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), *follow],
                    capture_output=True, text=True, timeout=60)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertNotIn("Nothing new", proc.stdout)
                lines = proc.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, proc.stderr)
                self.assertIn("is a directory", lines[0])
                self.assertIn(str(logs / "access.log"), lines[0])

    def test_a_glob_matching_only_directories_is_one_line_and_exit_1(self) -> None:
        # /var/log/higress* meant for the logs, matching only their directories.
        for n in range(4):
            (self.tmp / f"higress-{n}.d").mkdir()
        (self.tmp / "higress-1.d" / "access.log").write_bytes(b"")   # inside, not matched
        cases = [(str(self.tmp / "higress-*"), True), (str(self.tmp / "higress-[12].d"), True),
                 (str(self.tmp / "higress-?.d"), True), (str(self.tmp / "nothing-*"), False)]
        for pattern, dirs in cases:
            for follow in ([], ["--follow"]) if dirs else ([],):
                with self.subTest(pattern=pattern, follow=follow):
                    proc = subprocess.run(
                        [sys.executable, str(ROOT / "main.py"), "--log-path", pattern,
                         "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp),
                         *follow], capture_output=True, text=True, timeout=60)
                    self.assertEqual(proc.returncode, 1, proc.stderr)
                    self.assertNotIn("Nothing new", proc.stdout)
                    lines = proc.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, proc.stderr)
                    self.assertNotIn("Traceback", proc.stderr)
                    self.assertIn("matches only directories" if dirs else "no access log",
                                  lines[0])
        # A glob matching a directory and a log reads the log.
        log = self.tmp / "higress-9.log"
        write_lines(log, [make_line(1)], "wb")
        proc = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.tmp / "higress-*"),
             "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp)],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("1 round stored", proc.stdout)


class MainLeavesTheProcessAsItFoundIt(EntryPointCase):
    def test_signal_handlers_are_restored_after_main_returns(self) -> None:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)], "wb")
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)
        before = {s: signal.getsignal(s) for s in watched}
        runs = ([], ["--rebuild-index"], ["--max-rotate", "-1"], ["--log-path", "/nonexistent/x"])
        for extra in runs:
            with self.subTest(extra=extra):
                argv = (["--log-path", str(log)] if "--log-path" not in extra else []) + extra
                try:
                    monitor_cli.main(argv + ["--output-dir", str(self.out), "--allow-log-dir",
                                             str(self.tmp), "-q"],
                                     out=io.StringIO(), err=io.StringIO())
                except SystemExit:
                    pass
                self.assertEqual({s: signal.getsignal(s) for s in watched}, before)

    def test_sigterm_during_a_pass_still_saves_state_then_the_handler_is_gone(self) -> None:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(i) for i in range(5)], "wb")
        before = signal.getsignal(signal.SIGTERM)
        from agent_session_monitor.ingest.monitor import Monitor
        real_poll = Monitor.poll_once

        def poll_then_terminated(monitor):
            stats = real_poll(monitor)
            os.kill(os.getpid(), signal.SIGTERM)   # systemd's stop, mid-run
            return stats

        err = io.StringIO()
        with mock.patch.object(Monitor, "poll_once", poll_then_terminated):
            code = monitor_cli.main(["--log-path", str(log), "--output-dir", str(self.out),
                                     "--allow-log-dir", str(self.tmp), "-q"],
                                    out=io.StringIO(), err=err)
        self.assertEqual(code, 143, err.getvalue())
        self.assertTrue((self.out / ".state.json").exists())
        self.assertEqual(signal.getsignal(signal.SIGTERM), before)
