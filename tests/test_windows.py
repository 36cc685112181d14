"""Time windows are exact to the millisecond in every report, in any time zone.

The index sums usage per quarter-hour; a window whose edges fall inside a quarter-hour
(``--since 09:05``) or a zone whose midnight does (``--tz -09:04``) must still count
exactly the rounds inside it. Generated: a multi-day log through the monitor, then many
seeded random windows and zones, each report compared with sums computed straight from
the stored rounds.
"""

from __future__ import annotations

import io
import json
import random
import unittest
from datetime import date, datetime, timedelta, timezone

from tests.helpers import TempDirTest, ingest, load_store
from tests import loggen

from agent_session_monitor.pricing import tokens
from agent_session_monitor.reports import window
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.reports.timerange import parse_tz

ZONES = ["UTC", "+08:00", "-09:04", "+05:45", "America/St_Johns", "Asia/Shanghai", "+13:59",
         "-12:00"]


def _stamp(moment: datetime) -> str:
    return window.stamp(moment)


class ExactWindows(TempDirTest):
    """Random windows and zones against the rounds themselves."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.rng = random.Random(15)

    def setUp(self) -> None:
        super().setUp()
        log = self.tmp / "access.log"
        with open(log, "wb") as f:
            # Sessions hours apart: the rounds span several days, so day edges matter.
            for line, _event, _kind in loggen.iter_records(
                    seed=15, sessions=30, max_requests=12, unsessioned_every=9,
                    session_gap_s=4 * 3600, start="2026-02-01T09:00:00.000Z"):
                f.write(line)
        ingest(self.out, log)
        self.rounds = [(r["timestamp"], doc["session_id"], r) for doc in load_store(self.out).values()
                       for r in doc["rounds"]]
        self.assertGreater(len(self.rounds), 100)

    def cli(self, *argv: str):
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(["--data-dir", str(self.out), *argv], out=out, err=err)
        self.assertEqual(code, 0, err.getvalue())
        return json.loads(out.getvalue())

    def truth(self, since: str | None, until: str | None, key=lambda r: None) -> dict:
        groups: dict = {}
        for ts, sid, r in self.rounds:
            if (since and ts < since) or (until and ts >= until):
                continue
            g = groups.setdefault(key(r), {"rounds": 0, "input": 0, "output": 0, "costs": [],
                                           "unpriced": 0, "sessions": set()})
            g["rounds"] += 1
            t = tokens.of_round(r)   # the normalised columns every command shows
            g["input"] += t["input"]
            g["output"] += t["output"]
            g["sessions"].add(sid)
            if r.get("cost_usd") is None:
                g["unpriced"] += 1
            else:
                g["costs"].append(r["cost_usd"])
        return groups

    def assert_row(self, row: dict, expected: dict, where: str) -> None:
        self.assertEqual(row["rounds"], expected["rounds"], where)
        self.assertEqual(row["input_tokens"], expected["input"], where)
        self.assertEqual(row["output_tokens"], expected["output"], where)
        self.assertEqual(row["sessions"], len(expected["sessions"]), where)
        self.assertEqual(row["unpriced_rounds"], expected["unpriced"], where)
        if expected["rounds"] == expected["unpriced"]:
            self.assertIsNone(row["cost_usd"], where)
        else:
            self.assertAlmostEqual(row["cost_usd"], sum(expected["costs"]), places=9, msg=where)

    def random_edge(self, lo: datetime, hi: datetime) -> datetime:
        choice = self.rng.random()
        if choice < 0.25:    # exactly a round's time: since includes it, until excludes it
            ts = self.rng.choice(self.rounds)[0]
            return window.parse_stamp(ts)
        moment = lo + (hi - lo) * self.rng.random()
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        if choice < 0.45:    # on a quarter-hour: served from the buckets alone
            moment = moment.replace(minute=moment.minute // 15 * 15, second=0, microsecond=0)
        return moment

    def test_random_windows_match_the_rounds_in_every_command(self):
        times = sorted(window.parse_stamp(ts) for ts, _, _ in self.rounds)
        lo, hi = times[0] - timedelta(hours=1), times[-1] + timedelta(hours=1)
        for case in range(40):
            a, b = sorted([self.random_edge(lo, hi), self.random_edge(lo, hi)])
            if case % 10 == 0:    # a window inside one quarter-hour
                b = a + timedelta(minutes=self.rng.randint(1, 13))
            since = None if case % 13 == 5 else _stamp(a)
            until = None if case % 11 == 7 else _stamp(b)
            args = ([f"--since={since}"] if since else []) + ([f"--until={until}"] if until else [])
            where = f"case {case}: [{since}, {until})"

            by_model = self.truth(since, until, key=lambda r: r.get("model"))
            rows = {r["model"]: r for r in self.cli("stats-model", "--json", *args)}
            self.assertEqual(set(rows), set(by_model), where)
            for model, expected in by_model.items():
                self.assert_row(rows[model], expected, f"{where} model {model}")

            by_consumer = self.truth(since, until, key=lambda r: r.get("consumer"))
            rows = {r["consumer"]: r for r in self.cli("stats-consumer", "--json", *args)}
            self.assertEqual(set(rows), set(by_consumer), where)

            report = self.cli("export", "-", *args)
            total = self.truth(since, until).get(None)
            if total is None:
                self.assertEqual(report["totals"]["rounds"], 0, where)
            else:
                self.assert_row(report["totals"], total, f"{where} totals")
            self.assertEqual(sum(s["rounds"] for s in report["sessions"]),
                             total["rounds"] if total else 0, where)
            self.assertEqual(sum(d["rounds"] for d in report["by_day"]),
                             total["rounds"] if total else 0, where)

    def test_days_in_any_zone_match_the_rounds(self):
        last = max(window.parse_stamp(ts) for ts, _, _ in self.rounds).date() + timedelta(days=1)
        for zone in ZONES:
            tz = parse_tz(zone)
            by_day = {}
            for ts, sid, r in self.rounds:
                by_day.setdefault(window.parse_stamp(ts).astimezone(tz).date(), []).append((sid, r))
            rows = self.cli("stats-date", "--json", "--days", "9", "--end", last.isoformat(),
                            f"--tz={zone}")
            self.assertEqual(len(rows), 9)
            for row in rows:
                found = by_day.get(date.fromisoformat(row["day"]), [])
                where = f"{zone} {row['day']}"
                self.assertEqual(row["rounds"], len(found), where)
                self.assertEqual(row["sessions"], len({sid for sid, _ in found}), where)
                self.assertEqual(row["input_tokens"],
                                 sum(tokens.of_round(r)["input"] for _, r in found), where)
                self.assertAlmostEqual(row["cost_usd"] or 0.0,
                                       sum(r.get("cost_usd") or 0.0 for _, r in found), places=9,
                                       msg=where)
            self.assertEqual(sum(r["rounds"] for r in rows),
                             sum(len(v) for d, v in by_day.items()
                                 if last - timedelta(days=8) <= d <= last), zone)


class WindowSource(unittest.TestCase):
    """The split of a window into whole quarter-hours and exact edges."""

    def test_aligned_window_reads_only_the_buckets(self):
        sql, params = window.source("2026-02-01T09:00:00.000Z", "2026-02-01T10:00:00.000Z")
        self.assertNotIn("round_usage", sql)
        self.assertEqual(params, ["2026-02-01T09:00", "2026-02-01T10:00"])

    def test_unaligned_edges_are_read_from_the_rounds(self):
        sql, params = window.source("2026-02-01T09:05:00.000Z", "2026-02-01T10:07:30.500Z")
        self.assertEqual(params, ["2026-02-01T09:15", "2026-02-01T10:00",
                                  "2026-02-01T09:05:00.000Z", "2026-02-01T09:15:00.000Z",
                                  "2026-02-01T10:00:00.000Z", "2026-02-01T10:07:30.500Z"])

    def test_empty_and_reversed_windows(self):
        for since, until in (("2026-02-01T09:05:00.000Z", "2026-02-01T09:05:00.000Z"),
                             ("2026-02-01T10:00:00.000Z", "2026-02-01T09:00:00.000Z")):
            sql, _ = window.source(since, until)
            self.assertIn("WHERE 0", sql)

    def test_the_ends_of_the_calendar(self):
        sql, params = window.source("9999-12-31T23:50:00.000Z", None)
        self.assertIn("round_usage", sql)
        sql, params = window.source(None, "0001-01-01T00:05:00.000Z")
        self.assertEqual(params[0], "0001-01-01T00:00")


class TimeZoneArguments(unittest.TestCase):
    def run_cli(self, *argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(list(argv), out=out, err=err)
        return code, err.getvalue()

    def test_offsets_that_are_not_quarter_hours_are_accepted(self):
        for text in ("-09:04", "+05:45", "+0001", "-12:00", "+14:00"):
            self.assertIsNotNone(parse_tz(text))

    def test_impossible_offsets_are_refused_in_one_line(self):
        for text in ("+15:00", "+05:75", "-99"):
            code, err = self.run_cli("stats-model", f"--tz={text}", "--data-dir", "/nonexistent")
            self.assertEqual(code, 2, text)
            self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_day_ranges_and_burn_at_the_ends_of_the_calendar_are_usage_errors(self):
        import tempfile
        with tempfile.TemporaryDirectory() as store:
            for argv in (["stats-date", "--end", "9999-12-31", "--tz=-05:00", "--days", "2"],
                         ["stats-date", "--end", "0001-01-01", "--tz=+14:00"],
                         ["burn", "--at", "0001-01-01"], ["burn", "--at", "9999-12-31T23:59"],
                         ["stats-model", "--since", "0001-01-01", "--tz=+08:00"]):
                code, err = self.run_cli(*argv, "--data-dir", store)
                self.assertEqual(code, 2, (argv, err))
                self.assertNotIn("internal error", err)
                errors = [line for line in err.splitlines() if not line.startswith("note:")]
                self.assertEqual(len(errors), 1, err)

    def test_since_outside_the_calendar_is_a_usage_error(self):
        code, err = self.run_cli("stats-model", "--since", "99999999d", "--data-dir", "/nonexistent")
        self.assertEqual(code, 2, err)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()
