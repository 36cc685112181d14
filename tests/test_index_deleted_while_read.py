"""The index deleted while a reader has it open: the next run rebuilds it, and a
follower rebuilds it at its next pass, with every round and the pricing epoch.

main.py's own error message calls the index derived data ("delete it and it is
rebuilt"). A cold attacker deleted it while webserver.py served the store: SQLite took
the -wal/-shm the reader kept for the new file's, every run exited 1 ("disk I/O
error") and nothing was billed until the server was restarted; /metrics, once it came
back, showed the costs under pricing_epoch 0 with a lower value than that series had
(Prometheus counts a reset). A --follow monitor went on writing to the deleted file, which
no reader sees, while its commit process started a partial one at the path.

The reader here is webserver.py itself, serving /metrics (its cost counters must never
go down, and stay in the pricing epoch the state keeps)."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from tests.helpers import ROOT, TempDirTest, make_line, stored_inputs, write_lines

def index_rows(out: Path) -> tuple[int, int, str | None]:
    """(sessions, rounds, pricing epoch) the index file at the path holds."""
    db = sqlite3.connect(f"file:{out / '.index.sqlite'}?mode=ro", uri=True)
    try:
        sessions, rounds = db.execute("SELECT count(*), sum(rounds) FROM sessions").fetchone()
        epoch = db.execute("SELECT value FROM meta WHERE key = 'pricing_epoch'").fetchone()
        return sessions, rounds or 0, epoch[0] if epoch else None
    finally:
        db.close()


class IndexDeletedWhileRead(TempDirTest):
    def setUp(self):
        super().setUp()
        self.log = self.tmp / "access.log"
        # 200 rounds in 50 sessions: a reprice's writes large enough to stay in the -wal
        # the server keeps (with 10 the old code got through)
        write_lines(self.log, [make_line(n, session=f"s{n % 50}") for n in range(1, 201)])
        self.argv = ["--log-path", str(self.log), "--output-dir", str(self.out),
                     "--allow-log-dir", str(self.tmp), "-q"]
        self.assertEqual(self.main(), 0)
        self.serve()   # reading while the monitor writes
        # A cheaper price: the reprice lowers costs and starts pricing epoch 1.
        prices = self.tmp / "prices.json"
        prices.write_text(json.dumps({"gpt-4o": {"input": 0.5, "output": 1}}))
        self.assertEqual(self.main("--reprice", "--pricing", str(prices)), 0)
        self.assertEqual(index_rows(self.out)[2], "1")
        self.before = self.scrape()
        self.assertTrue(all('pricing_epoch="1"' in k for k in self.before if "cost" in k),
                        self.before)

    def assertNoCounterWentDown(self) -> None:
        after = self.scrape()
        for name, value in self.before.items():
            self.assertGreaterEqual(after.get(name, value), value, (name, after))
        self.assertTrue(all('pricing_epoch="1"' in k for k in after if "cost" in k), after)

    def main(self, *extra: str) -> int:
        """main.py as a user runs it (a process of its own, as the reader's is)."""
        run = subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv, *extra],
                             capture_output=True, text=True, timeout=120)
        self.last_err = run.stderr
        return run.returncode

    def serve(self) -> None:
        """webserver.py on the store, as a user leaves it running (its reads are the
        ones SQLite has to agree with)."""
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            self.port = free.getsockname()[1]
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "webserver.py"),
                                 "--data-dir", str(self.out), "--port", str(self.port),
                                 "--max-lag", "0", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.terminate(), proc.wait(timeout=30)))
        deadline = time.monotonic() + 60
        while True:
            try:
                self.scrape()
                return
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the web server never answered")
                time.sleep(0.1)

    def scrape(self) -> dict[str, float]:
        """/metrics' cost and round samples: 'name{labels}' -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("asm_cost_usd_total{", "asm_rounds_total{"))}

    def test_the_next_run_rebuilds_it_with_the_pricing_epoch(self):
        (self.out / ".index.sqlite").unlink()
        self.assertTrue((self.out / ".index.sqlite-wal").exists())   # the server's, kept
        self.assertEqual(self.main("--rebuild-index"), 0, self.last_err)
        self.assertEqual(index_rows(self.out), (50, 200, "1"))
        self.assertNoCounterWentDown()
        (self.out / ".index.sqlite").unlink()
        write_lines(self.log, [make_line(n, session=f"s{n % 50}") for n in range(201, 211)])
        self.assertEqual(self.main(), 0, self.last_err)
        self.assertEqual(index_rows(self.out), (50, 210, "1"))
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, 211)])
        self.assertNoCounterWentDown()

    def test_a_follower_rebuilds_it_at_its_next_pass(self):
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               allowed_log_dirs=[self.tmp])
        err = io.StringIO()
        with Monitor(config, err=err) as monitor:
            monitor.poll_once()
            for step in range(3):   # deleted again and again, lines in between
                (self.out / ".index.sqlite").unlink()
                first = 201 + 10 * step
                write_lines(self.log, [make_line(n, session=f"s{n % 60}")
                                       for n in range(first, first + 10)])
                monitor.poll_once()
                self.assertTrue((self.out / ".index.sqlite").exists(), step)
                sessions, rounds, epoch = index_rows(self.out)
                self.assertEqual((rounds, epoch), (first + 9, "1"), (step, err.getvalue()))
                self.assertNoCounterWentDown()
        self.assertIn("was deleted or replaced: rebuilt from the session files", err.getvalue())
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, 231)])
