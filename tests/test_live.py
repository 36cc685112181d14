"""The follow-mode live view (the skill's "Real-time Monitor"), rendered from the index."""

from __future__ import annotations

import io
import sqlite3

from tests.helpers import DATA, TempDirTest
from agent_session_monitor.reports.live import budget_line, live_rows, render_live


class LiveView(TempDirTest):
    def test_live_table_shows_recent_sessions_totals_and_budget_escaped(self):
        code, _out, err = self.run_monitor(DATA / "higress-realistic.log")
        self.assertEqual(code, 0, err)
        db = sqlite3.connect(self.out / ".index.sqlite")
        totals, rows = live_rows(db)
        db.close()
        self.assertEqual((totals["sessions"], totals["rounds"]), (6, 7))
        rows[0]["session_id"] = "evil\x1b[2Jid"
        out = io.StringIO()
        render_live(out, totals, rows, last_pass="Read 1 line.",
                    budget_line=budget_line(50_000, 200_000))
        text = out.getvalue()
        self.assertTrue(text.startswith("\x1b[H\x1b[2J"))        # redrawn in place
        self.assertNotIn("\x1b[2Jid", text)                       # log content is escaped
        self.assertIn("evil\\x1b[2Jid", text)
        self.assertIn("Budget: 50,000 / 200,000 tokens (25.0%)", text)
        self.assertIn("Sessions: 6   Rounds: 7", text)
        self.assertIn("unpriced", text)                           # qwen3-max's session
        header = next(line for line in text.splitlines() if line.startswith("SESSION"))
        for line in text.splitlines():
            if line.startswith("sess_claude_42"):
                self.assertEqual(len(line), len(header))          # columns aligned
