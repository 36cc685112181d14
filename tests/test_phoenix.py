"""A real Arize Phoenix server receives the export (tools/install_test_deps.sh installs it
into .venv-test/phoenix; ASM_PHOENIX_PYTHON names another python that has arize-phoenix).

Phoenix runs on 127.0.0.1 with a temporary working directory, telemetry and external
downloads off. A generated log (tests/loggen.py) is exported, and the spans are read back
through Phoenix's REST API: every round present once, with the token counts and session
ids of the ground truth, also after Phoenix was stopped in the middle of an export and
started again on the same database."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from tests.helpers import ROOT, require_tool, venv_python, write_lines
from tests.loggen import generate

from agent_session_monitor.otel.outbox import ExportConfig, Exporter
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.otel.spans import resource_attributes

START_TIMEOUT = 180.0      # a cold start migrates a new database: ~15 s here, CI is slower


def phoenix_python() -> str | None:
    return venv_python("ASM_PHOENIX_PYTHON", "phoenix", "phoenix.server.main")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phoenix:
    """One ``phoenix serve`` process on a fixed working directory and port."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.python, self.workdir = python, workdir
        self.port, self.grpc_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
        env.update(PHOENIX_WORKING_DIR=str(self.workdir), PHOENIX_HOST="127.0.0.1",
                   PHOENIX_PORT=str(self.port), PHOENIX_GRPC_PORT=str(self.grpc_port),
                   PHOENIX_TELEMETRY_ENABLED="false", PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
                   PHOENIX_AGENTS_DISABLE_BASH="true", PYTHONUNBUFFERED="1")
        self.starts += 1
        log = open(self.workdir / f"phoenix-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([self.python, "-m", "phoenix.server.main", "serve"],
                                     cwd=self.workdir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"phoenix exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"phoenix did not answer /healthz in {START_TIMEOUT:.0f}s:\n"
                             f"{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it as systemd would. SIGTERM drains its insert queue for 5 s only
        (BulkInserter's shutdown_drain_sec), then drops what is left: spans it answered
        200 for (it queues them after the answer) but had not written yet."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        text = (self.workdir / f"phoenix-{self.starts}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-40:])

    def spans(self, project: str) -> list[dict]:
        """Every span of ``project`` through the REST API, page by page."""
        out, cursor = [], None
        while True:
            url = f"{self.url}/v1/projects/{quote(project)}/spans?limit=1000"
            if cursor:
                url += "&cursor=" + quote(cursor)
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    page = json.load(r)
            except urllib.error.HTTPError as e:
                if e.code == 404 and not out:   # no span yet: no project yet
                    return []
                raise
            out += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def wait_for_spans(self, project: str, n: int, timeout: float = 120.0) -> list[dict]:
        """Phoenix answers 200 before its bulk inserter has written: wait until ``n``
        spans are readable (and a moment more, to catch any extra)."""
        deadline = time.monotonic() + timeout
        spans: list[dict] = []
        while time.monotonic() < deadline:
            spans = self.spans(project)
            if len(spans) >= n:
                time.sleep(1.0)
                return self.spans(project)
            time.sleep(0.5)
        return spans


class Gate:
    """A TCP forwarder in front of Phoenix. ``close()`` cuts the exporter off (a new
    connection is accepted and closed at once: a dead endpoint) while Phoenix runs on, so
    the test can let it write everything it acknowledged before stopping it."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = threading.Event()
        self.open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.open.clear()

    def shut(self) -> None:
        self.open.clear()
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self.open.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=30)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=self._pipe, args=(conn, up), daemon=True).start()

    @staticmethod
    def _pipe(conn: socket.socket, up: socket.socket) -> None:
        peer = {conn: up, up: conn}
        with conn, up:
            live = [conn, up]
            try:
                while live:
                    readable, _, _ = select.select(live, [], [], 60)
                    if not readable:
                        return
                    for s in readable:
                        data = s.recv(65536)
                        if data:
                            peer[s].sendall(data)
                        else:
                            live.remove(s)
                            peer[s].shutdown(socket.SHUT_WR)
            except OSError:
                return


def truth(events) -> Counter:
    """What each unique round must look like in Phoenix."""
    seen, out = set(), Counter()
    for e in events:
        if e.request_id is not None:
            if e.request_id in seen:
                continue
            seen.add(e.request_id)
        # The normalised columns (tokens.py): input with its cache, output with reasoning.
        out[(e.session_id, e.request_id, e.input_total, e.output_total, e.cached_tokens,
             e.reasoning_tokens, e.cache_write_tokens, e.model)] += 1
    return out


def observed(spans: list[dict]) -> Counter:
    out = Counter()
    for span in spans:
        a = span["attributes"]
        out[(a.get("session.id"), a.get("agent_session_monitor.request_id"),
             a["llm.token_count.prompt"], a["llm.token_count.completion"],
             a["llm.token_count.prompt_details.cache_read"],
             a["llm.token_count.completion_details.reasoning"],
             a["llm.token_count.prompt_details.cache_write"], a.get("llm.model_name"))] += 1
        # The GenAI copy says the same.
        assert a["gen_ai.usage.input_tokens"] == a["llm.token_count.prompt"], a
        assert a.get("gen_ai.conversation.id") == a.get("session.id"), a
    return out


class PhoenixExport(unittest.TestCase):
    python: str | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.python = phoenix_python()
        if cls.python is None:
            return
        base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
        os.makedirs(base, exist_ok=True)
        cls.tmp = Path(tempfile.mkdtemp(prefix="phoenix-", dir=base))
        cls.phoenix = Phoenix(cls.python, cls.tmp / "phoenix")
        cls.phoenix.workdir.mkdir()
        try:
            cls.phoenix.start()
        except BaseException:
            shutil.rmtree(cls.tmp, True)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.python is not None:
            cls.phoenix.stop()
            shutil.rmtree(cls.tmp, True)

    def setUp(self) -> None:
        require_tool(self, "arize-phoenix (tools/install_test_deps.sh, or ASM_PHOENIX_PYTHON)",
                     found=self.python is not None)
        self.dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.tmp))
        self.err = io.StringIO()

    def export(self, gen, project: str, url: str | None = None,
               **options) -> tuple[Monitor, Exporter]:
        log = self.dir / "access.log"
        write_lines(log, gen.lines)
        monitor = Monitor(MonitorConfig(log_paths=[str(log)], output_dir=self.dir / "out",
                                        checkpoint_bytes=50_000), err=self.err, progress=False)
        monitor.__enter__()
        self.addCleanup(monitor.__exit__, None, None, None)
        resource = resource_attributes("agent-session-monitor",
                                       {"openinference.project.name": project})
        exporter = Exporter(monitor, ExportConfig(endpoint=(url or self.phoenix.url) + "/v1/traces",
                                                  resource=resource, **options))
        exporter.start()
        return monitor, exporter

    def test_every_round_once_with_its_tokens_and_session(self):
        gen = generate(seed=11, sessions=40, max_requests=12, unsessioned_every=11,
                       duplicate_every=17)
        expected = truth(gen.events)
        monitor, exporter = self.export(gen, "default")
        stats = monitor.poll_once()
        exporter.close(flush_seconds=60)
        self.assertEqual(stats.rounds, sum(expected.values()))
        self.assertEqual(exporter.rows, 0, self.err.getvalue())
        spans = self.phoenix.wait_for_spans("default", stats.rounds)
        self.assertEqual(len(spans), stats.rounds)
        self.assertEqual(len({s["context"]["span_id"] for s in spans}), stats.rounds)
        self.assertEqual(observed(spans), expected)
        self.assertTrue(all(s["span_kind"] == "LLM" for s in spans))
        sessions = {s["attributes"].get("session.id") for s in spans}
        self.assertEqual(sessions, {e.session_id for e in gen.events})

    def test_phoenix_stopped_mid_export_and_restarted(self):
        gen = generate(seed=12, sessions=60, max_requests=15, unsessioned_every=13)
        expected = truth(gen.events)
        project = "asm-restart"
        gate = Gate(self.phoenix.port)
        self.addCleanup(gate.shut)
        # Small batches: the export takes many requests, so the outage lands in the middle.
        monitor, exporter = self.export(gen, project, url=gate.url, batch_spans=5, timeout=5.0)
        stats = monitor.poll_once()
        deadline = time.monotonic() + 60
        while exporter.counters["sent"] < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The endpoint goes dead mid-export. Phoenix answers 200 before it writes and a
        # SIGTERM drops what its 5 s drain has not written (Phoenix.stop), a loss no
        # exporter can see; so it is stopped only once it holds every span it answered
        # for. A failed attempt after the cut means the batch in flight was counted.
        failed = exporter.counters["failed_attempts"]
        gate.close()
        while exporter.counters["failed_attempts"] == failed and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreater(exporter.counters["failed_attempts"], failed)
        left, acknowledged = exporter.rows, exporter.counters["sent"]
        self.assertGreater(left, 0, "the export finished before the outage: make it longer")
        self.assertEqual(left + acknowledged, stats.rounds)
        # Phoenix holds each span it answered for, once (and may hold a batch whose
        # answer came after our timeout: it is sent again and stored once).
        before = self.phoenix.wait_for_spans(project, acknowledged)
        self.assertGreaterEqual(len(before), acknowledged)
        self.assertEqual(len({s["context"]["span_id"] for s in before}), len(before))
        self.phoenix.stop()
        time.sleep(2)                                 # failed attempts while it is down
        self.assertEqual(exporter.rows, left)         # nothing dropped, nothing lost
        self.phoenix.start()                          # same database, same port
        gate.open.set()
        exporter.close(flush_seconds=120)
        self.assertEqual(exporter.rows, 0, self.err.getvalue())
        spans = self.phoenix.wait_for_spans(project, stats.rounds)
        self.assertEqual(len(spans), stats.rounds)
        self.assertEqual(len({s["context"]["span_id"] for s in spans}), stats.rounds)
        self.assertEqual(observed(spans), expected)
        # The exporter sent each span once: the outage cost retries, not duplicates.
        self.assertEqual(exporter.counters["sent"], stats.rounds)
        self.assertIn("works again", self.err.getvalue())


if __name__ == "__main__":
    unittest.main()
