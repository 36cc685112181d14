"""main.py --keep: session files idle longer than DURATION are removed, while every report
over the pruned period stays the same; a pruned round the log brings back is never
counted twice nor resurrected; SIGKILL anywhere in a prune converges."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent_session_monitor.fmt import plural
from tests.helpers import ROOT, TempDirTest, assert_store_files_known, load_store, write_lines
from tests import loggen

from agent_session_monitor.web import views
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.store.index import INDEX_NAME
from agent_session_monitor.store.pruned_archive import ARCHIVE_NAME
from agent_session_monitor.reports.reader import StoreReader
from agent_session_monitor.web.routes import WebApp

NOW = datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cli(out_dir: Path, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["--data-dir", str(out_dir), *argv], out=out, err=err)
    return code, out.getvalue()


def reports(out_dir: Path) -> dict:
    """Everything that must not change when old sessions are pruned."""
    first = "2026-01-01"
    days = (NOW.date() - datetime.fromisoformat(first).date()).days + 1
    found = {}
    for name, argv in (("date", ["stats-date", "--days", str(days)]),
                       ("date_json", ["--json", "stats-date", "--days", str(days)]),
                       ("model", ["stats-model"]), ("model_json", ["--json", "stats-model"]),
                       ("consumer", ["stats-consumer"]),
                       ("consumer_old", ["--json", "stats-consumer", "--until", iso(NOW - timedelta(days=60))])):
        code, text = cli(out_dir, *argv)
        assert code == 0, (name, text)
        found[name] = text
    reader = StoreReader.open(out_dir, progress=False)
    try:
        data = views.overview_data(reader, days=366)
    finally:
        reader.close()
    data.pop("as_of")
    found["overview"] = json.dumps(data, sort_keys=True, default=str)
    body = WebApp(out_dir, max_lag=0).handle("GET", "/metrics", {"Host": "127.0.0.1:0"}).body
    found["metrics"] = "\n".join(line for line in body.decode().split("\n")
                                 if line.startswith(("asm_tokens", "asm_cost", "asm_rounds",
                                                     "asm_unpriced", "asm_tool", "asm_sessions")))
    return found


class Retention(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        # Three ages: long ago, two months ago, yesterday. --keep 30d prunes the first two.
        self.old_start = NOW - timedelta(days=200)
        lines = []
        for seed, start in ((1, self.old_start), (2, NOW - timedelta(days=61)),
                            (3, NOW - timedelta(days=1))):
            lines += loggen.generate(seed=seed, sessions=12, max_requests=8, start=iso(start),
                                     unsessioned_every=6).lines
        write_lines(self.log, lines, "wb")
        self.assertEqual(self.main()[0], 0)

    def main(self, *extra: str, out: Path | None = None) -> tuple[int, str, str]:
        argv = [sys.executable, str(ROOT / "main.py"), "--log-path", str(self.log),
                "--output-dir", str(out or self.out), "--allow-log-dir", str(self.tmp), *extra]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr

    def files(self, out: Path | None = None) -> set[str]:
        return {n for n in os.listdir(out or self.out) if n.endswith(".json") and not n.startswith(".")}

    def test_prune_removes_old_files_and_every_report_is_unchanged(self):
        before, files_before = reports(self.out), self.files()
        docs = load_store(self.out)
        cutoff = iso(NOW - timedelta(days=30))
        old = {k for k, d in docs.items() if d["updated_at"] < cutoff}
        self.assertTrue(old and len(old) < len(docs))
        code, out, err = self.main("--keep", "30d")
        self.assertEqual(code, 0, err)
        self.assertIn(f"Pruned {plural(len(old), 'session')} (", out)
        after_docs = load_store(self.out)
        self.assertEqual(set(after_docs), set(docs) - old)
        assert_store_files_known(self, self.out)    # .pruned.sqlite is one of them
        self.assertLess(len(self.files()), len(files_before))
        self.assertEqual(reports(self.out), before)
        # The pruned conversations are gone from listings and show.
        code, listing = cli(self.out, "--json", "list", "--limit", "1000")
        listed = {s["session_id"] for s in json.loads(listing)["sessions"]} \
            if listing.lstrip().startswith("{") else {s["session_id"] for s in json.loads(listing)}
        self.assertEqual(listed & {k for k in old if k}, set())
        some_old = next(k for k in old if k)
        self.assertNotEqual(cli(self.out, "show", some_old)[0], 0)
        # A second prune has nothing to do and changes nothing.
        code, out, _ = self.main("--keep", "30d")
        self.assertNotIn("Pruned", out)
        self.assertEqual(reports(self.out), before)

    def test_index_rebuilt_or_lost_still_holds_the_pruned_totals(self):
        before = reports(self.out)
        self.main("--keep", "30d")
        code, _out, err = self.main("--rebuild-index")
        self.assertEqual(code, 0, err)
        self.assertEqual(reports(self.out), before)
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.out / INDEX_NAME) + suffix).unlink(missing_ok=True)
        self.assertEqual(reports(self.out), before)   # readers index files + archive in memory
        self.main()                                     # the monitor rebuilds it on disk
        self.assertTrue((self.out / INDEX_NAME).exists())
        self.assertEqual(reports(self.out), before)

    def test_re_reading_the_log_after_a_prune_counts_nothing_twice_and_resurrects_nothing(self):
        before = reports(self.out)
        self.main("--keep", "30d")
        files = self.files()
        for name in (".state.json", ".state.json.bak"):
            (self.out / name).unlink()
        code, out, err = self.main("--reset-from", "beginning")
        self.assertEqual(code, 0, err)
        self.assertIn(" 0 rounds stored", out)
        self.assertEqual(self.files(), files)
        self.assertEqual(reports(self.out), before)
        state = json.loads((self.out / ".state.json").read_text())
        self.assertGreater(state["counters"]["duplicates_skipped"], 0)

    def test_a_pruned_session_that_continues_keeps_old_totals_and_adds_only_new_rounds(self):
        docs = load_store(self.out)
        cutoff = iso(NOW - timedelta(days=30))
        sid = next(k for k, d in docs.items() if k and d["updated_at"] < cutoff)
        old_rounds = len(docs[sid]["rounds"])
        self.main("--keep", "30d")
        total_before = self.total_rounds()
        new = {"ai_log": json.dumps({"model": "gpt-4o-2024-08-06", "input_token": 77,
                                     "output_token": 5, "session_id": sid}),
               "request_id": "continued-1", "start_time": iso(NOW - timedelta(hours=1))}
        write_lines(self.log, [json.dumps(new).encode() + b"\n"])
        for name in (".state.json", ".state.json.bak"):   # and everything is read again
            (self.out / name).unlink()
        self.assertEqual(self.main("--reset-from", "beginning")[0], 0)
        doc = load_store(self.out)[sid]
        self.assertEqual(len(doc["rounds"]), 1, "only the new round: the old ones were pruned")
        self.assertEqual(doc["rounds"][0]["input_tokens"], 77)
        self.assertEqual(self.total_rounds(), total_before + 1)
        self.assertGreater(old_rounds, 0)
        # Pruned again later, both parts stay counted once.
        self.main("--keep", "1m")
        self.assertEqual(self.total_rounds(), total_before + 1)

    def total_rounds(self) -> int:
        reader = StoreReader.open(self.out, progress=False)
        try:
            return reader.totals()["rounds"]
        finally:
            reader.close()

    def test_focus_export_of_a_pruned_period_still_bills_it(self):
        def billed(granularity: str) -> float:
            code, text = cli(self.out, "export", "-", "--format", "focus",
                             "--granularity", granularity)
            import csv
            return sum(float(r["BilledCost"]) for r in csv.DictReader(io.StringIO(text)))
        before = (billed("day"), billed("round"))
        self.main("--keep", "30d")
        after = (billed("day"), billed("round"))
        self.assertAlmostEqual(after[0], before[0], places=9)
        self.assertAlmostEqual(after[1], before[1], places=9)

    def test_bad_durations_are_one_line_usage_errors(self):
        for bad in ("0d", "30", "-5d", "1y", "", "99999999d"):
            code, _out, err = self.main("--keep", bad)
            self.assertEqual(code, 2, (bad, err))
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertNotIn("Traceback", err)

    def test_a_pruned_conversation_leaves_no_searchable_text_in_the_index(self):
        # The relabelled index rows kept the session's full-text row: its questions and
        # answers stayed in .index.sqlite after the file was gone.
        import sqlite3
        from agent_session_monitor.store import fulltext
        if not fulltext.available():
            self.skipTest("this Python's SQLite has no FTS5")
        # The full-text rows of those sessions (one per round, fulltext.ROUNDS maps them).
        old_sids = (f"SELECT rowid FROM {fulltext.ROUNDS} WHERE sid IN "
                    "(SELECT sid FROM sessions WHERE updated_at < ?)")
        cutoff = iso(NOW - timedelta(days=30))
        db = sqlite3.connect(self.out / INDEX_NAME)
        try:
            before = db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE} WHERE rowid IN "
                                f"({old_sids})", (cutoff,)).fetchone()[0]
            kept = db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE} WHERE rowid NOT IN "
                              f"({old_sids})", (cutoff,)).fetchone()[0]
        finally:
            db.close()
        self.assertGreater(before, 0)
        self.assertEqual(self.main("--keep", "30d")[0], 0)
        db = sqlite3.connect(self.out / INDEX_NAME)
        try:
            pruned = db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE} WHERE rowid IN (SELECT "
                                f"rowid FROM {fulltext.ROUNDS} WHERE sid IN (SELECT sid FROM "
                                "sessions WHERE file LIKE '.pruned/%'))").fetchone()[0]
            left = db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE}").fetchone()[0]
        finally:
            db.close()
        self.assertEqual((pruned, left), (0, kept))

    def test_a_keep_longer_than_the_calendar_is_a_usage_error_not_an_internal_error(self):
        # 999999w, 999999d: "now - keep" falls before year 1 (OverflowError).
        for bad in ("999999w", "999999d", "150000w"):
            code, _out, err = self.main("--keep", bad)
            self.assertEqual(code, 2, (bad, err))
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertNotIn("internal error", err)
        before = self.files()
        code, out, err = self.main("--keep", "366000d")   # 1,000 years: keeps everything
        self.assertEqual(code, 0, err)
        self.assertNotIn("Pruned", out)
        self.assertEqual(self.files(), before)


# A prune killed at each of its steps: the wrapper runs main.py's main() with one step
# replaced by "do it, then die as SIGKILL would" (os._exit: no cleanup, no flush).
KILLER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from agent_session_monitor.store import retention
import pathlib
step, nth = sys.argv[2], int(sys.argv[3])
calls = {"n": 0}
if step == "unlink":
    original = pathlib.Path.unlink
    def dying(self, *a, **k):
        original(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == nth:
            os._exit(9)
    pathlib.Path.unlink = dying
elif step.startswith("before:"):
    def dying(*a, **k):
        os._exit(9)
    setattr(retention, step[len("before:"):], dying)
else:
    original = getattr(retention, step)
    def dying(*a, **k):
        result = original(*a, **k)
        calls["n"] += 1
        if calls["n"] == nth:
            os._exit(9)
        return result
    setattr(retention, step, dying)
from agent_session_monitor.monitor_cli import main
sys.exit(main(sys.argv[4:]))
"""


class PruneCrashes(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        lines = loggen.generate(seed=9, sessions=60, max_requests=4,
                                start=iso(NOW - timedelta(days=100))).lines
        lines += loggen.generate(seed=10, sessions=5, max_requests=4,
                                 start=iso(NOW - timedelta(days=1))).lines
        write_lines(self.log, lines, "wb")
        self.base = self.tmp / "base"
        self.argv = ["--log-path", str(self.log), "--allow-log-dir", str(self.tmp), "-q"]
        subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv, "--output-dir",
                        str(self.base)], check=True, timeout=120)
        self.before = reports(self.base)
        self.old = {k for k, d in load_store(self.base).items()
                    if d["updated_at"] < iso(NOW - timedelta(days=30))}

    def check_converged(self, out: Path, label: str) -> None:
        # Readers are consistent even before anything finishes the prune...
        self.assertEqual(reports(out), self.before, f"{label}: reports changed before recovery")
        # ...and the next monitor run (or prune) finishes it.
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv,
                               "--output-dir", str(out), "--keep", "30d"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(reports(out), self.before, label)
        self.assertEqual(set(load_store(out)), set(load_store(self.base)) - self.old, label)
        from agent_session_monitor.store.pruned_archive import Archive
        archive = Archive(out)
        try:
            entries = list(archive.entries())
        finally:
            archive.close()
        self.assertTrue(all(done for _i, _n, done, _d in entries), label)
        self.assertEqual(len({n for _i, n, _d, _doc in entries}), len(entries), label)
        # And a full re-read afterwards counts nothing twice.
        for name in (".state.json", ".state.json.bak"):
            (out / name).unlink()
        subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv, "--output-dir",
                        str(out), "--reset-from", "beginning"], check=True, timeout=120)
        self.assertEqual(reports(out), self.before, f"{label}: after a re-read")

    def test_sigkill_after_each_step_of_a_prune_converges(self):
        for step, nth in (("_relabel", 1), ("_unlink", 1), ("unlink", 7), ("_mark_done", 1)):
            out = self.tmp / f"kill-{step}-{nth}"
            shutil.copytree(self.base, out)
            with self.subTest(step=step, nth=nth):
                proc = subprocess.run([sys.executable, "-c", KILLER, str(ROOT), step, str(nth),
                                       *self.argv, "--output-dir", str(out), "--keep", "30d"],
                                      capture_output=True, text=True, timeout=120)
                self.assertEqual(proc.returncode, 9, proc.stderr)
                self.check_converged(out, f"killed after {step} #{nth}")

    def test_a_monitor_run_without_keep_finishes_a_killed_prune_before_writing(self):
        out = self.tmp / "killed-early"
        shutil.copytree(self.base, out)
        proc = subprocess.run([sys.executable, "-c", KILLER, str(ROOT), "before:_relabel", "1",
                               *self.argv, "--output-dir", str(out), "--keep", "30d"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 9, proc.stderr)
        self.assertEqual(set(load_store(out)), set(load_store(self.base)))   # nothing removed yet
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv,
                               "--output-dir", str(out)], capture_output=True, text=True,
                              timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("interrupted prune", proc.stderr)
        self.assertEqual(set(load_store(out)), set(load_store(self.base)) - self.old)
        self.check_converged(out, "monitor finished the prune")

    def test_sigkill_at_random_moments_of_a_prune_converges(self):
        rng = random.Random(18)
        started = time.monotonic()
        probe = self.tmp / "probe"
        shutil.copytree(self.base, probe)
        subprocess.run([sys.executable, str(ROOT / "main.py"), *self.argv, "--output-dir",
                        str(probe), "--keep", "30d"], check=True, timeout=120)
        whole = time.monotonic() - started
        for i in range(4):
            out = self.tmp / f"random-{i}"
            shutil.copytree(self.base, out)
            proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *self.argv,
                                     "--output-dir", str(out), "--keep", "30d"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 1.0) * whole)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            self.check_converged(out, f"random kill {i}")


if __name__ == "__main__":
    unittest.main()
