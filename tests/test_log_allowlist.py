"""The log allow-list under attack (issue 13, item 4).

The monitor is often started by an agent, which can be talked into pointing it at a
file it must not read. Only files whose *real* path (symlinks and ``..`` resolved, of
the file actually opened) lies below an allowed directory are read: the live log, each
rotation (``.1``, ``.2.gz``, ``-20260101``) and each glob match. A refused file is one
clear line, counted, and never read; a symlink that stays inside still works.

Every test plants a "secret" log outside the allowed directory whose lines would make
sessions named ``stolen-*``: any such session in the store means it was read.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import threading
from pathlib import Path
from unittest import mock

from tests.helpers import TempDirTest, load_store, make_line, write_lines

from agent_session_monitor import confine, monitor_cli
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

WILDCARDS = ("*", "?*", "[a-z]*", "s*", "*b", "**")


class AllowListCase(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.allowed = self.tmp / "allowed"
        self.secret = self.tmp / "secret"
        for d in (self.allowed / "sub" / "deeper", self.secret):
            d.mkdir(parents=True)
        self.secret_log = self.secret / "access.log"
        write_lines(self.secret_log, [make_line(i, session="stolen-" + str(i)) for i in range(3)],
                    "wb")
        # Rotations of the secret too: a `..` pattern reaching it would take them as well.
        write_lines(self.secret / "access.log.1", [make_line(7, session="stolen-rot")], "wb")

    def main(self, *argv: str, allow: list[Path] | None = None) -> tuple[int, str, str]:
        allow = [self.allowed] if allow is None else allow
        args = [*argv, "--output-dir", str(self.out)]
        for d in allow:
            args += ["--allow-log-dir", str(d)]
        out, err = io.StringIO(), io.StringIO()
        code = monitor_cli.main(args, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def stolen(self) -> list[str]:
        if not self.out.exists():
            return []
        return [sid for sid in load_store(self.out) if sid and sid.startswith("stolen")]

    def state_counter(self, kind: str) -> int:
        state = json.loads((self.out / ".state.json").read_text())
        return state["counters"].get("file_events", {}).get(kind, 0)


class PatternsThatClimbOut(AllowListCase):
    def test_dot_dot_after_a_wildcard_is_refused_for_every_shape(self) -> None:
        rng = random.Random(4)
        patterns = []
        for wild, depth in itertools.product(WILDCARDS, (1, 2, 3)):
            # ALLOWED/<wild>/<dir>.../../../secret/access.log, climbing one more than it went
            down = [wild] + ["deeper"] * (depth - 1)
            ups = [".."] * (len(down) + 1)
            patterns.append(os.path.join(self.allowed, *down, *ups, "secret", "access.log"))
            patterns.append(os.path.join(self.allowed, *down, *ups, "secret", "*.log"))
            # with redundant separators and dots, as a prompt-injected path might have
            noisy = os.path.join(self.allowed, *down, *ups, ".", "secret", "access.log")
            patterns.append(noisy.replace(os.sep, os.sep * rng.randint(1, 3)))
        patterns.append(str(self.allowed) + "/*/../../../../../../../etc/shadow")
        patterns.append(str(self.allowed) + "/sub/../../secret/access.log")   # no wildcard
        patterns.append(str(self.allowed) + "/../secret/access.log")
        for pattern in patterns:
            with self.subTest(pattern=pattern):
                code, _, err = self.main("--log-path", pattern)
                self.assertEqual(code, 2, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn("refusing to read", err)
                self.assertEqual(self.stolen(), [])
        self.assertGreater(len(patterns), 50)

    def test_the_reported_var_log_shadow_escape_is_refused(self) -> None:
        code, _, err = self.main("--log-path", "/var/log/*/../../../etc/shadow",
                                 allow=[Path("/var/log")])
        self.assertEqual(code, 2, err)
        self.assertIn("refusing to read", err)

    def test_a_symlinked_directory_in_the_pattern_is_judged_by_where_it_leads(self) -> None:
        (self.allowed / "logs").symlink_to(self.secret, target_is_directory=True)
        code, _, err = self.main("--log-path", str(self.allowed / "logs" / "access.log"))
        self.assertEqual(code, 2, err)
        self.assertEqual(self.stolen(), [])


class FilesThatLeadOut(AllowListCase):
    """Patterns inside the allowed directory whose files are symlinks out."""

    def plant(self, name: str, target: Path) -> Path:
        link = self.allowed / name
        link.symlink_to(target)
        return link

    def live(self, n: int = 2) -> Path:
        log = self.allowed / "access.log"
        write_lines(log, [make_line(100 + i, session="mine") for i in range(n)], "wb")
        return log

    def assert_refused_once(self, code: int, err: str, name: str) -> None:
        self.assertEqual(code, 1, err)     # cron hears of it through the exit status
        refusals = [l for l in err.splitlines() if "outside the allowed log directories" in l]
        self.assertEqual(len(refusals), 1, err)
        self.assertIn(name, refusals[0])
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.stolen(), [])

    def test_every_kind_of_planted_file_is_refused_and_the_rest_still_read(self) -> None:
        gz = self.secret / "old.gz"
        with gzip.open(gz, "wb") as f:
            f.write(make_line(50, session="stolen-gz"))
        plants = {                          # name in the allowed dir -> where it leads
            "access.log.1": self.secret_log,
            "access.log.2.gz": gz,
            "access.log-20260101": self.secret_log,
            "other.log": self.secret_log,              # a glob match
            "chain.log": self.allowed / "hop.log",     # allowed -> allowed -> out
        }
        for name, target in plants.items():
            with self.subTest(name=name):
                for p in self.allowed.iterdir():
                    if p.is_symlink() or p.is_file():
                        p.unlink()
                if self.out.exists():
                    for p in self.out.iterdir():
                        p.unlink()
                self.live()
                if name == "chain.log":
                    self.plant("hop.log", self.secret_log)
                self.plant(name, target)
                pattern = str(self.allowed / ("access.log" if "access" in name else "*.log"))
                code, _, err = self.main("--log-path", pattern, "-q")
                if name == "chain.log":   # two names lead out: each said once
                    self.assertEqual(code, 1, err)
                    self.assertEqual(err.count("outside the allowed log directories"), 2, err)
                    self.assertEqual(self.stolen(), [])
                else:
                    self.assert_refused_once(code, err, name)
                self.assertIn("mine", load_store(self.out))   # the real log still read
                self.assertGreaterEqual(self.state_counter("refused"), 1)

    def test_a_glob_through_a_symlinked_directory_out_is_refused(self) -> None:
        (self.allowed / "sub" / "access.log").write_bytes(make_line(1, session="mine"))
        (self.allowed / "pod-evil").symlink_to(self.secret, target_is_directory=True)
        code, _, err = self.main("--log-path", str(self.allowed / "*" / "access.log"))
        self.assertEqual(code, 1, err)
        refusals = [l for l in err.splitlines() if "outside the allowed log directories" in l]
        # the live log found through it and its rotation .1, each once
        self.assertEqual(len(refusals), 2, err)
        self.assertTrue(all("pod-evil" in l for l in refusals), err)
        self.assertEqual(self.stolen(), [])
        self.assertEqual(sorted(load_store(self.out)), ["mine"])

    def test_the_live_log_itself_a_symlink_out_is_refused(self) -> None:
        link = self.plant("access.log", self.secret_log)
        code, _, err = self.main("--log-path", str(link))
        self.assert_refused_once(code, err, "access.log")

    def test_a_symlink_that_stays_inside_is_followed(self) -> None:
        real = self.allowed / "sub" / "real.log"
        write_lines(real, [make_line(i, session="mine") for i in range(3)], "wb")
        self.plant("access.log", real)
        other = self.tmp / "also-allowed"
        other.mkdir()
        write_lines(other / "x.log", [make_line(9, session="mine-too")], "wb")
        self.plant("access.log.1", other / "x.log")
        code, _, err = self.main("--log-path", str(self.allowed / "access.log"),
                                 allow=[self.allowed, other])
        self.assertEqual(code, 0, err)
        self.assertNotIn("outside", err)
        self.assertEqual(sorted(load_store(self.out)), ["mine", "mine-too"])

    def test_a_live_log_swapped_for_a_symlink_in_follow_mode_is_refused(self) -> None:
        log = self.live(2)
        err = io.StringIO()
        config = MonitorConfig(log_paths=[str(log)], output_dir=self.out, follow=True,
                               allowed_log_dirs=[Path(os.path.realpath(self.allowed))])
        with Monitor(config, err=err) as monitor:
            monitor.poll_once()
            for attempt in range(3):       # the attacker swaps it; polls go on
                log.unlink()
                log.symlink_to(self.secret_log)
                stats = monitor.poll_once()
                self.assertEqual(stats.rounds, 0)
        self.assertEqual(err.getvalue().count("outside the allowed log directories"), 1,
                         err.getvalue())
        self.assertEqual(self.stolen(), [])
        self.assertEqual(sorted(load_store(self.out)), ["mine"])

    def test_a_fifo_named_like_a_rotation_does_not_hang_the_monitor(self) -> None:
        self.live(2)
        os.mkfifo(self.allowed / "access.log.1")
        result = {}
        thread = threading.Thread(target=lambda: result.update(
            r=self.main("--log-path", str(self.allowed / "access.log"))), daemon=True)
        thread.start()
        thread.join(20)
        if thread.is_alive():     # unblock the stuck open() so the thread can end
            with open(self.allowed / "access.log.1", "wb"):
                pass
            self.fail("the monitor hangs opening a FIFO")
        code, _, err = result["r"]
        self.assertEqual(code, 0, err)
        self.assertIn("mine", load_store(self.out))


class OpenThenCheck(AllowListCase):
    """The check is of the file actually opened, so swapping a name between a check and
    the open (TOCTOU) gains nothing."""

    def test_a_symlink_swapped_between_check_and_open_is_refused(self) -> None:
        inside = self.allowed / "sub" / "inside.log"
        write_lines(inside, [make_line(1)], "wb")
        link = self.allowed / "access.log"
        link.symlink_to(inside)
        real_open = os.open

        def swap_then_open(path, flags, *args):
            if str(path) == str(link):
                link.unlink()
                link.symlink_to(self.secret_log)   # after realpath said "inside"
            return real_open(path, flags, *args)

        roots = [Path(os.path.realpath(self.allowed))]
        with mock.patch.object(confine.os, "open", swap_then_open):
            with self.assertRaises(confine.OutsideAllowed) as caught:
                confine.open_log(str(link), roots)
        self.assertEqual(caught.exception.real, os.path.realpath(self.secret_log))

    def test_the_real_path_without_proc_uses_the_inode(self) -> None:
        inside = self.allowed / "access.log"
        write_lines(inside, [make_line(1)], "wb")
        roots = [Path(os.path.realpath(self.allowed))]
        with mock.patch.object(confine, "PROC_FD", "/nonexistent/fd/{}"):
            with confine.open_log(str(inside), roots) as f:
                self.assertTrue(f.read().startswith(b"{"))
            link = self.allowed / "out.log"
            link.symlink_to(self.secret_log)
            with self.assertRaises(confine.OutsideAllowed):
                confine.open_log(str(link), roots)

    def test_within_is_by_path_component_not_by_prefix(self) -> None:
        root = [Path("/var/log")]
        for real, ok in (("/var/log/a", True), ("/var/log", True), ("/var/logs/a", False),
                         ("/var/log-evil/a", False), ("/var", False), ("/etc/shadow", False)):
            self.assertEqual(confine.is_within(real, root), ok, real)
        self.assertTrue(confine.is_within("/etc/shadow", [Path("/")]))
