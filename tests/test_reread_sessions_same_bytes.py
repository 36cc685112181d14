"""A session's file does not depend on whether the session stayed in memory.

A session the monitor extends is either still in its cache (parsed this run) or read
back from its file (an earlier cron run, a cache eviction in a long run). Both must be
written with the same bytes: the file leaves out keys it can give back (empty lists, a
null provider cost, the price counts), reading puts them back, and a document whose keys
came back at the end was written with ``unpriced_models``/``consumers`` elsewhere than
one that never left memory: the same data, other bytes, and a store whose bytes depend on
the cache size (which broke the byte-identical comparisons of every speed change).

Seeded logs (tests/loggen.py: unknown models, consumers, bad and duplicate lines) are
ingested once whole and again in seeded random slices, one cron run per slice; every
session file must be byte for byte the one-run file."""

from __future__ import annotations

import json
import os
import random

from tests.helpers import TempDirTest, is_session_file, write_lines
from tests.loggen import iter_records
from tests.test_parse_ahead import hostile_log

# Rounds dated when they were read (their logged time unusable or untrusted) differ
# between runs made at other moments; everything else must not.
READ_TIME_WARNINGS = {"time_from_read", "bad_time", "untrusted_time"}


class ReReadSessionsSameBytes(TempDirTest):
    def one_run_and_cron_slices(self, name: str, lines: list, rng: random.Random,
                                slices: int) -> tuple:
        """The store of one run over ``lines`` and that of a cron run after each of
        ``slices`` seeded random slices of them is appended; and the session file names."""
        stores = []
        cuts = sorted(rng.sample(range(1, len(lines)), slices - 1))
        for label, bounds in (("whole", [(0, len(lines))]),
                              ("sliced", list(zip([0, *cuts], [*cuts, len(lines)])))):
            log = self.tmp / f"{name}-{label}" / "access.log"
            log.parent.mkdir()
            log.write_bytes(b"")
            out = self.tmp / f"{name}-store-{label}"
            for start, end in bounds:
                write_lines(log, lines[start:end])
                code, _out, err = self.run_monitor(log, out=out, extra=["-q"])
                self.assertEqual(code, 0, err)
            stores.append(out)
        whole, sliced = stores
        names = sorted(n for n in os.listdir(whole) if is_session_file(n))
        self.assertEqual(names, sorted(n for n in os.listdir(sliced) if is_session_file(n)))
        return whole, sliced, names

    def test_sessions_extended_across_cron_runs_are_written_as_in_one_run(self) -> None:
        for seed in (1, 5, 9, 23, 31, 47):
            with self.subTest(seed=seed):
                lines = [line for line, _event, _kind in iter_records(
                    seed, sessions=40, max_requests=30, bad_every=31, non_ai_every=23,
                    duplicate_every=17)]
                whole, sliced, names = self.one_run_and_cron_slices(
                    f"chat-{seed}", lines, random.Random(seed), 8)
                self.assertGreater(len(names), 20)
                differ = [n for n in names
                          if (whole / n).read_bytes() != (sliced / n).read_bytes()]
                self.assertEqual(differ, [], f"seed {seed}: {len(differ)} of {len(names)}")

    def test_hostile_rounds_read_back_keep_every_value_they_were_stored_with(self) -> None:
        """Hostile logs (tests/test_parse_ahead.hostile_log: 2**64, negative and
        non-numeric metadata, forged and broken lines, bad times): a chat_round or a
        latency the builder stored (2**64, -5) was dropped and flagged bad_stored_value
        when its session was read back, so cron runs stored other rounds than one run.
        Compared as data (the rounds' key order after a read-back is not yet settled)."""
        def as_data(path):
            doc = json.loads(path.read_bytes())
            stamped = False
            for rnd in doc["rounds"]:
                if READ_TIME_WARNINGS & set(rnd.get("warnings") or ()):
                    rnd.pop("timestamp", None)
                    stamped = True
            if stamped:
                doc.pop("created_at", None)
                doc.pop("updated_at", None)
            return json.dumps(doc, sort_keys=True)

        for seed in range(4):
            with self.subTest(seed=seed):
                rng = random.Random(seed)
                lines = [line + b"\n" for line in hostile_log(rng)]
                whole, sliced, names = self.one_run_and_cron_slices(
                    f"hostile-{seed}", lines, rng, 7)
                self.assertGreater(len(names), 50)
                differ = [n for n in names if as_data(whole / n) != as_data(sliced / n)]
                self.assertEqual(differ, [], f"seed {seed}: {len(differ)} of {len(names)}")


if __name__ == "__main__":
    import unittest

    unittest.main()
