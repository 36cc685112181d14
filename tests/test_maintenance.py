"""Store-wide maintenance: repricing after a price change, rebuilding the index."""

from __future__ import annotations

import json
import os

from tests.helpers import DATA, TempDirTest, load_store
from agent_session_monitor.reports.reader import StoreReader


class Reprice(TempDirTest):
    def test_reprice_applies_an_override_without_rereading_logs(self):
        code, _out, err = self.run_monitor(DATA / "higress-realistic.log")
        self.assertEqual(code, 0, err)
        self.assertIsNone(load_store(self.out)["long-session"]["total_cost_usd"])
        prices = self.tmp / "prices.json"
        prices.write_text(json.dumps({"qwen3-max": {"input": 1.2, "output": 6.0}}))
        code, out, err = self.run_monitor(DATA / "higress-realistic.log",
                                          extra=["--reprice", "--pricing", str(prices)])
        self.assertEqual(code, 0, err)
        self.assertIn("Repriced", out)
        doc = load_store(self.out)["long-session"]
        self.assertAlmostEqual(doc["total_cost_usd"], (98000 * 1.2 + 120 * 6.0) / 1e6, places=12)
        self.assertEqual(doc["unpriced_rounds"], 0)
        reader = StoreReader.open(self.out)
        rows = {r["key"]: r for r in reader.aggregate("model")}
        self.assertAlmostEqual(rows["qwen3-max"]["cost"], (98000 * 1.2 + 120 * 6.0) / 1e6, places=12)
        reader.close()
        # The claude round keeps its own price: an override of one model changes no other.
        claude = load_store(self.out)["sess_claude_42"]
        self.assertAlmostEqual(claude["total_cost_usd"], 0.010845, places=12)

    def test_rebuild_index_after_it_was_deleted(self):
        self.run_monitor(DATA / "higress-realistic.log")
        for name in os.listdir(self.out):
            if name.startswith(".index"):
                os.remove(self.out / name)
        reader = StoreReader.open(self.out)          # readers rebuild it in memory
        self.assertEqual(reader.totals()["rounds"], 7)
        reader.close()
        code, out, err = self.run_monitor(DATA / "higress-realistic.log", extra=["--rebuild-index"])
        self.assertEqual(code, 0, err)
        self.assertIn("6 session files", out)
        reader = StoreReader.open(self.out)
        self.assertEqual(reader.totals()["rounds"], 7)
        reader.close()


class OldIndex(TempDirTest):
    def test_readers_ignore_an_index_of_another_version(self):
        import sqlite3

        self.run_monitor(DATA / "higress-realistic.log")
        db = sqlite3.connect(self.out / ".index.sqlite")
        with db:
            db.execute("UPDATE meta SET value = '0' WHERE key = 'version'")
            db.execute("DROP TABLE usage")
        db.close()
        reader = StoreReader.open(self.out)
        self.assertEqual(reader.totals()["rounds"], 7)
        reader.close()
        code, _out, err = self.run_monitor(DATA / "higress-realistic.log")   # the monitor rebuilds it
        self.assertEqual(code, 0, err)
        db = sqlite3.connect(self.out / ".index.sqlite")
        self.assertEqual(db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0], 6)
        db.close()
