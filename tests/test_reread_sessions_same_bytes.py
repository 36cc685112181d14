"""A session's file does not depend on whether the session stayed in memory.

A session the monitor extends is either still in its cache (parsed this run) or read
back from its file (an earlier cron run, a cache eviction in a long run). Both must be
written with the same bytes: the file leaves out keys it can give back (empty lists, a
null provider cost, the price counts; a round's ``messages_offset``, ``source``,
``total_tokens``, ``buckets``...), reading puts them back, and a document or a round
whose keys came back at the end was written with them elsewhere than one that never
left memory: the same data, other bytes, and a store whose bytes depend on the cache size
(which broke the byte-identical comparisons of every speed change).

Seeded logs (tests/loggen.py: unknown models, consumers, bad and duplicate lines; and
tests/test_parse_ahead.hostile_log) are ingested once whole and again in seeded random
slices, one cron run per slice; every session file must be byte for byte the one-run
file."""

from __future__ import annotations

import os
import random
from unittest import mock

from tests.helpers import TempDirTest, is_session_file, write_lines
from tests.loggen import iter_records
from tests.test_parse_ahead import READ_TIME, hostile_log
from agent_session_monitor.ingest import monitor as monitor_module


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

    def test_hostile_rounds_read_back_are_written_as_in_one_run(self) -> None:
        """Hostile logs (tests/test_parse_ahead.hostile_log: 2**64, negative and
        non-numeric metadata, forged and broken lines, bad times): a chat_round or a
        latency the builder stored (2**64, -5) was dropped and flagged bad_stored_value
        when its session was read back, and a round read back got the keys its file left
        out (``messages_offset``, ``source``, ``total_tokens``...) at its end, so cron runs
        wrote other values, then other bytes, than one run. Rounds dated when they were
        read get one fixed read time here, so every file is compared byte for byte."""
        for seed in range(4):
            with self.subTest(seed=seed):
                rng = random.Random(seed)
                lines = [line + b"\n" for line in hostile_log(rng)]
                with mock.patch.object(monitor_module, "utc_now", lambda: READ_TIME):
                    whole, sliced, names = self.one_run_and_cron_slices(
                        f"hostile-{seed}", lines, rng, 7)
                self.assertGreater(len(names), 50)
                read_time = sum(READ_TIME.encode() in (whole / n).read_bytes() for n in names)
                self.assertGreater(read_time, 0, "some rounds are dated when read")
                differ = [n for n in names
                          if (whole / n).read_bytes() != (sliced / n).read_bytes()]
                self.assertEqual(differ, [], f"seed {seed}: {len(differ)} of {len(names)}")


if __name__ == "__main__":
    import unittest

    unittest.main()
