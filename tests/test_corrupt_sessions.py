"""A corrupt session file (issue 13, item 12): a disk fault, a hand edit, a half-copied
backup. Whatever the damage, every reader says *which file* is corrupt and why: ``show``
(not "no session X; did you mean: X"), the web page of that session (no 500, no
traceback), ``--rebuild-index`` (names every file it skipped, exits non-zero, deletes
nothing). Corruptions are generated: truncations at random offsets, bytes that are not
UTF-8, wrong JSON types in every field readers use, deep nesting, a symlink, a directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path

from tests.helpers import TempDirTest, ingest, make_line, write_lines

from agent_session_monitor import cli, monitor_cli
from agent_session_monitor.web import routes as webapp

VICTIM = "victim"


def corruptions(good: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Damage that leaves no session document: the file is corrupt."""
    doc = json.loads(good)
    out = [("empty", b""), ("nul bytes", b"\0" * 64), ("not json", b"hello"),
           ("a list", b"[]"), ("a string", b'"x"'), ("no rounds", b'{"session_id":"victim"}'),
           ("deep nesting", b"[" * 200_000 + b"]" * 200_000),
           ("not utf-8", good[:40] + b"\xff\xfe\x80" + good[43:])]
    for i in range(12):
        cut = rng.randrange(1, len(good) - 1)
        out.append((f"truncated at {cut}", good[:cut]))
    for field, value in (("rounds", 3), ("rounds", {})):
        bad = dict(doc, **{field: value})
        out.append((f"{field}={value!r}", json.dumps(bad).encode()))
    return out


def other_ids(good: bytes) -> list[tuple[str, bytes]]:
    """A sound document under this id's file name holding another id: to ``show`` and
    the web page of this id, its file is damaged (two ids never share a name). The
    index takes it under the id it holds (older versions named files otherwise)."""
    return [(f"session_id={v!r}", json.dumps(dict(json.loads(good), session_id=v)).encode())
            for v in ("someone-else", 7, "VICTIM")]


def repairable(good: bytes) -> list[tuple[str, bytes]]:
    """Wrong values inside a sound document: repaired on load and flagged (sanitize.py),
    never a crash, never called corrupt."""
    out = []
    for field, value in (("timestamp", 12), ("timestamp", "yesterday"), ("timestamp", None),
                         ("input_tokens", "100"), ("output_tokens", [1]),
                         ("input_tokens", True), ("cost_usd", "free"), ("cost_usd", {}),
                         ("model", {"a": 1}), ("messages", 5)):
        bad = json.loads(good)
        bad["rounds"][0][field] = value
        out.append((f"round {field}={value!r}", json.dumps(bad).encode()))
    return out


class CorruptSessionFile(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        log = self.tmp / "access.log"
        write_lines(log, [make_line(i, session=s) for i, s in
                          enumerate([VICTIM, VICTIM, "bystander-1", "bystander-2"])], "wb")
        ingest(self.out, log)
        self.file = self.out / f"{VICTIM}.json"
        self.good = self.file.read_bytes()

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(self.out), *argv], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def rebuild(self) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = monitor_cli.main(["--rebuild-index", "--output-dir", str(self.out)],
                                out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def check_readers(self, what: str, indexed: bool) -> None:
        # show: which file, why; no suggestion of the very id asked for
        code, out, err = self.cli("show", VICTIM)
        self.assertEqual(code, 1, (what, out, err))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(str(self.file), err)
        self.assertIn("corrupt", err)
        self.assertNotIn("did you mean", err)
        self.assertNotIn("Traceback", err)
        # the other readers go on
        for argv in (["list"], ["stats-model"], ["stats-date"], ["show", "bystander-1"]):
            code, out, err = self.cli(*argv)
            self.assertEqual(code, 0, (what, argv, err))
            self.assertNotIn("internal error", err)
        # the web page and its JSON say so, without a 500 or a traceback
        log = io.StringIO()
        app = webapp.WebApp(self.out, log=log)
        app.gate.port = 8888
        for path in (f"/session?id={VICTIM}", f"/api/session?id={VICTIM}"):
            response = app.handle("GET", path, {"Host": "127.0.0.1:8888"})
            self.assertNotEqual(response.status, 500, (what, path))
            self.assertNotEqual(response.status, 404, (what, path))
            self.assertIn(self.file.name.encode(), response.body, (what, path))
            self.assertIn(b"corrupt", response.body, (what, path))
            self.assertNotIn(str(self.out).encode(), response.body, "no server path shown")
        self.assertNotIn("Traceback", log.getvalue(), what)
        self.assertEqual(app.handle("GET", "/", {"Host": "127.0.0.1:8888"}).status, 200)

    def test_every_kind_of_damage_is_named_by_show_web_and_rebuild(self) -> None:
        rng = random.Random(12)
        cases = corruptions(self.good, rng)
        for what, data in cases:
            with self.subTest(damage=what):
                self.file.write_bytes(self.good)
                self.assertEqual(self.rebuild()[0], 0)
                self.file.write_bytes(data)
                self.check_readers(what, indexed=True)       # the index still lists it
                code, out, err = self.rebuild()
                self.assertEqual(code, 1, (what, out, err))
                self.assertIn(str(self.file), err)
                self.assertIn("2 of 3 session files", out)
                self.assertNotIn("Traceback", err)
                self.assertEqual(self.file.read_bytes(), data, "the corrupt file is kept as is")
                self.check_readers(what, indexed=False)      # after a rebuild without it
        self.assertGreater(len(cases), 20)

    def test_a_file_holding_another_id_is_named_by_show_and_web(self) -> None:
        for what, data in other_ids(self.good):
            with self.subTest(damage=what):
                self.file.write_bytes(data)
                self.check_readers(what, indexed=True)

    def test_a_store_without_index_names_the_files_its_figures_leave_out(self) -> None:
        self.file.write_bytes(self.good[:77])
        (self.out / ".index.sqlite").unlink()
        for argv in (["list"], ["stats-model"], ["export", "-"]):
            with self.subTest(argv=argv):
                code, out, err = self.cli(*argv)
                self.assertEqual(code, 0, err)
                self.assertIn(f"session file {self.file} is corrupt", err)
                self.assertIn("left out", err)

    def test_a_file_deleted_after_it_was_indexed_is_named_missing(self) -> None:
        self.file.unlink()
        code, out, err = self.cli("show", VICTIM)
        self.assertEqual(code, 1, err)
        self.assertIn(str(self.file), err)
        self.assertIn("missing", err)
        self.assertNotIn("did you mean", err)
        app = webapp.WebApp(self.out, log=io.StringIO())
        app.gate.port = 8888
        response = app.handle("GET", f"/session?id={VICTIM}", {"Host": "127.0.0.1:8888"})
        self.assertEqual(response.status, 503)
        self.assertIn(b"missing", response.body)
        code, out, err = self.rebuild()          # the index forgets it: now simply unknown
        self.assertEqual(code, 0, err)
        code, out, err = self.cli("show", VICTIM)
        self.assertIn("no session", err)
        self.assertNotIn("did you mean: victim", err)

    def test_wrong_values_in_a_sound_file_are_repaired_not_called_corrupt(self) -> None:
        for what, data in repairable(self.good):
            with self.subTest(damage=what):
                self.file.write_bytes(data)
                code, out, err = self.rebuild()
                self.assertEqual(code, 0, (what, err))
                code, out, err = self.cli("show", VICTIM)
                self.assertEqual(code, 0, (what, err))
                app = webapp.WebApp(self.out, log=io.StringIO())
                app.gate.port = 8888
                response = app.handle("GET", f"/session?id={VICTIM}", {"Host": "127.0.0.1:8888"})
                self.assertEqual(response.status, 200, what)

    def test_a_rebuild_names_every_skipped_file(self) -> None:
        damaged = []
        for i in range(5):
            path = self.out / f"broken-{i}.json"
            path.write_bytes(b"{" * (i + 1))
            damaged.append(path)
        link = self.out / "linked.json"
        link.symlink_to(self.file)
        (self.out / "a-directory.json").mkdir()
        code, out, err = self.rebuild()
        self.assertEqual(code, 1, err)
        for path in damaged + [link, self.out / "a-directory.json"]:
            self.assertIn(str(path), err)
            self.assertTrue(os.path.lexists(path))
        self.assertIn("3 of 10 session files", out)
        self.assertIn("symbolic link", err)

    def test_reprice_names_the_files_it_could_not_reprice(self) -> None:
        self.file.write_bytes(self.good[:50])
        out, err = io.StringIO(), io.StringIO()
        code = monitor_cli.main(["--reprice", "--output-dir", str(self.out)], out=out, err=err)
        self.assertEqual(code, 1, err.getvalue())
        self.assertIn(str(self.file), err.getvalue())
        self.assertEqual(self.file.read_bytes(), self.good[:50])
