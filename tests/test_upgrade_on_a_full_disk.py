"""The first run of a new version rewrites every session file of an older layout
(store/upgrade.py): the moment a store's disk use peaks, on a disk that may be nearly
full or a directory another user owns. A write that fails there (ENOSPC, EACCES) at a
seeded random file of the upgrade must be one clear line and status 1, never an
"internal error, please report it"; and the next run finishes the upgrade, with the same
bytes as an upgrade that never failed."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from agent_session_monitor.store.durable import FAULT_ENV, FAULT_ERRNO_ENV, FAULT_SCOPE_ENV
from agent_session_monitor.store.names import file_name_for
from tests.helpers import DATA, ROOT, TempDirTest, load_store
from tests.test_commit_process import index_snapshot
from tests.test_faithful import session_files

SEED = int(os.environ.get("ASM_UPGRADE_FAULT_SEED", "1414"))


class UpgradeOnAFullDisk(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.big = self.tmp / "big"
        (self.big / "sessions").mkdir(parents=True)
        (self.big / "empty.log").write_bytes(b"")
        raw = [p.read_bytes() for p in session_files(DATA / "legacy-layout3" / "sessions")]
        raw += [p.read_bytes() for p in session_files(DATA / "legacy-schema1" / "sessions")]
        for i in range(260):   # more than one batch of the upgrade (200 files)
            doc = json.loads(raw[i % len(raw)])
            doc["session_id"] = f"copy-{i}:{doc['session_id']}"
            (self.big / "sessions" / file_name_for(doc["session_id"])).write_text(json.dumps(doc))
        self.reference = self.tmp / "reference"
        shutil.copytree(self.big, self.reference)
        run = self.main_py(self.reference)
        self.assertEqual(run.returncode, 0, run.stderr)

    def main_py(self, root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items()
                 if k not in (FAULT_ENV, FAULT_ERRNO_ENV, FAULT_SCOPE_ENV)}
        clean.update(env or {})
        return subprocess.run([sys.executable, str(ROOT / "main.py"), "--log-path",
                               str(root / "empty.log"), "--output-dir", str(root / "sessions"),
                               "--allow-log-dir", str(root), "-q"],
                              env=clean, capture_output=True, text=True, timeout=300)

    def test_write_error_at_a_random_file_of_the_upgrade_is_one_line_and_resumes(self):
        rng = random.Random(SEED)
        store = self.big / "sessions"
        pristine = self.tmp / "pristine"
        shutil.copytree(store, pristine)
        for name in ("ENOSPC", "EACCES"):
            for phase in ("write", "sync", "rename"):
                step = f"{phase}:{rng.randint(1, 200)}"
                with self.subTest(errno=name, step=step):
                    # Each fault meets a store none of it is upgraded yet: a failed run
                    # keeps the files it renamed (since 9d87908 whole chunks of 128 before
                    # a later chunk's fault), and a store already upgraded past the step
                    # would let the run succeed instead of proving the error path.
                    shutil.rmtree(store)
                    shutil.copytree(pristine, store)
                    run = self.main_py(self.big, {FAULT_ENV: step, FAULT_ERRNO_ENV: name})
                    self.assertEqual(run.returncode, 1, run.stderr)
                    lines = run.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, run.stderr)
                    self.assertNotIn("internal error", lines[0])
                    self.assertTrue(lines[0].startswith(f"main.py: error: cannot upgrade the store "
                                                        f"in {store}: "), lines[0])
                    self.assertIn(os.strerror(getattr(errno, name)), lines[0])
                    self.assertEqual([p.name for p in store.iterdir() if ".tmp" in p.name], [])
        run = self.main_py(self.big)
        self.assertEqual(run.returncode, 0, run.stderr)
        names = [p.name for p in session_files(self.reference / "sessions")]
        self.assertEqual([p.name for p in session_files(store)], names)
        for name in names:
            self.assertEqual((store / name).read_bytes(),
                             (self.reference / "sessions" / name).read_bytes(), name)
        self.assertEqual(load_store(store), load_store(self.reference / "sessions"))
        self.assertEqual(index_snapshot(store), index_snapshot(self.reference / "sessions"))
