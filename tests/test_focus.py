"""cli.py export --format focus: a FOCUS 1.2 CSV whose columns and types are checked
against the specification's own column tables (tests/data/focus-1.2-columns.json, taken
from FOCUS_Spec tag v1.2), and whose BilledCost sums to the store's cost over the window."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unittest

from tests.helpers import DATA, TempDirTest, ingest, load_store, write_lines
from tests import loggen

from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.reports.reader import StoreReader
from agent_session_monitor.reports.aggregates import range_totals

SPEC = json.loads((DATA / "focus-1.2-columns.json").read_text())
BY_NAME = {c["column"]: c for c in SPEC["columns"]}
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# FOCUS Numeric Format: integer, decimal or "mEn"; no sign for positives, no commas.
NUMERIC = re.compile(r"^-?\d+(\.\d+)?([eE]-?\d+)?$")


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    import contextlib
    with contextlib.redirect_stderr(err):
        code = cli_main(list(argv), out=out)
    return code, out.getvalue(), err.getvalue()


class FocusExport(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        log = self.tmp / "access.log"
        lines = []
        for seed, start in ((1, "2026-02-01T22:00:00Z"), (2, "2026-02-03T23:30:00Z"),
                            (3, "2026-03-01T00:05:00Z")):
            lines += loggen.generate(seed=seed, sessions=15, max_requests=10, start=start,
                                     unsessioned_every=7).lines
        hostile = {"ai_log": json.dumps({"model": "gpt-4o-2024-08-06", "input_token": 5,
                                         "output_token": 1, "consumer": "@evil,\"q\"\n",
                                         "session_id": "-cmd|' /C calc'!A0"}),
                   "request_id": "hostile-1", "start_time": "2026-02-02T12:00:00.000Z"}
        lines.append(json.dumps(hostile).encode() + b"\n")
        write_lines(log, lines, "wb")
        ingest(self.out, log)

    def export(self, *extra: str) -> tuple[list[str], list[dict], str]:
        code, out, err = cli("--data-dir", str(self.out), "export", "-", "--format", "focus",
                             *extra)
        self.assertEqual(code, 0, err)
        reader = csv.reader(io.StringIO(out))
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
        return header, rows, err

    def test_columns_and_types_follow_the_focus_1_2_column_tables(self):
        for extra in ((), ("--granularity", "round")):
            header, rows, _ = self.export(*extra)
            self.assertEqual(len(header), len(set(header)))
            mandatory = {c["column"] for c in SPEC["columns"] if c["feature_level"] == "Mandatory"}
            self.assertLessEqual(mandatory, set(header), "a mandatory FOCUS 1.2 column is missing")
            for name in header:
                self.assertTrue(name in BY_NAME or name.startswith("x_"),
                                f"{name} is neither a FOCUS column nor x_-prefixed")
            for name in ("ConsumedQuantity", "ConsumedUnit", "ChargeFrequency",
                         "ServiceSubcategory"):
                self.assertIn(name, header)
            self.assertTrue(rows)
            for row in rows:
                for name in header:
                    spec, value = BY_NAME.get(name), row[name]
                    if spec is None:
                        continue
                    if value == "":
                        self.assertTrue(spec["allows_nulls"], f"{name} may not be null")
                        continue
                    if spec["data_type"] == "Decimal":
                        self.assertRegex(value, NUMERIC, name)
                    elif spec["data_type"] == "Date/Time":
                        self.assertRegex(value, DATETIME, name)
                for name, allowed in SPEC["allowed_values"].items():
                    if name in row:
                        self.assertIn(row[name] or None, allowed, name)
                self.assertIn(row["ServiceSubcategory"], SPEC["allowed_values"][
                    "ServiceCategory(AI and Machine Learning) subcategories"])
                self.assertEqual(row["ServiceCategory"], "AI and Machine Learning")
                self.assertRegex(row["BillingCurrency"], r"^[A-Z]{3}$")
                self.assertLess(row["ChargePeriodStart"], row["ChargePeriodEnd"])
                self.assertLessEqual(row["BillingPeriodStart"], row["ChargePeriodStart"])
                self.assertLessEqual(row["ChargePeriodEnd"], row["BillingPeriodEnd"])
                self.assertEqual(float(row["ConsumedQuantity"]),
                                 int(row["x_InputTokens"]) + int(row["x_OutputTokens"]))
                for cost in ("EffectiveCost", "ListCost", "ContractedCost"):
                    self.assertEqual(row[cost], row["BilledCost"])

    def test_billed_cost_sums_to_the_store_total_over_every_window(self):
        windows = [(None, None), ("2026-02-02", None), ("2026-02-02", "2026-02-04"),
                   (None, "2026-03-01"), ("2026-02-04T00:15:00Z", "2026-03-01T00:30:00Z")]
        for since, until in windows:
            args = (["--since", since] if since else []) + (["--until", until] if until else [])
            with self.subTest(since=since, until=until):
                for granularity in ("day", "round"):
                    _, rows, _ = self.export("--granularity", granularity, *args)
                    reader = StoreReader.open(self.out)
                    try:
                        from agent_session_monitor.reports.timerange import parse_since, parse_tz
                        tz = parse_tz(None)
                        totals = range_totals(reader, parse_since(since, tz) if since else None,
                                              parse_since(until, tz) if until else None)
                    finally:
                        reader.close()
                    billed = math.fsum(float(r["BilledCost"]) for r in rows)
                    self.assertAlmostEqual(billed, totals["cost"] or 0.0, places=9)
                    rounds = sum(int(r["x_Rounds"]) for r in rows)
                    self.assertLessEqual(rounds, totals["rounds"])
                    self.assertEqual(rounds + self.unpriced_left_out(rows, totals),
                                     totals["rounds"])

    def unpriced_left_out(self, rows: list[dict], totals: dict) -> int:
        written_unpriced = sum(int(r["x_UnpricedRounds"]) for r in rows)
        return totals["unpriced_rounds"] - written_unpriced

    def test_whole_store_billed_cost_equals_the_generators_own_prices(self):
        _, rows, err = self.export()
        docs = load_store(self.out)
        expected = math.fsum(r["cost_usd"] for d in docs.values() for r in d["rounds"]
                             if r["cost_usd"] is not None)
        self.assertAlmostEqual(math.fsum(float(r["BilledCost"]) for r in rows), expected, places=9)
        # Unpriced usage is never a $0 row: it is left out and said so.
        self.assertNotIn(loggen.UNPRICED_MODEL, {r["SkuId"] for r in rows})
        self.assertIn("unpriced rounds left out", err)
        self.assertIn(loggen.UNPRICED_MODEL, err)

    def test_round_rows_carry_their_session_and_consumer(self):
        _, rows, _ = self.export("--granularity", "round")
        docs = load_store(self.out)
        priced = [(d, r) for d in docs.values() for r in d["rounds"] if r["cost_usd"] is not None]
        self.assertEqual(len(rows), len(priced))
        ids = {r["x_SessionId"] for r in rows}
        for doc, _ in priced:
            if not doc.get("unsessioned"):
                sid = doc["session_id"]
                self.assertTrue(sid in ids or "'" + sid in ids, sid)   # quoted if formula-like
        self.assertIn("", ids)   # the unsessioned rounds: no session id, not a placeholder

    def test_client_chosen_text_cannot_start_a_spreadsheet_formula(self):
        for granularity in ("day", "round"):
            _, rows, _ = self.export("--granularity", granularity)
            for row in rows:
                for value in row.values():
                    self.assertFalse(value.startswith(("=", "+", "@", "\t", "\r")), value)
                    if value.startswith("-"):
                        self.assertRegex(value, NUMERIC)
            self.assertIn("'@evil,\"q\"\n", {r["x_Consumer"] for r in rows})

    def test_the_file_is_written_atomically_with_a_summary_line(self):
        target = self.tmp / "focus.csv"
        code, out, err = cli("--data-dir", str(self.out), "export", str(target), "--format", "focus")
        self.assertEqual(code, 0, err)
        self.assertIn("Wrote FOCUS 1.2 CSV", out)
        self.assertTrue(target.read_text().startswith("BilledCost,"))


if __name__ == "__main__":
    unittest.main()
