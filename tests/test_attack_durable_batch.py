"""Attacks on the batched durability of store/durable.py (one syncfs per big batch).

syncfs(2) reports a writeback error (EIO, ENOSPC at writeback) only against the error
sequence sampled when its descriptor was opened, once anyone else on the filesystem (a
colleague's syncfs on a shared disk) has seen it. A directory descriptor opened at the
first full chunk would therefore miss an error on the pages of the files written before:
the batch renamed, the state advanced, the data lost. Generated: seeded batch sizes
around the chunk boundaries; the descriptor given to syncfs must have been opened before
the batch's first temp file, and be the directory's; whatever the size, no descriptor
is left open and the directory is fsynced after the renames.
"""

from __future__ import annotations

import os
import random
from unittest import mock

from agent_session_monitor.store import durable
from agent_session_monitor.store.durable import CHUNK_FILES, atomic_write_many
from tests.helpers import TempDirTest


class SyncfsDescriptorOpenedBeforeTheBatch(TempDirTest):
    def test_the_synced_descriptor_predates_every_file_of_the_batch(self):
        self.out.mkdir()
        rng = random.Random(1130)
        sizes = [1, 2, CHUNK_FILES - 1, CHUNK_FILES, CHUNK_FILES + 1, 2 * CHUNK_FILES,
                 3 * CHUNK_FILES + 5] + [rng.randrange(1, 5 * CHUNK_FILES) for _ in range(6)]
        real_open, real_temp, real_fsync = os.open, durable._open_temp, os.fsync
        for n in sizes:
            with self.subTest(n=n):
                events: list = []
                dir_ino = os.stat(self.out).st_ino

                def opening(path, flags, *a, **k):
                    fd = real_open(path, flags, *a, **k)
                    events.append(("open", fd, os.fstat(fd).st_ino))
                    return fd

                def temp(folder, data):
                    out = real_temp(folder, data)
                    events.append(("temp", out[0], None))
                    return out

                def syncfs(fd):
                    events.append(("syncfs", fd, os.fstat(fd).st_ino))
                    return 0

                def fsync(fd):
                    events.append(("fsync", fd, os.fstat(fd).st_ino))
                    return real_fsync(fd)

                before = set(os.listdir(f"/proc/{os.getpid()}/fd"))
                with mock.patch.object(os, "open", opening), \
                        mock.patch.object(durable, "_open_temp", temp), \
                        mock.patch.object(os, "fsync", fsync), \
                        mock.patch.object(durable, "_syncfs_function", lambda: syncfs):
                    atomic_write_many(self.out, [(self.out / f"s{i}.json", b"{}")
                                                 for i in range(n)])
                self.assertEqual(set(os.listdir(f"/proc/{os.getpid()}/fd")), before)
                synced = [e for e in events if e[0] == "syncfs"]
                self.assertEqual(len(synced), 1 if n >= CHUNK_FILES else 0)
                first_temp = next(i for i, e in enumerate(events) if e[0] == "temp")
                for _kind, fd, ino in synced:
                    self.assertEqual(ino, dir_ino)
                    opened = [i for i, e in enumerate(events)
                              if e[0] == "open" and e[1] == fd and e[2] == dir_ino]
                    self.assertTrue(opened and opened[-1] < first_temp,
                                    "syncfs's descriptor was opened after the batch began")
                self.assertEqual(events[-1][0], "fsync", events[-3:])   # the directory, after the renames
                self.assertEqual(events[-1][2], dir_ino, events[-4:])
                self.assertEqual(len(os.listdir(self.out)), max(sizes[:sizes.index(n) + 1]))


if __name__ == "__main__":
    import unittest

    unittest.main()
