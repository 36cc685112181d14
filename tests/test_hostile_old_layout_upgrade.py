"""An older store (layout-3 files beside schema-1 ones) holding the values an
older version or a hand edit may have left (NaN, 1e308, 2**64 tokens, "12" for a count,
year-1 times, odd types for messages, keys and buckets) is upgraded to the current
layout by the next run, then read by every CLI command and web route and by the
README-only original reader; the monitor goes on writing into it. Seeded random."""

from __future__ import annotations

import json
import os
import random
import shutil

from agent_session_monitor.store.names import is_session_file
from agent_session_monitor.store.ondisk import LAYOUT
from tests.helpers import DATA, TempDirTest, write_lines
from tests.loggen import iter_lines
from tests.test_faithful import original_reader
from tests.test_fuzz_pipeline import ReaderSweep, hostile_copy, monitor_main

SEED = int(os.environ.get("ASM_UPGRADE_FUZZ_SEED", "1"))


class HostileOldLayoutUpgrade(TempDirTest):
    def test_old_layout_store_with_hostile_values_is_upgraded_and_read_by_every_reader(self):
        rng = random.Random(SEED + 40)
        root = self.tmp / "old"
        shutil.copytree(DATA / "legacy-layout3", root)
        store, log = root / "sessions", root / "access.log"
        # Schema-1 files (the version before the faithful layout) beside the layout-3 ones.
        for path in (DATA / "legacy-schema1" / "sessions").iterdir():
            if is_session_file(path.name):
                shutil.copy(path, store / path.name)
        names = sorted(n for n in os.listdir(store) if is_session_file(n))
        self.assertGreater(len(names), 5)
        for name in names:
            doc = json.loads((store / name).read_bytes())
            while True:
                try:
                    doc = hostile_copy(doc, rng)
                    break
                except TypeError:   # a mutation on top of an odd value: draw again
                    continue
            (store / name).write_text(json.dumps(doc, allow_nan=True))
        for index in store.glob(".index.sqlite*"):
            index.unlink()
        argv = ["--output-dir", str(store), "--log-path", str(log), "--allow-log-dir", str(root)]
        code, _out, err = monitor_main(*argv)
        self.assertEqual(code, 0, err)
        self.assertNotIn("internal error", err)
        upgraded = [n for n in names if json.loads((store / n).read_bytes()).get("layout") == LAYOUT]
        self.assertGreater(len(upgraded), len(names) // 2, "the upgrade left most files as they were")
        ReaderSweep(self, store, rng).run(sample=len(names))
        original_reader(store)
        # The monitor goes on writing into it, and the readers still read it.
        write_lines(log, [line for _, line in zip(range(150), iter_lines(SEED + 41, 500_000))])
        code, _out, err = monitor_main(*argv)
        self.assertEqual(code, 0, err)
        ReaderSweep(self, store, rng).run(sample=6)
        original_reader(store)
