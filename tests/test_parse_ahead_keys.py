"""Who hashes a line for its key during a catch-up parsed ahead: the worker, or the
monitor when it waited for the worker (it then builds the rounds too, parse_ahead.py).
Seeded hostile logs (tests/test_parse_ahead.hostile_log: generated traffic, sub-agent
spawns, duplicates, fuzzed and extreme lines, sessions interleaved) give the same store,
counts, warnings and state whoever hashes, and the same as a pass parsed in-process."""

from __future__ import annotations

import random
from unittest import mock

from agent_session_monitor.ingest import parse_ahead
from tests.test_parse_ahead import SEED, ParseAheadTest, hostile_log, write_log


def always(value: bool) -> property:
    """ParseWorker.waited pinned: every batch built by the worker (False) or left to
    the monitor with its keys (True); the worker's own updates are ignored."""
    return property(lambda worker: value, lambda worker, new: None)


class KeysHashedByEitherSide(ParseAheadTest):
    def test_the_store_is_the_same_whoever_hashes_the_lines(self) -> None:
        rng = random.Random(SEED + 16)
        for trial in range(2):
            lines = hostile_log(rng, n_real=400 + 150 * trial)
            log = self.tmp / f"access{trial}.log"
            write_log(log, lines)
            runs, sent = {}, {}
            real_send = parse_ahead.ParseWorker.send
            for name, ahead, waited in (("here", -1, None), ("worker", 0, False),
                                        ("monitor", 0, True)):
                batches: list = []

                def send(worker, fp, batch, build=True):
                    batches.append((build, batch))
                    return real_send(worker, fp, batch, build)

                patches = [mock.patch.object(parse_ahead.ParseWorker, "send", send)]
                if waited is not None:
                    patches.append(mock.patch.object(parse_ahead.ParseWorker, "waited",
                                                     always(waited), create=True))
                for p in patches:
                    p.start()
                try:
                    out = self.tmp / f"store{trial}-{name}"
                    runs[name] = self.passes(out, [log], ahead)
                finally:
                    for p in reversed(patches):
                        p.stop()
                sent[name] = batches
            self.assertEqual(sent["here"], [])
            for name, keyed in (("worker", False), ("monitor", True)):
                batches = sent[name]
                self.assertGreater(len(batches), 3, name)
                for build, batch in batches:
                    self.assertEqual(build, not keyed, name)
                    for entry in batch:
                        self.assertEqual(len(entry), 3 if keyed else 2, name)
                        if keyed:
                            self.assertEqual(entry[2], parse_ahead.line_key(entry[1]))
            for name in ("worker", "monitor"):
                for key in ("stats", "err", "state"):
                    self.assertEqual(runs["here"][key], runs[name][key],
                                     f"{key}, {name} (trial {trial}, seed {SEED})")
                self.assertSameStores(self.tmp / f"store{trial}-here",
                                      self.tmp / f"store{trial}-{name}")
            stats = runs["here"]["stats"][0]
            self.assertGreater(stats["rounds"], 200)
            self.assertTrue(stats["bad"] and stats["duplicates"] and stats["forged"], stats)
