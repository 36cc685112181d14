"""The docs say what the code does: every command and option of every entry point is in
README.md, every command README.md shows runs, and example/demo.sh runs end to end."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest

from tests.helpers import ROOT, TempDirTest

README = (ROOT / "README.md").read_text(encoding="utf-8")


def parsers() -> dict[str, argparse.ArgumentParser]:
    from agent_session_monitor import cli, monitor_cli
    from agent_session_monitor.web import server as web

    found = {"main.py": monitor_cli.build_parser(), "scripts/cli.py": cli.build_parser(),
             "scripts/webserver.py": web.build_parser()}
    return found


def options_of(parser: argparse.ArgumentParser, prefix: str) -> dict[str, list[str]]:
    """``{'main.py': ['--log-path', ...], 'scripts/cli.py show': [...], ...}``"""
    result = {prefix: []}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                result.update(options_of(sub, f"{prefix} {name}"))
        elif action.option_strings and action.dest != "help":
            result[prefix].append(max(action.option_strings, key=len))
    return result


class HigressAdvice(unittest.TestCase):
    """What the docs tell users to configure matches the plugin (input-format.md, "What
    the plugin really writes"): the default length limit is 10 MiB, and the consumer is
    only logged through a custom attribute."""

    def test_no_doc_lowers_the_value_length_limit(self):
        for name in ("README.md", "QUICKSTART.zh-CN.md"):
            text = (ROOT / name).read_text(encoding="utf-8")
            for value in re.findall(r"value_length_limit:\s*(\d+)", text):
                self.assertGreaterEqual(int(value), 10485760, name)

    def test_the_consumer_attribute_is_documented_as_the_plugin_reads_it(self):
        self.assertRegex(README, r"key: consumer, value_source: request_header, "
                                 r"value: x-mse-consumer, apply_to_log: true")
        self.assertIn("ignores an\n   `attributes` list", README)


class ReadmeCoversEveryOption(unittest.TestCase):
    def test_every_command_and_option_is_documented(self):
        missing = []
        for prog, parser in parsers().items():
            for command, options in options_of(parser, prog).items():
                words = command.split()
                if len(words) > 1 and not re.search(rf"\b{re.escape(words[-1])}\b", README):
                    missing.append(f"command {command}")
                for option in options:
                    if not re.search(rf"`{re.escape(option)}[ `=\]]", README) and \
                            f"{option} " not in README and f"`{option}`" not in README:
                        missing.append(f"{command} {option}")
        self.assertEqual(missing, [], "README.md does not mention: " + ", ".join(missing))


SKILL = (ROOT / "SKILL.md").read_text(encoding="utf-8")


def shows_something(command: str, stdout: str) -> str | None:
    """None when a documented command's output shows data on the bundled example; else
    what is wrong with it. A newcomer copying it must not see an empty table."""
    if re.search(r"(^| )(-q|--quiet)( |$)", command) or " --follow" in command:
        return None   # quiet on purpose
    if not stdout.strip():
        return "no output"
    for empty in ("(no sessions)", "(no rounds)", "(none)\n-"):
        if empty in stdout:
            return f"prints {empty!r}"
    totals = [line for line in stdout.splitlines() if line.startswith("TOTAL")]
    if totals and not re.search(r"[1-9]", totals[-1]):
        return "a TOTAL of zeros"
    return None


def skill_commands() -> list[str]:
    """SKILL.md's commands: in code blocks and in the question table's backticks."""
    found = []
    for line in readme_commands(SKILL):
        found.append(line)
    for match in re.finditer(r"`(python3 (?:main\.py|scripts/)[^`]+)`", SKILL):
        found.append(match.group(1))
    return found


def readme_commands(text: str = README) -> list[str]:
    """The commands in README.md's code blocks that run this project's entry points."""
    commands, in_block = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):   # SKILL.md's blocks are indented in a list
            in_block = not in_block
            continue
        text = line.strip()
        if in_block and text.startswith("$ "):
            text = text[2:]
        if in_block and text.startswith("python3 ") and "#" not in text.split()[1]:
            commands.append(text.split("  #")[0].strip())
    return commands


class SecurityTableNamesRealTests(unittest.TestCase):
    def test_every_test_the_security_section_cites_exists(self):
        """README's "What is defended" table is the proof list: a renamed or deleted
        test must not leave it pointing at nothing."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        start = readme.index("### What is defended")
        section = readme[start:readme.index("\n## ", start)]
        rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
        self.assertGreaterEqual(len(rows), 14)
        self.assertEqual([int(r.split("|")[1]) for r in rows], list(range(1, len(rows) + 1)))
        sources = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py")}
        for row in rows:
            cited = re.findall(r"`(test_\w+?)(\.py)?`", row)
            self.assertTrue(cited, row[:60])
            for name, is_module in cited:
                if is_module:
                    self.assertIn(name + ".py", sources, row[:60])
                else:
                    self.assertTrue(any(f"def {name}(" in src for src in sources.values()),
                                    f"README cites {name}, which no test defines")


class ReadmeCommandsRun(TempDirTest):
    """Each README command is run in a scratch copy of the checkout, with the bundled
    example in place of /var/log and a real session id in place of SESSION_ID."""

    SLOW_OR_RECURSIVE = ("tests/run.py", "tests/bench.py", "../shared/", "pip install")

    def setUp(self) -> None:
        super().setUp()
        self.work = self.tmp / "checkout"
        self.work.mkdir()
        for name in ("main.py", "scripts", "agent_session_monitor", "tests"):
            os.symlink(ROOT / name, self.work / name)
        # A copy, not a link: the monitor only reads logs whose real path is allowed.
        shutil.copytree(ROOT / "example", self.work / "example")
        code = subprocess.run([sys.executable, "main.py", "--log-path", "example/access.log",
                               "--output-dir", "sessions", "-q"], cwd=self.work).returncode
        self.assertEqual(code, 0)

    def substitute(self, command: str) -> str:
        command = command.replace("/var/log/proxy/access.log", "example/access.log")
        command = command.replace("/var/lib/agent-sessions", "sessions")
        # Never reach out of this machine from a test: webhooks go to a closed local port.
        command = re.sub(r"--alert-webhook https?://\S+", "--alert-webhook http://127.0.0.1:9/hook",
                         command)
        for placeholder in ("SESSION_ID", "会话ID"):
            command = command.replace(placeholder, "agent:main:telegram:direct:3058755736454904720")
        return command

    def test_every_readme_command_runs(self):
        commands = readme_commands()
        self.assertGreater(len(commands), 15)
        self.run_commands(commands)

    def test_every_skill_command_shows_something_on_the_example(self):
        commands = skill_commands()
        self.assertGreater(len(commands), 10)
        self.run_commands(commands)

    def run_commands(self, commands: list[str]) -> None:
        for command in commands:
            if any(s in command for s in self.SLOW_OR_RECURSIVE):
                continue
            with self.subTest(command=command):
                for part in self.substitute(command).split(" && "):
                    argv = shlex.split(part)
                    if argv[1] == "scripts/webserver.py":
                        self.assert_server_starts(argv)
                        continue
                    if "--follow" in argv:
                        continue   # runs until stopped: covered by tests/test_faults.py
                    proc = subprocess.run([sys.executable, *argv[1:]], cwd=self.work,
                                          capture_output=True, text=True, timeout=60,
                                          env={**os.environ, "AGENT_SESSION_MONITOR_LINK_SECRET": ""})
                    self.assertEqual(proc.returncode, 0, f"{part}: {proc.stderr.strip()}")
                    problem = shows_something(part, proc.stdout)
                    self.assertIsNone(problem, f"{part}: {problem}:\n{proc.stdout[:2000]}")

    def assert_server_starts(self, argv: list[str]) -> None:
        argv = [a for a in argv]
        if "--port" in argv:
            argv[argv.index("--port") + 1] = "0"
        else:
            argv += ["--port", "0"]
        proc = subprocess.Popen([sys.executable, *argv[1:]], cwd=self.work, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = proc.stdout.readline()
            self.assertIn("http://127.0.0.1:", line, proc.stderr.read() if proc.poll() else line)
        finally:
            proc.kill()
            proc.communicate()


class Demo(unittest.TestCase):
    def test_demo_script_runs_the_whole_tour(self):
        if not shutil.which("bash"):
            self.skipTest("bash is not installed")
        proc = subprocess.run(["bash", str(ROOT / "example" / "demo.sh")], capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "DEMO_SERVE_SECONDS": "0", "DEMO_PORT": "0"})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for expected in ("rounds stored in 8 sessions", "Model Statistics", "Daily Statistics",
                         "Wrote JSON report", "/session?id=", "UI is up"):
            self.assertIn(expected, proc.stdout)
