"""Symlinks planted in the session store (issue 13, item 8).

Whoever can put a file in the store directory can point ``.index.sqlite`` at another
database (which then gets our tables), ``.lock`` at a path (which is then created), a
session file at another store's conversation (which is then read, merged and served).
The monitor never follows a symlink for a file it writes or a session file it reads:
a planted one is refused with one clear line and its target is left untouched. A
world-writable store directory (where anyone can plant them) is refused with the fix.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import sqlite3
import stat
from pathlib import Path

from tests.helpers import TempDirTest, load_store, make_line, write_lines

from agent_session_monitor import cli, monitor_cli
from agent_session_monitor.reports import reader as report
from agent_session_monitor.store.durable import STORE_FILES, WRITING_MARK

# Every file the monitor (or a component it runs) writes in the store, by name
# (test_retention and test_export check that a run writes no other).
WRITTEN = STORE_FILES


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class PlantedSymlinks(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        write_lines(self.log, [make_line(i) for i in range(3)], "wb")
        self.victims = self.tmp / "victims"
        self.victims.mkdir()

    def monitor(self) -> tuple[int, str]:
        err = io.StringIO()
        code = monitor_cli.main(["--log-path", str(self.log), "--output-dir", str(self.out),
                                 "--allow-log-dir", str(self.tmp), "-q"],
                                out=io.StringIO(), err=err)
        return code, err.getvalue()

    def targets(self) -> dict[str, Path]:
        """A target of each kind: another SQLite database, a plain file, a path that does
        not exist (it must not be created), a directory."""
        db = self.victims / "other.sqlite"
        if not db.exists():
            with sqlite3.connect(db) as c:
                c.execute("CREATE TABLE precious (x)")
                c.execute("INSERT INTO precious VALUES ('keep me')")
            c.close()
        plain = self.victims / "plain.txt"
        plain.write_text("keep me\n")
        (self.victims / "dir").mkdir(exist_ok=True)
        return {"database": db, "file": plain, "dangling": self.victims / "nothing-here",
                "directory": self.victims / "dir"}

    def test_each_written_file_planted_as_a_symlink_to_each_kind_of_target(self) -> None:
        for name, (kind, target) in itertools.product(WRITTEN, self.targets().items()):
            for fresh in (True, False):    # planted in a new store, or in one in use
                with self.subTest(name=name, target=kind, fresh=fresh):
                    self.reset_store(with_data=not fresh)
                    before = digest(target) if target.is_file() else None
                    listing = sorted(os.listdir(self.victims))
                    (self.out / name).symlink_to(target)
                    code, err = self.monitor()
                    self.assertEqual(code, 1, err)
                    lines = err.strip().splitlines()
                    self.assertEqual(len(lines), 1, err)
                    self.assertIn("symbolic link", lines[0])
                    self.assertIn(name, lines[0])
                    self.assertNotIn("Traceback", err)
                    self.assertEqual(sorted(os.listdir(self.victims)), listing)  # nothing created
                    if before is not None:
                        self.assertEqual(digest(target), before, "written through")
                    self.assertTrue((self.out / name).is_symlink(), "the link is left for the user")

    def reset_store(self, with_data: bool) -> None:
        if self.out.exists():
            for p in self.out.iterdir():
                p.unlink()
        else:
            self.out.mkdir(mode=0o700)
        if with_data:
            code, err = self.monitor()
            self.assertEqual(code, 0, err)
            for p in self.out.iterdir():
                if p.name in WRITTEN and p.name != ".state.json":
                    p.unlink()
            (self.out / ".state.json").unlink()

    def test_a_session_file_symlinked_to_another_conversation_is_never_read_or_written(self) -> None:
        other_store = self.tmp / "someone-else"
        other_store.mkdir()
        secret = {"session_id": "s1", "rounds": [{"round": 1, "timestamp": "2026-01-01T00:00:00Z",
                                                  "question": "THEIR SECRET", "key": "k"}]}
        import json
        (other_store / "s1.json").write_text(json.dumps(secret))
        before = digest(other_store / "s1.json")
        self.out.mkdir(mode=0o700)
        (self.out / "s1.json").symlink_to(other_store / "s1.json")
        # Readers first: nothing of it is shown.
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(self.out), "show", "s1"], out=out, err=err)
        self.assertEqual(code, 1)
        self.assertNotIn("THEIR SECRET", out.getvalue() + err.getvalue())
        self.assertIn("symbolic link", err.getvalue())
        # The monitor: the round goes to a real file, the other store is untouched.
        code, err = self.monitor()
        self.assertEqual(code, 0, err)
        self.assertIn("symbolic link", err)
        self.assertEqual(digest(other_store / "s1.json"), before)
        docs = load_store(self.out)
        self.assertEqual(len(docs["s1"]["rounds"]), 3)
        self.assertNotIn("THEIR SECRET", (self.out / "s1.json").read_text())
        self.assertFalse((self.out / "s1.json").is_symlink())

    def test_a_fifo_planted_as_a_session_file_does_not_hang_a_reader(self) -> None:
        code, err = self.monitor()
        self.assertEqual(code, 0, err)
        os.mkfifo(self.out / "planted.json")
        reader = report.StoreReader.open(self.out, progress=False)   # indexes; must not block
        reader.close()
        (self.out / ".index.sqlite").unlink()
        reader = report.StoreReader.open(self.out, progress=False)   # in-memory index
        self.assertEqual(reader.count_sessions(), 1)
        reader.close()

    def test_a_stale_temp_symlink_is_removed_without_touching_its_target(self) -> None:
        plain = self.targets()["file"]
        before = digest(plain)
        self.out.mkdir(mode=0o700)
        (self.out / ".tmp-planted").symlink_to(plain)
        (self.out / WRITING_MARK).symlink_to(plain)   # what a killed writer leaves, planted
        code, err = self.monitor()
        self.assertEqual(code, 0, err)
        self.assertEqual(digest(plain), before)
        self.assertFalse(os.path.lexists(self.out / ".tmp-planted"))
        self.assertFalse(os.path.lexists(self.out / WRITING_MARK))

    def test_temp_names_taken_by_links_and_files_are_skipped(self) -> None:
        # Temp files are named by process and a counter (durable._open_temp): planted
        # on the very names the next writes will pick, a symlink of every kind and a
        # plain file are neither followed, written nor truncated; the batch takes the
        # next free names and is whole.
        from agent_session_monitor.store import durable

        targets = self.targets()
        files = {kind: path for kind, path in targets.items() if kind != "directory"}
        before = {kind: digest(path) for kind, path in files.items()}
        self.out.mkdir(mode=0o700)
        first = next(durable._temp_numbers) + 1
        planted = []
        for i, path in enumerate([*targets.values(), None]):
            name = self.out / f"{durable.TMP_PREFIX}{os.getpid()}-{first + i}"
            if path is None:
                name.write_bytes(b"someone else's")
            else:
                name.symlink_to(path)
            planted.append(name)
        items = [(self.out / f"s{i}.json", f"{{\"n\": {i}}}".encode()) for i in range(12)]
        durable.atomic_write_many(self.out, items)
        for path, data in items:
            self.assertEqual(path.read_bytes(), data)
            self.assertFalse(path.is_symlink())
        self.assertEqual({kind: digest(path) for kind, path in files.items()}, before)
        self.assertFalse(targets["dangling"].exists())
        self.assertEqual(os.listdir(targets["directory"]), [])
        self.assertEqual(planted[-1].read_bytes(), b"someone else's")
        self.assertTrue(all(os.path.lexists(name) for name in planted))
        self.assertEqual(sorted(n for n in os.listdir(self.out) if n.startswith(".tmp-")),
                         sorted(name.name for name in planted))

    def test_a_symlinked_index_is_not_read_by_the_cli(self) -> None:
        code, err = self.monitor()
        self.assertEqual(code, 0, err)
        other = self.tmp / "other-index.sqlite"
        (self.out / ".index.sqlite").rename(other)
        (self.out / ".index.sqlite").symlink_to(other)
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(self.out), "list"], out=out, err=err)
        self.assertEqual(code, 1, err.getvalue())
        self.assertIn("symbolic link", err.getvalue())


class WorldWritableStore(TempDirTest):
    def test_every_world_writable_mode_is_refused_with_the_fix(self) -> None:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1)], "wb")
        modes = sorted({m | stat.S_IWOTH for m in range(0o700, 0o1000)} | {0o1777, 0o2777})
        for mode in modes[::7] + [0o777, 0o1777]:
            with self.subTest(mode=oct(mode)):
                self.out.mkdir(exist_ok=True)
                os.chmod(self.out, mode)
                err = io.StringIO()
                code = monitor_cli.main(["--log-path", str(log), "--output-dir", str(self.out),
                                         "--allow-log-dir", str(self.tmp)],
                                        out=io.StringIO(), err=err)
                self.assertEqual(code, 1, err.getvalue())
                self.assertEqual(len(err.getvalue().strip().splitlines()), 1, err.getvalue())
                self.assertIn(f"chmod 700 {self.out}", err.getvalue())
                self.assertEqual(os.listdir(self.out), [], "nothing written")
        os.chmod(self.out, 0o700)
        err = io.StringIO()
        self.assertEqual(monitor_cli.main(["--log-path", str(log), "--output-dir", str(self.out),
                                           "--allow-log-dir", str(self.tmp), "-q"],
                                          out=io.StringIO(), err=err), 0, err.getvalue())
