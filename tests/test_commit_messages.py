"""What crosses the pipe to the commit process (ingest/commit_process.py): session
documents marshalled one at a time in messages of ~1 MB, then the state, which is the
go-ahead. Proven here on the process itself, without a monitor around it:

- seeded generated documents (fuzzed and extreme lines through the monitor, then hostile
  values put in their rounds: lone surrogates, NUL, CJK, 2**70, 1e308, -0.0, shared
  sub-objects, deep lists) come out as the very files, sizes and index rows (full text
  included) a synchronous commit of the same documents writes;
- a commit cut short after some of its documents (the monitor killed or interrupted
  while sending) writes nothing and saves no state; nor does one abandoned because a
  document is nested deeper than marshal goes, and the next commit is written whole;
- sending leaves the monitor's strings as they were: pickle left a UTF-8 copy inside
  every non-ASCII string it wrote (CPython caches it in the string), which the cached
  sessions then kept (7-12 MB on the short bench).
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from agent_session_monitor.ingest import commit_process
from agent_session_monitor.ingest.commit_process import CommitProcess, NotSent
from agent_session_monitor.ingest.state import load_state
from agent_session_monitor.store import fulltext
from agent_session_monitor.store.document import summarise
from agent_session_monitor.store.index import Index
from agent_session_monitor.store.sessions import dump_document, read_document
from agent_session_monitor.store.names import is_session_file
from tests.helpers import ROOT, TempDirTest, ingest, write_lines
from tests.loggen import iter_lines
from tests.test_commit_process import FAULT_VARS, index_snapshot
from tests.test_fuzz_pipeline import generated_lines

SEED = int(os.environ.get("ASM_COMMIT_MESSAGES_SEED", "7177"))

HOSTILE_TEXTS = ["\ud800", "a\udfffb", "\x00", "日本語のテキスト", "🙂" * 3, "", " ",
                 "\u2028", "ümlaut\\\"", "x" * 5000]


def hostile_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 40 else 6)
    if pick == 0:
        return rng.choice(HOSTILE_TEXTS)
    if pick == 1:
        return rng.choice([2**70, -2**64, 2**63 - 1, 0, -1, True, False, None])
    if pick == 2:
        return rng.choice([1e308, -0.0, 5e-324, 0.1, 1.5])
    if pick in (3, 4, 5):
        return "".join(rng.choice(HOSTILE_TEXTS) for _ in range(rng.randrange(4)))
    if pick == 6:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 7:
        return {rng.choice(HOSTILE_TEXTS) + str(i): hostile_value(rng, depth + 1)
                for i in range(rng.randrange(4))}
    return [[[[hostile_value(rng, depth + 4)]]]]


def hostile_documents(rng: random.Random, docs: list[dict]) -> list[dict]:
    """Each document with hostile values in some rounds' text fields and content."""
    shared = {"type": "text", "text": rng.choice(HOSTILE_TEXTS)}
    for doc in docs:
        for rnd in doc["rounds"]:
            if rng.random() < 0.5:
                rnd["question"] = rng.choice([rng.choice(HOSTILE_TEXTS),
                                              [shared, {"type": "text",
                                                        "text": hostile_value(rng)}]])
            if rng.random() < 0.3:
                rnd["answer"] = "".join(rng.choice(HOSTILE_TEXTS) for _ in range(3))
            if rng.random() < 0.3 and isinstance(rnd.get("messages"), list):
                rnd["messages"].append({"role": "user", "content": [shared, hostile_value(rng)]})
    return docs


def fts_rows(out: Path) -> list:
    db = sqlite3.connect(out / ".index.sqlite")
    try:
        return db.execute(f"SELECT r.rowid, r.sid, r.key, t.text FROM {fulltext.ROUNDS} r "
                          f"LEFT JOIN {fulltext.TABLE} t ON t.rowid = r.rowid "
                          "ORDER BY r.rowid").fetchall()
    finally:
        db.close()


def session_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if is_session_file(p.name)}


class CommitMessages(TempDirTest):
    def ran_alone(self) -> bool:
        """No fork where other threads run (CommitProcess.start declines): there, run
        this test alone in a fresh interpreter instead. True if it did (and passed)."""
        if threading.active_count() == 1:
            return False
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        run = subprocess.run([sys.executable, "-m", "unittest", self.id()], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-4000:])
        self.assertIn("OK", run.stderr[-200:])
        return True

    def generated(self, seed: int, sessions: int = 40) -> list[tuple[str, dict]]:
        rng = random.Random(seed)
        log = self.tmp / f"gen-{seed}.log"
        lines = (list(iter_lines(seed, 300_000, sessions=sessions, max_requests=5))
                 + generated_lines(rng, 150))
        rng.shuffle(lines)
        write_lines(log, lines)
        source = self.tmp / f"source-{seed}"
        ingest(source, log)
        names = sorted(n for n in os.listdir(source) if is_session_file(n))
        docs = hostile_documents(rng, [read_document(source / n) for n in names])
        return list(zip(names, docs))

    def start(self, out: Path) -> CommitProcess:
        Index(out).close()   # the monitor's index, as a catch-up finds it
        proc = CommitProcess.start(out, out / ".state.json")
        self.assertIsNotNone(proc)
        self.addCleanup(proc.close)
        return proc

    def commit(self, proc: CommitProcess, docs: list[tuple[str, dict]]) -> list[int]:
        proc.send(docs, load_state(self.tmp / "none.json")[0])
        proc.wait()
        return proc.result()

    def synchronous(self, out: Path, docs: list[tuple[str, dict]]) -> list[int]:
        """The files and rows a synchronous commit writes for these documents."""
        out.mkdir()
        index = Index(out)
        sizes, rows = [], []
        for name, doc in docs:
            summarise(doc)
            data = dump_document(doc)
            (out / name).write_bytes(data)
            sizes.append(len(data))
            rows.append((name, doc, len(data)))
        index.update(rows)
        index.close()
        return sizes

    def test_generated_documents_are_written_as_a_synchronous_commit_writes_them(self):
        if self.ran_alone():
            return
        for seed in range(SEED, SEED + 3):
            with self.subTest(seed=seed):
                docs = self.generated(seed)
                self.assertGreater(len(docs), 20)
                out = self.tmp / f"process-{seed}"
                out.mkdir()
                proc = self.start(out)
                # Three commits of one batch each, in the order they come.
                third = len(docs) // 3
                sizes = []
                for part in (docs[:third], docs[third:2 * third], docs[2 * third:]):
                    sizes += self.commit(proc, copy.deepcopy(part))
                proc.close()
                reference = self.tmp / f"sync-{seed}"
                expected = self.synchronous(reference, copy.deepcopy(docs))
                self.assertEqual(sizes, expected)
                self.assertEqual(session_files(out), session_files(reference))
                self.assertEqual(index_snapshot(out), index_snapshot(reference))
                self.assertEqual(fts_rows(out), fts_rows(reference))
                self.assertTrue(json.loads((out / ".state.json").read_text()))

    def test_many_messages_per_commit(self):
        if self.ran_alone():
            return
        # Documents over several 1 MB messages: each message is decoded as it is
        # written, the state comes last.
        docs = self.generated(SEED + 10, sessions=30)
        big = [(f"big-{i}.json", copy.deepcopy(doc)) for i, (_n, doc) in enumerate(docs)]
        for _name, doc in big:
            doc["rounds"][0]["answer"] = "漢" * 120_000   # ~360 KB marshalled each
        out = self.tmp / "process"
        out.mkdir()
        proc = self.start(out)
        sent = []
        real = commit_process._write_message
        with_spy = lambda fd, payload, timeout=None: (sent.append(payload[:1]),   # noqa: E731
                                                       real(fd, payload, timeout))
        commit_process._write_message = with_spy
        try:
            sizes = self.commit(proc, copy.deepcopy(big))
        finally:
            commit_process._write_message = real
        proc.close()
        self.assertGreater(sent.count(b"D"), 2)
        self.assertEqual(sent[-1], b"S")
        reference = self.tmp / "sync"
        self.assertEqual(sizes, self.synchronous(reference, copy.deepcopy(big)))
        self.assertEqual(session_files(out), session_files(reference))
        self.assertEqual(fts_rows(out), fts_rows(reference))

    def test_a_commit_cut_short_while_sending_writes_nothing(self):
        if self.ran_alone():
            return
        docs = self.generated(SEED + 20, sessions=20)
        rng = random.Random(SEED + 20)
        for trial in range(6):
            out = self.tmp / f"cut-{trial}"
            out.mkdir()
            proc = self.start(out)
            real = commit_process._write_message
            calls = {"n": 0}
            stop_at = rng.randrange(1, 4)

            def cut(fd, payload, timeout=None):
                calls["n"] += 1
                if calls["n"] == stop_at or payload[:1] == b"S":
                    # The monitor dies here: at most part of this message went.
                    commit_process._write_all(fd, commit_process._HEADER.pack(len(payload))
                                              + payload[:len(payload) // 2], timeout)
                    raise KeyboardInterrupt
                real(fd, payload, timeout)

            big = [(n, copy.deepcopy(d)) for n, d in docs]
            for _n, doc in big:
                doc["rounds"][0]["answer"] = "x" * 400_000
            commit_process._write_message = cut
            try:
                with self.assertRaises(KeyboardInterrupt):
                    proc.send(big, load_state(self.tmp / "none.json")[0])
            finally:
                commit_process._write_message = real
            pid = proc.pid
            proc.close()   # as the monitor's exit: the child ends, having acted on nothing
            self.assertIsNone(proc.pid, pid)
            self.assertEqual(session_files(out), {})
            self.assertFalse((out / ".state.json").exists())
            self.assertEqual([n for n in os.listdir(out) if n.startswith(".tmp-")], [])

    def test_a_document_marshal_refuses_abandons_its_commit_and_the_next_is_whole(self):
        if self.ran_alone():
            return
        docs = self.generated(SEED + 30, sessions=20)
        out = self.tmp / "process"
        out.mkdir()
        proc = self.start(out)
        deep: list = []
        for _ in range(3000):   # marshal goes 2,000 levels deep
            deep = [deep]
        refused = copy.deepcopy(docs[:5])
        refused[3][1]["rounds"][0]["answer"] = deep
        with self.assertRaises(NotSent):
            proc.send(refused, load_state(self.tmp / "none.json")[0])
        self.assertFalse(proc.in_flight)
        later = docs[5:]
        sizes = self.commit(proc, copy.deepcopy(later))
        proc.close()
        reference = self.tmp / "sync"
        self.assertEqual(sizes, self.synchronous(reference, copy.deepcopy(later)))
        self.assertEqual(session_files(out), session_files(reference))
        self.assertEqual(index_snapshot(out), index_snapshot(reference))

    def test_sending_leaves_no_utf8_copy_in_the_monitors_strings(self):
        if self.ran_alone():
            return
        docs = self.generated(SEED + 40, sessions=10)
        texts = []
        for _name, doc in docs:
            for rnd in doc["rounds"]:
                text = "".join(["答案", str(id(rnd)), "ü"])   # a fresh non-ASCII string
                rnd["answer"] = text
                texts.append(text)
        before = [sys.getsizeof(t) for t in texts]
        out = self.tmp / "process"
        out.mkdir()
        proc = self.start(out)
        self.commit(proc, docs)
        proc.close()
        # CPython counts a string's cached UTF-8 copy in its size.
        self.assertEqual([sys.getsizeof(t) for t in texts], before)
