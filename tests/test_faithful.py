"""Issue 14: faithful session files, one meaning for every token column, price provenance.

- A script written only from the original skill's README schema (tests/original_reader.py)
  reads every fixture's store and gets what ``cli.py show --json`` shows.
- Stores written by schema 1 (tests/data/legacy-schema1, made by the version before) and
  by on-disk layout 3 (tests/data/legacy-layout3) are upgraded on the next pass, and a
  SIGKILL at any point of the upgrade converges.
- Per provider shape, the token columns add up (input = uncached + cached + cache write,
  output = text + reasoning, total = input + output) in every command, page and export.
- Each round says which price data priced it; a provider's own cost is kept beside ours.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from tests.helpers import DATA, ROOT, TempDirTest, load_store
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.store.sessions import dump_document, read_document
from agent_session_monitor.store.names import file_name_for

LEGACY = DATA / "legacy-schema1"
LAYOUT3 = DATA / "legacy-layout3"   # written by main of 30 Nov 2026 09:10 UTC (layout 3)
HOST = {"Host": "127.0.0.1:8888"}


def web_app(store: Path):
    from agent_session_monitor.web.routes import WebApp

    app = WebApp(store)
    app.gate.port = 8888   # as web.py sets it once the server is bound
    return app


def session_files(store: Path) -> list[Path]:
    from agent_session_monitor.store.names import is_session_file

    return sorted(p for p in store.iterdir() if is_session_file(p.name))


def blank_as_empty(reader_output: dict) -> dict:
    """Schema 1 did not record whether an empty question / answer / reasoning was logged
    null or left out; the upgrade writes the original's default "" for both."""
    for session in reader_output.values():
        for rnd in session["rounds"]:
            for name in ("question", "answer", "reasoning"):
                if rnd[name] is None:
                    rnd[name] = ""
    return reader_output
FIXTURES = sorted(p for p in DATA.glob("*.log"))
ORIGINAL_FIELDS = ("round", "timestamp", "input_tokens", "output_tokens", "reasoning_tokens",
                   "cached_tokens", "model", "has_tool_calls", "response_type", "messages",
                   "question", "answer", "reasoning", "tool_calls", "input_token_details",
                   "output_token_details")


def cli(store: Path, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["--data-dir", str(store), *argv], out=out, err=err)
    assert code == 0, (argv, err.getvalue())
    return out.getvalue()


def original_reader(store: Path) -> dict:
    """Run the README-only script as a user would: another process, no package."""
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "original_reader.py"), str(store)],
                          capture_output=True, text=True, check=False, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class OriginalSchemaReader(TempDirTest):
    def assert_reader_matches_show(self, store: Path) -> int:
        seen = original_reader(store)
        listed = json.loads(cli(store, "list", "--limit", "0", "--json"))
        self.assertEqual(set(seen), {r["session_id"] for r in listed})
        rounds = 0
        for sid, got in seen.items():
            shown = json.loads(cli(store, "show", "--json", sid))
            with self.subTest(session=sid):
                self.assertEqual(got["messages_count"], len(shown["rounds"]))
                self.assertEqual(got["totals"], {k: shown[k] for k in got["totals"]})
                self.assertEqual(got["totals"], got["sums_of_rounds"])   # plain sums
                self.assertEqual(got["model"], shown["model"])
                for mine, theirs in zip(got["rounds"], shown["rounds"], strict=True):
                    for field, value in mine.items():
                        self.assertEqual(value, theirs[field], (theirs["round"], field))
                self.assertEqual([r["round"] for r in got["rounds"]],
                                 list(range(1, len(got["rounds"]) + 1)))
            rounds += len(got["rounds"])
        return rounds

    def test_every_fixture_read_by_the_original_schema_equals_show_json(self):
        self.assertGreaterEqual(len(FIXTURES), 3)
        shared = ROOT.parent / "shared" / "fixtures"
        if shared.is_dir():   # the copies are the contract's fixtures, byte for byte
            for src in shared.glob("*.log"):
                self.assertEqual((DATA / src.name).read_bytes(), src.read_bytes(), src.name)
        total = 0
        for log in [*FIXTURES, ROOT / "example" / "access.log"]:
            with self.subTest(log=log.name):
                out = self.tmp / f"store-{log.name}"
                code, _o, err = self.run_monitor(log, out=out,
                                                 extra=["--allow-log-dir", str(log.parent)])
                self.assertEqual(code, 0, err)
                total += self.assert_reader_matches_show(out)
        self.assertGreater(total, 35)

    def test_answers_questions_and_tool_calls_are_on_the_round_they_belong_to(self):
        code, _o, err = self.run_monitor(DATA / "higress-realistic.log")
        self.assertEqual(code, 0, err)
        seen = original_reader(self.out)
        first, second = seen["agent:main:discord:channel:1465367993012981988"]["rounds"]
        self.assertEqual(first["question"], "What's the weather in Beijing? Answer <short> & precise.")
        self.assertEqual(first["tool_calls"][0]["function"]["name"], "get_weather")
        self.assertTrue(first["has_tool_calls"])
        self.assertEqual(second["question"], '{"temp_c":15,"sky":"clear"}')
        self.assertEqual(second["answer"], "Beijing: 15°C, clear.\nEnjoy!")


def _copy_legacy(dest: Path) -> Path:
    shutil.copytree(LEGACY, dest)
    return dest


class UpgradeFromSchema1(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.legacy = _copy_legacy(self.tmp / "legacy")
        self.log = self.legacy / "access.log"

    def fresh(self) -> dict:
        # The fixture's short lines (ai_log, request_id, start_time, response_code) carry
        # their time after a raw header (X-Request-Id): declared, it is read by place, as
        # the version that wrote the old store read it; undeclared it is never used.
        code, _o, err = self.run_monitor(self.log, out=self.tmp / "fresh",
                                         extra=["--allow-log-dir", str(self.legacy),
                                                "--log-format",
                                                "ai_log,request_id,start_time,response_code"])
        self.assertEqual(code, 0, err)
        return load_store(self.tmp / "fresh")

    def test_old_store_is_rewritten_faithfully_and_equals_a_fresh_ingest(self):
        store = self.legacy / "sessions"
        before_raw = {p.name: json.loads(p.read_text()) for p in session_files(store)}
        self.assertTrue(any("answer_in_next_message" in r for d in before_raw.values()
                            for r in d["rounds"]))
        self.assertTrue(all("round" not in r for d in before_raw.values() for r in d["rounds"]))
        # Readers already see an old store whole, before any upgrade.
        shown_before = json.loads(cli(store, "show", "--json", "agent:main:discord:channel:"
                                                                "1465367993012981988"))
        self.assertEqual(shown_before["rounds"][1]["answer"], "Beijing: 15°C, clear.\nEnjoy!")
        code, out, err = self.run_monitor(self.log, out=store,
                                          extra=["--allow-log-dir", str(self.legacy)])
        self.assertEqual(code, 0, err)
        self.assertIn("upgraded 16 session files", err + out)
        self.assertIn("already-stored rounds skipped", out)
        after_raw = {p.name: json.loads(p.read_text()) for p in session_files(store)}
        self.assertEqual(set(after_raw), set(before_raw))
        for doc in after_raw.values():
            self.assertEqual(doc["schema"], 2)
            for i, rnd in enumerate(doc["rounds"]):
                for name in ORIGINAL_FIELDS:
                    self.assertIn(name, rnd, (doc["session_id"], i))
                self.assertEqual(rnd["round"], i + 1)
                self.assertFalse({"answer_in_next_message", "tool_calls_in_next_message",
                                  "question_is_last_message"} & set(rnd))
        upgraded, fresh = load_store(store), self.fresh()
        self.assertEqual(set(upgraded), set(fresh))
        compared = ("round", "timestamp", "input_tokens", "output_tokens", "reasoning_tokens",
                    "cached_tokens", "model", "has_tool_calls", "question", "answer",
                    "tool_calls", "messages", "messages_offset", "buckets", "cost_usd")
        for sid, doc in fresh.items():
            old = upgraded[sid]
            self.assertEqual(old["tokens"], doc["tokens"], sid)
            self.assertEqual(old["total_cost_usd"], doc["total_cost_usd"], sid)
            for a, b in zip(old["rounds"], doc["rounds"], strict=True):
                for name in compared:
                    x, y = a.get(name), b.get(name)
                    if name in ("question", "answer") and not x and not y:
                        continue   # null or absent: schema 1 did not say (blank_as_empty)
                    self.assertEqual(x, y, (sid, a["round"], name))
        # Gemini's cache reads, logged only as cached_content_token_count, were priced as
        # uncached input by schema 1: split again and repriced, with the table recorded.
        gem = upgraded["gemini-native-cache"]["rounds"][0]
        self.assertEqual(gem["buckets"], {"input": 3808, "cache_read": 8192, "output": 40,
                                          "reasoning": 300})
        self.assertAlmostEqual(gem["cost_usd"], (3808 * 0.3 + 8192 * 0.03 + 340 * 2.5) / 1e6, 15)
        self.assertTrue(gem["priced_by"].startswith("table:"))
        self.assertLess(gem["cost_usd"], before_raw["gemini-native-cache.json"]["rounds"][0]["cost_usd"])
        # A cost went down: /metrics' cost counters start a new pricing epoch (as after
        # --reprice), in the index and in the state (an index rebuilt goes on from it).
        db = sqlite3.connect(store / ".index.sqlite")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        db.close()
        self.assertEqual(meta.get("pricing_epoch"), "1")
        self.assertNotIn("repricing", meta)
        self.assertEqual(json.loads((store / ".state.json").read_text())["extra"]["pricing_epoch"], 1)
        # A file upgraded is what a later run writes from it: the same bytes (the
        # upgrade's defaults went to the end of each round).
        for path in session_files(store):
            self.assertEqual(dump_document(read_document(path)), path.read_bytes(), path)
        # Rounds an earlier version priced say so, until --reprice records the table.
        claude = upgraded["sess_claude_42"]
        self.assertEqual(claude["priced_by"], {"unrecorded": 1})
        self.assertIn("earlier version", cli(store, "show", "sess_claude_42"))
        # The README-only reader works on the upgraded files as on fresh ones.
        self.assertEqual(blank_as_empty(original_reader(store)),
                         blank_as_empty(original_reader(self.tmp / "fresh")))
        # A second pass has nothing to upgrade.
        code, out, err = self.run_monitor(self.log, out=store, extra=["--allow-log-dir", str(self.legacy)])
        self.assertNotIn("upgraded", out + err)

    def test_upgrade_interrupted_between_batches_converges(self):
        from agent_session_monitor.store import upgrade

        store = self.legacy / "sessions"
        real = upgrade.atomic_write_many
        calls = []

        def crash_on_second_batch(directory, items):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(5, "I/O error")   # the disk fails mid-upgrade
            return real(directory, items)

        with mock.patch.object(upgrade, "BATCH", 5), \
                mock.patch.object(upgrade, "atomic_write_many", crash_on_second_batch):
            code, _o, err = self.run_monitor(self.log, out=store,
                                             extra=["--allow-log-dir", str(self.legacy)])
        self.assertNotEqual(code, 0, err)
        self.assertEqual(len(calls), 2)
        schemas = [json.loads(p.read_text()).get("schema", 1) for p in session_files(store)]
        self.assertEqual(schemas.count(2), 5)   # the first batch landed, whole
        code, _o, err = self.run_monitor(self.log, out=store, extra=["--allow-log-dir", str(self.legacy)])
        self.assertEqual(code, 0, err)
        self.assertEqual(blank_as_empty(original_reader(store)),
                         blank_as_empty(original_reader_of_fresh(self)))
        self.assertEqual(cli(store, "stats-model", "--json"), cli(self.tmp / "fresh", "stats-model", "--json"))

    def test_sigkill_at_random_points_of_an_upgrade_converges(self):
        """200 old session files (the fixture's, under new ids), killed mid-upgrade again
        and again: every file ends at the current schema with the same content as an
        upgrade that was never interrupted."""
        big = self.tmp / "big"
        big.mkdir()
        (big / "empty.log").write_bytes(b"")
        docs = [json.loads(p.read_text()) for p in (LEGACY / "sessions").glob("*.json")]
        for i in range(200):
            doc = json.loads(json.dumps(docs[i % len(docs)]))
            doc["session_id"] = f"copy-{i}:{doc['session_id']}"
            doc.pop("unsessioned", None)
            (big / "sessions").mkdir(exist_ok=True)
            (big / "sessions" / file_name_for(doc["session_id"])).write_text(json.dumps(doc))
        reference = self.tmp / "reference"
        upgrade_killed_again_and_again(self, big, reference, random.Random(14))
        names = [p.name for p in session_files(reference / "sessions")]
        self.assertEqual(len(names), 200)
        self.assertEqual([p.name for p in session_files(big / "sessions")], names)
        self.assertEqual([p for p in (big / "sessions").iterdir() if ".tmp" in p.name], [])
        got, want = load_store(big / "sessions"), load_store(reference / "sessions")
        self.assertEqual(got, want)
        for name in names:
            self.assertEqual(json.loads((big / "sessions" / name).read_text()).get("schema"), 2, name)
        self.assertEqual(cli(big / "sessions", "stats-model", "--json"),
                         cli(reference / "sessions", "stats-model", "--json"))


class UpgradeFromLayout3(TempDirTest):
    """Layout 4 leaves whole repeated messages, derivable totals and empty lists out of
    the files; a store in layout 3 reads the same before, during and after its upgrade."""

    def setUp(self) -> None:
        super().setUp()
        self.root = self.tmp / "layout3"
        shutil.copytree(LAYOUT3, self.root)
        self.store, self.log = self.root / "sessions", self.root / "access.log"

    def monitor(self, out: Path):
        code, out_text, err = self.run_monitor(self.log, out=out,
                                               extra=["--allow-log-dir", str(self.root)])
        self.assertEqual(code, 0, err)
        return out_text + err

    def test_layout_3_store_is_rewritten_smaller_and_reads_the_same(self):
        from agent_session_monitor.store.ondisk import LAYOUT

        before_raw = {p.name: p.read_bytes() for p in session_files(self.store)}
        self.assertTrue(all(json.loads(b)["layout"] == 3 for b in before_raw.values()))
        before = load_store(self.store)
        first = next(iter(sorted(before)))
        shown = json.loads(cli(self.store, "show", "--json", first))
        readme_before = original_reader(self.store)
        self.assertIn(f"upgraded {len(before_raw)} session files", self.monitor(self.store))
        after_raw = {p.name: p.read_bytes() for p in session_files(self.store)}
        self.assertEqual(set(after_raw), set(before_raw))
        for name, data in after_raw.items():
            self.assertEqual(json.loads(data)["layout"], LAYOUT, name)
        self.assertLess(sum(map(len, after_raw.values())), 0.95 * sum(map(len, before_raw.values())))
        self.assertEqual(load_store(self.store), before)
        self.assertEqual(json.loads(cli(self.store, "show", "--json", first)), shown)
        self.assertEqual(original_reader(self.store), readme_before)
        # ... and what a fresh ingest of the same log writes (prices aside: the bundled
        # table may have changed since the fixture was written; an upgrade keeps costs).
        fresh = self.tmp / "fresh"
        self.monitor(fresh)
        self.assertEqual(without_prices(load_store(fresh)), without_prices(before))
        self.assertNotIn("upgraded", self.monitor(self.store))   # nothing left to do

    def test_upgrade_leaves_unreadable_linked_and_odd_files_alone(self):
        """Beside the layout-3 files: a cut file, a symlink to another store's file, one
        that claims a future layout: the upgrade rewrites only the layout-3 ones, and
        every other file is as it was; one that no layout fits (no context tip, no totals)
        is written with its totals and reads as before."""
        victim = self.tmp / "victim.json"
        victim.write_text('{"session_id": "other", "rounds": []}')
        odd = {"cut.json": b'{"session_id": "cut", "rounds": [{"ro',
               "future.json": json.dumps({"session_id": "future", "schema": 2, "layout": 10**30,
                                          "rounds": []}).encode(),
               "no-tip.json": json.dumps({"session_id": "no-tip", "schema": 2, "rounds": [
                   {"round": 1, "key": "r1", "timestamp": "2026-02-01T10:00:00.000Z"}]},
                   separators=(",", ":")).encode()}
        for name, data in odd.items():
            (self.store / name).write_bytes(data)
        (self.store / "linked.json").symlink_to(victim)
        from agent_session_monitor.store.sessions import read_document

        no_tip = read_document(self.store / "no-tip.json")
        out = self.monitor(self.store)
        self.assertIn(f"upgraded {len(session_files(LAYOUT3 / 'sessions')) + 1} session files", out)
        self.assertIn("cut.json is corrupt or unreadable", out)
        for name, data in odd.items():
            if name != "no-tip.json":
                self.assertEqual((self.store / name).read_bytes(), data, name)
        self.assertEqual(read_document(self.store / "no-tip.json"), no_tip)
        self.assertTrue((self.store / "linked.json").is_symlink())
        self.assertEqual(victim.read_text(), '{"session_id": "other", "rounds": []}')

    def test_sigkill_at_random_points_of_a_layout_upgrade_converges(self):
        big = self.tmp / "big"
        (big / "sessions").mkdir(parents=True)
        (big / "empty.log").write_bytes(b"")
        raw = [p.read_bytes() for p in session_files(LAYOUT3 / "sessions")]
        for i in range(240):
            doc = json.loads(raw[i % len(raw)])
            doc["session_id"] = f"copy-{i}:{doc['session_id']}"
            (big / "sessions" / file_name_for(doc["session_id"])).write_text(json.dumps(doc))
        reference = self.tmp / "reference"
        upgrade_killed_again_and_again(self, big, reference, random.Random(4))
        self.assertEqual([p for p in (big / "sessions").iterdir() if ".tmp" in p.name], [])
        self.assertEqual(load_store(big / "sessions"), load_store(reference / "sessions"))
        names = [p.name for p in session_files(reference / "sessions")]
        self.assertEqual([p.name for p in session_files(big / "sessions")], names)
        for name in names:
            self.assertEqual((big / "sessions" / name).read_bytes(),
                             (reference / "sessions" / name).read_bytes(), name)
        self.assertEqual(cli(big / "sessions", "stats-model", "--json"),
                         cli(reference / "sessions", "stats-model", "--json"))


def upgrade_killed_again_and_again(test: TempDirTest, big: Path, reference: Path,
                                   rng: random.Random) -> None:
    """Copy the store ``big`` to ``reference`` and upgrade that copy in one run; then
    upgrade ``big`` with a SIGKILL at random points, again and again, and once to the end."""
    shutil.copytree(big, reference)
    cmd = lambda root: [sys.executable, str(ROOT / "main.py"), "--log-path",  # noqa: E731
                        str(root / "empty.log"), "--output-dir", str(root / "sessions"),
                        "--allow-log-dir", str(root), "-q"]
    subprocess.run(cmd(reference), check=True, capture_output=True)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(cmd(big), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = subprocess.run(cmd(big), capture_output=True, text=True)
    test.assertEqual(final.returncode, 0, final.stderr)
    test.assertGreater(kills, 0, "the upgrade finished before any kill: make it longer")


def without_prices(docs: dict) -> dict:
    price_fields = ("cost_usd", "priced_by", "priced_as", "total_cost_usd", "unpriced_rounds",
                    "unpriced_models", "provider_cost")
    for doc in docs.values():
        for part in (doc, *doc["rounds"]):
            for name in price_fields:
                part.pop(name, None)
    return docs


def original_reader_of_fresh(test: UpgradeFromSchema1) -> dict:
    test.fresh()
    return original_reader(test.tmp / "fresh")


# -- one meaning per token column -------------------------------------------------------

def _line(n: int, session: str, model: str, usage: dict, cost: object = None) -> str:
    ai = {"session_id": session, "model": model, "response_type": "normal",
          "messages": [{"role": "user", "content": f"q{n}"}], "question": f"q{n}",
          "answer": f"a{n}", **usage}
    if cost is not None:
        ai["cost"] = cost
    return json.dumps({"start_time": f"2026-03-01T10:{n:02d}:00.000Z", "ai_log": json.dumps(ai),
                       "request_id": f"r{n}", "response_code": "200"}) + "\n"


# Each provider's usage as Higress logs it, and what the columns must show. input =
# uncached + cache read + cache write; output = text + reasoning.
SHAPES = {
    "openai-cache": ("gpt-4o", {"input_token": 150, "output_token": 100, "cached_tokens": 120,
                                "input_token_details": '{"cached_tokens":120}'},
                     dict(input=150, cached=120, cache_write=0, output=100, reasoning=0),
                     (30 * 2.5 + 120 * 1.25 + 100 * 10) / 1e6),
    "o-series": ("o1", {"input_token": 100, "output_token": 580, "reasoning_tokens": 500,
                        "output_token_details": {"reasoning_tokens": 500}},
                 dict(input=100, cached=0, cache_write=0, output=580, reasoning=500),
                 (100 * 15 + 80 * 60 + 500 * 60) / 1e6),
    "anthropic": ("claude-sonnet-4-20250514",
                  {"input_token": 12, "output_token": 311, "input_token_details":
                   '{"cache_read_input_tokens":20480,"cache_creation_input_tokens":1000}'},
                  dict(input=21492, cached=20480, cache_write=1000, output=311, reasoning=0),
                  (12 * 3 + 20480 * 0.3 + 1000 * 3.75 + 311 * 15) / 1e6),
    "gemini": ("gemini-2.5-flash",
               {"input_token": 12000, "output_token": 40, "cached_tokens": None,
                "reasoning_tokens": None,
                "input_token_details": '{"cached_content_token_count":8192}',
                "output_token_details": '{"thoughts_token_count":300}'},
               dict(input=12000, cached=8192, cache_write=0, output=340, reasoning=300),
               (3808 * 0.3 + 8192 * 0.03 + 40 * 2.5 + 300 * 2.5) / 1e6),
    "deepseek": ("deepseek-chat", {"input_token": 1000, "output_token": 50, "cached_tokens": 600,
                                   "input_token_details": {"cached_tokens": 600}},
                 dict(input=1000, cached=600, cache_write=0, output=50, reasoning=0),
                 (400 * 0.28 + 600 * 0.028 + 50 * 0.42) / 1e6),
}


class TokenColumnsPerProvider(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        with open(self.log, "w") as f:
            for n, (shape, (model, usage, _want, _cost)) in enumerate(SHAPES.items()):
                f.write(_line(n, shape, model, usage))
        code, self.summary, err = self.run_monitor(self.log)
        self.assertEqual(code, 0, err)

    def want(self, shape: str) -> dict:
        w = dict(SHAPES[shape][2])
        w["total"] = w["input"] + w["output"]
        return w

    def test_costs_follow_each_providers_shape(self):
        for shape, (_m, _u, _w, cost) in SHAPES.items():
            shown = json.loads(cli(self.out, "show", "--json", shape))
            self.assertAlmostEqual(shown["rounds"][0]["cost_usd"], cost, places=15, msg=shape)

    def test_the_columns_add_up_in_every_command_page_and_export(self):
        everything = {k: sum(self.want(s)[k] for s in SHAPES) for k in self.want("gemini")}
        # main.py's pass summary
        self.assertIn(f"input {everything['input']:,} (cached {everything['cached']:,}, "
                      f"cache write {everything['cache_write']:,}), output "
                      f"{everything['output']:,} (reasoning {everything['reasoning']:,}), "
                      f"total {everything['total']:,}", self.summary)
        # the session files: logged counts under the original names, normalised beside
        docs = load_store(self.out)
        for shape in SHAPES:
            doc = docs[shape]
            self.assertEqual(doc["tokens"], self.want(shape), shape)
            self.assertEqual(doc["total_input_tokens"], SHAPES[shape][1]["input_token"])
        # list, stats-*, export (JSON and CSV)
        rows = {r["session_id"]: r for r in json.loads(cli(self.out, "list", "--json"))}
        models = {r["model"]: r for r in json.loads(cli(self.out, "stats-model", "--json"))}
        report = json.loads(cli(self.out, "export", "-", "--format", "json"))
        exported = {r["session_id"]: r for r in report["sessions"]}
        self.assertIn("input = uncached + cached + cache write", report["token_columns"])
        csv_rows = list(csv.DictReader(io.StringIO(cli(self.out, "export", "-", "--format", "csv"))))
        by_csv = {r["key"]: r for r in csv_rows if r["section"] == "session"}
        for shape, (model, _u, _w, _c) in SHAPES.items():
            w = self.want(shape)
            for source, row in (("list", rows[shape]), ("stats-model", models[model]),
                                ("export", exported[shape]),
                                ("csv", {k: int(v) for k, v in by_csv[shape].items()
                                         if k.endswith("_tokens")})):
                with self.subTest(shape=shape, source=source):
                    self.assertEqual((row["input_tokens"], row["cached_tokens"],
                                      row["cache_write_tokens"], row["output_tokens"],
                                      row["reasoning_tokens"], row["total_tokens"]),
                                     (w["input"], w["cached"], w["cache_write"], w["output"],
                                      w["reasoning"], w["total"]))
        total = report["totals"]
        self.assertEqual((total["input_tokens"], total["output_tokens"], total["total_tokens"]),
                         (everything["input"], everything["output"], everything["total"]))
        # The text tables: INPUT ... TOTAL columns add up on every row, legend once.
        text = cli(self.out, "stats-model")
        self.assertEqual(text.count("input = uncached + cached + cache write"), 1)
        header = next(line for line in text.splitlines() if line.startswith("MODEL"))
        cols = header.split()
        self.assertEqual(cols[1:], ["SESSIONS", "ROUNDS", "INPUT", "CACHED", "CACHE", "WRITE",
                                    "OUTPUT", "REASONING", "TOTAL", "COST"])
        checked = 0
        for line in text.splitlines():
            if re.match(r"^(gpt|o1|claude|gemini|deepseek|TOTAL)", line):
                _s, _r, inp, cached, cw, out, reasoning, total = (
                    int(c.replace(",", "")) for c in line.split()[-9:-1])
                self.assertEqual(total, inp + out, line)
                self.assertLessEqual(cached + cw, inp, line)
                self.assertLessEqual(reasoning, out, line)
                checked += 1
        self.assertEqual(checked, len(SHAPES) + 1)
        # show: the same numbers per round and per session
        for shape in SHAPES:
            w = self.want(shape)
            text = cli(self.out, "show", shape)
            self.assertIn(f"Tokens: {w['input']:,} in -> {w['output']:,} out", text)
            self.assertRegex(text, rf"Total:\s+{w['total']:,}\n")
        # burn, budgets and the live view count the same total
        from datetime import datetime, timezone
        from agent_session_monitor.finops import budgets
        from agent_session_monitor.reports import burn, live
        from agent_session_monitor.reports.reader import StoreReader
        reader = StoreReader.open(self.out)
        self.addCleanup(reader.close)
        self.assertEqual(budgets.total_tokens(reader.db), everything["total"])
        rate = burn.burn(reader.db, now=datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc))
        self.assertEqual(rate["today"]["tokens"], everything["total"])
        totals, rows = live.live_rows(reader.db)
        self.assertEqual((totals["input"], totals["output"]), (everything["input"], everything["output"]))
        for row in rows:
            self.assertEqual((row["input"], row["output"]),
                             (self.want(row["session_id"])["input"], self.want(row["session_id"])["output"]))

    def test_web_pages_and_api_show_the_same_columns(self):
        app = web_app(self.out)
        for shape in SHAPES:
            w = self.want(shape)
            resp = app.handle("GET", f"/session?id={shape}", HOST)
            page = resp.body.decode()
            for card, key in (("input", "input"), ("output", "output"), ("total", "total"),
                              ("cached", "cached"), ("reasoning", "reasoning")):
                self.assertRegex(page, rf'data-card="{card}"><div class="label">[^<]*</div>'
                                       rf'<div class="value">{w[key]:,}</div>', (shape, card))
            self.assertIn("input = uncached + cached + cache write", page)
            self.assertIn("Priced with the table of", page)
        overview = app.handle("GET", "/", HOST).body.decode()
        total = sum(self.want(s)["total"] for s in SHAPES)
        self.assertIn(f'<div class="value">{total:,}</div>', overview)
        stats = json.loads(app.handle("GET", "/api/stats", HOST).body)
        self.assertIn(json.dumps(total), json.dumps(stats))

    def test_otlp_spans_carry_the_normalised_columns(self):
        from agent_session_monitor.otel import spans as otlp

        docs = load_store(self.out)
        for shape in SHAPES:
            w = self.want(shape)
            attrs = otlp.round_to_span(shape, docs[shape]["rounds"][0], True).attributes
            self.assertEqual(attrs["gen_ai.usage.input_tokens"], w["input"], shape)
            self.assertEqual(attrs["gen_ai.usage.output_tokens"], w["output"], shape)
            self.assertEqual(attrs["gen_ai.usage.cache_read.input_tokens"], w["cached"], shape)
            self.assertEqual(attrs["gen_ai.usage.cache_creation.input_tokens"], w["cache_write"], shape)
            self.assertEqual(attrs["gen_ai.usage.reasoning.output_tokens"], w["reasoning"], shape)
            self.assertEqual(attrs["llm.token_count.total"], w["total"], shape)


# -- price provenance and provider-reported costs ---------------------------------------

class PriceProvenance(TempDirTest):
    def test_rounds_record_their_table_and_override_and_reprice_updates_both(self):
        log = self.tmp / "access.log"
        with open(log, "w") as f:
            for n in range(3):
                f.write(_line(n, "s", "gpt-4o", SHAPES["openai-cache"][1]))
            f.write(_line(3, "s", "my-model", {"input_token": 1000, "output_token": 10}))
            f.write(_line(4, "s", "my-model", {"input_token": 1000, "output_token": 10}))
        prices = self.tmp / "prices.json"
        prices.write_text(json.dumps({"my-model": {"input": 1.0, "output": 2.0}}))
        code, _o, err = self.run_monitor(log, extra=["--pricing", str(prices)])
        self.assertEqual(code, 0, err)
        doc = load_store(self.out)["s"]
        ids = [r["priced_by"] for r in doc["rounds"]]
        self.assertRegex(ids[0], r"^table:\d{4}-\d{2}-\d{2}:[0-9a-f]{8}$")
        self.assertRegex(ids[3], r"^override:[0-9a-f]{8}$")
        self.assertEqual(doc["priced_by"], {ids[0]: 3, ids[3]: 2})
        date = ids[0].split(":")[1]
        text = cli(self.out, "show", "s")
        self.assertIn(f"Priced with the table of {date} ({ids[0][-8:]}), 3 rounds; 2 rounds by "
                      f"your override file ({ids[3][-8:]}).", text)
        # A new override: --reprice records it (costs change; provenance changes with them).
        prices.write_text(json.dumps({"my-model": {"input": 2.0, "output": 2.0}}))
        code, out, err = self.run_monitor(log, extra=["--pricing", str(prices), "--reprice"])
        self.assertEqual(code, 0, err)
        doc = load_store(self.out)["s"]
        self.assertNotEqual(doc["rounds"][3]["priced_by"], ids[3])
        self.assertEqual(doc["rounds"][0]["priced_by"], ids[0])
        self.assertAlmostEqual(doc["rounds"][3]["cost_usd"], (1000 * 2 + 10 * 2) / 1e6, places=15)
        # Without the override the table prices nothing for my-model: unpriced, no provenance.
        code, out, err = self.run_monitor(log, extra=["--reprice"])
        doc = load_store(self.out)["s"]
        self.assertIsNone(doc["rounds"][3]["cost_usd"])
        self.assertNotIn("priced_by", doc["rounds"][3])
        self.assertEqual(doc["priced_by"], {ids[0]: 3})

    def test_a_cost_the_provider_reports_is_kept_beside_ours_and_the_difference_shown(self):
        log = self.tmp / "access.log"
        usage = SHAPES["openai-cache"][1]
        ours = SHAPES["openai-cache"][3]
        with open(log, "w") as f:
            f.write(_line(0, "s", "gpt-4o", usage, cost=0.0013))           # OpenRouter-style
            f.write(_line(1, "s", "gpt-4o", usage, cost="0.001225"))       # as a string
            f.write(_line(2, "s", "gpt-4o", usage, cost=True))             # not a cost
            f.write(_line(3, "s", "gpt-4o", usage, cost=-5))               # not a cost
            f.write(_line(4, "s", "gpt-4o", usage, cost="1e400"))          # not finite
            f.write(_line(5, "s", "gpt-4o", {**usage, "usage": {"cost": 0.002}}))
        code, _o, err = self.run_monitor(log)
        self.assertEqual(code, 0, err)
        doc = load_store(self.out)["s"]
        self.assertEqual([r.get("provider_cost_usd") for r in doc["rounds"]],
                         [0.0013, 0.001225, None, None, None, 0.002])
        self.assertEqual([r["cost_usd"] for r in doc["rounds"]], [ours] * 6)   # ours, never theirs
        pc = doc["provider_cost"]
        self.assertEqual(pc["rounds"], 3)
        self.assertAlmostEqual(pc["usd"], 0.0013 + 0.001225 + 0.002, places=15)
        self.assertAlmostEqual(pc["ours_usd"], 3 * ours, places=15)
        text = cli(self.out, "show", "s")
        self.assertIn("The provider reported $0.004525 for 3 rounds; we priced the same rounds "
                      "at $0.003675, a difference of -$0.000850 (-18.8%).", text)
        self.assertIn("provider reported $0.001300", text)
        page = web_app(self.out).handle("GET", "/session?id=s", HOST).body.decode()
        self.assertIn("The provider reported $0.004525 for 3 rounds", page)
