"""Sessions serialised ahead of their checkpoint, with their index rows
(SessionStore.prepare_idle, called by the monitor while it waits for its parse worker):
whatever happens to a session after it was serialised ahead (another round, a late round
inserted before its last, a checkpoint by a commit process, a discarded batch), what a
checkpoint writes, files and index, is what it writes without working ahead, byte for
byte and row for row; and a catch-up that works ahead at every wait stores, indexes,
counts and reports what one that never does.

Model-based: seeded operation sequences on two stores side by side, one serialising ahead
at random moments with random idle thresholds; then whole catch-ups of hostile logs.
"""

from __future__ import annotations

import functools
import os
import random
import sqlite3
from unittest import mock

from tests.helpers import TempDirTest
from tests.loggen import iter_records
from tests.test_parse_ahead import READ_TIME, ParseAheadTest, hostile_log, write_log
from agent_session_monitor.ingest import parse_ahead
from agent_session_monitor.ingest.commit_process import DISABLE_ENV
from agent_session_monitor.ingest.parse_ahead import REQUEST, build_record, parse_record
from agent_session_monitor.pricing.table import load_price_table
from agent_session_monitor.store import fulltext, sessions as sessions_module
from agent_session_monitor.store.index import Index, rows_ahead
from agent_session_monitor.store.sessions import SessionStore

SEED = int(os.environ.get("ASM_WORK_AHEAD_SEED", "20261130"))


def rounds_of(seed: int, n_sessions: int) -> list[tuple]:
    """(session id, round, messages) of a generated log, in log order, with some lines
    moved later (rounds that arrive late: inserted before a session's last round)."""
    table = load_price_table(None)
    lines = [line.rstrip(b"\n") for line, _e, _k in iter_records(
        seed, sessions=n_sessions, max_requests=12, bad_every=0, non_ai_every=0,
        unsessioned_every=9, duplicate_every=0, content_scale=1)]
    rng = random.Random(seed)
    for _ in range(len(lines) // 15):
        i = rng.randrange(len(lines))
        lines.insert(min(len(lines), i + rng.randrange(2, 40)), lines.pop(i))
    out = []
    for offset, line in enumerate(lines):
        record = parse_record(line, READ_TIME, None)
        if record[0] != REQUEST:
            continue
        _k, sid, _w, _key, rnd, messages, _p, _s, _spawn = build_record(
            record, line, "f" * 16, offset, table, True)
        out.append((sid, rnd, messages))
    return out


class SameBytes(TempDirTest):
    def test_checkpoints_write_the_same_bytes_whatever_was_serialised_ahead(self):
        rng = random.Random(SEED)
        checked = ahead_used = 0
        for trial in range(12):
            plain = SessionStore(self.tmp / f"a{trial}")
            ahead = SessionStore(self.tmp / f"b{trial}")
            for store in (plain, ahead):
                store.directory.mkdir()
                store.index = Index(store.directory)
                self.addCleanup(store.index.close)
            rows_of = functools.partial(rows_ahead, with_text=fulltext.present(ahead.index.db))
            idle = rng.choice([0, 1, 3, 10, 40])
            limit = rng.choice([2**10, 2**16, 2**22])
            with mock.patch.object(sessions_module, "IDLE_ROUNDS", idle), \
                    mock.patch.object(sessions_module, "IDLE_PER_ROUND", rng.choice([0, 2])), \
                    mock.patch.object(sessions_module, "READY_BYTES", limit):
                for sid, rnd, messages in rounds_of(rng.randrange(2**31), rng.randrange(3, 25)):
                    for store in (plain, ahead):
                        # Each store its own copies: a round is the session's once added.
                        store.add_round(sid, dict(rnd), list(messages)
                                        if isinstance(messages, list) else messages)
                    for _ in range(rng.choice([0, 0, 1, 3])):
                        ahead.prepare_idle(rows_of if rng.random() < 0.8 else None)
                    step = rng.random()
                    if step < 0.04:    # a synchronous checkpoint
                        self.assertEqual(self.flushed(plain), self.flushed(ahead))
                        checked += 1
                    elif step < 0.06:  # a background one on a thread: serialised now
                        self.assertEqual([d for _s, _p, d in plain.take_dirty()],
                                         [d for _s, _p, d in ahead.take_dirty()])
                        checked += 1
                    elif step < 0.07:  # a commit process's: it serialises the documents
                        for store in (plain, ahead):
                            for session in store.take_dirty_docs():
                                self.assertIsNone(session.ready)
                    elif step < 0.075:  # a failed commit: the cache is dropped
                        for store in (plain, ahead):
                            store.discard_all()
                    ahead_used += sum(1 for s in ahead._dirty.values() if s.ready)
                self.assertEqual(self.flushed(plain), self.flushed(ahead))
                self.assertEqual(ahead._ready_bytes, 0)
                self.assertEqual(list(plain.index.db.iterdump()),
                                 list(ahead.index.db.iterdump()), f"trial {trial}")
        self.assertGreater(checked, 20)
        self.assertGreater(ahead_used, 300, "sessions were serialised ahead")

    @staticmethod
    def flushed(store: SessionStore) -> dict:
        """A synchronous checkpoint (commit.py): the files, then the index rows, those
        computed ahead among them."""
        dirty = list(store._dirty.values())
        ahead = store.rows_ahead(dirty)
        written = store.flush()
        store.index.update([(s.file_name, s.doc, s.size) for s in written], ahead)
        return {p.name: p.read_bytes() for p in sorted(store.directory.iterdir())
                if not p.name.startswith(".")}


class CatchUpsWorkingAhead(ParseAheadTest):
    def test_a_catch_up_that_serialises_ahead_at_every_wait_stores_the_same(self):
        """Every wait for the worker (forced: before every batch received) serialises
        every session it may at once (no idle threshold), with the commit process (its
        checkpoints drop what was serialised ahead) and with commits on a thread (they
        write it)."""
        real_receive = parse_ahead.ParseWorker.receive
        worked = []

        def receive(worker):
            while worker._idle():
                worked.append(1)
            return real_receive(worker)

        rng = random.Random(SEED + 1)
        # With the commit process and the index rows of the last checkpoint written by
        # index_helper.py's child; then commits on a thread and that checkpoint's rows here.
        for trial, (commit_process, split) in enumerate((("1", "0"), ("0", "-1"))):
            lines = hostile_log(rng, n_real=500)
            log = self.tmp / f"access{trial}.log"
            write_log(log, lines)
            runs = {}
            for ahead in (-1, 0):
                with mock.patch.object(sessions_module, "IDLE_ROUNDS", 0), \
                        mock.patch.object(sessions_module, "IDLE_PER_ROUND", 0), \
                        mock.patch.object(parse_ahead.ParseWorker, "receive", receive), \
                        mock.patch("agent_session_monitor.ingest.monitor._AheadRun.last_batch",
                                   lambda run, mon: True), \
                        mock.patch.dict(os.environ, {DISABLE_ENV: commit_process,
                                                     "ASM_SPLIT_COMMIT_ROUNDS": split}):
                    runs[ahead] = self.passes(self.tmp / f"w{trial}{ahead}", [log], ahead)
            for key in ("stats", "err", "state"):
                self.assertEqual(runs[-1][key], runs[0][key], f"{key} (trial {trial})")
            self.assertSameStores(self.tmp / f"w{trial}-1", self.tmp / f"w{trial}0")
            dumps = []
            for ahead in (-1, 0):
                db = sqlite3.connect(self.tmp / f"w{trial}{ahead}" / ".index.sqlite")
                dumps.append(list(db.iterdump()))
                db.close()
            self.assertEqual(dumps[0], dumps[1], f"index (trial {trial})")
        self.assertGreater(len(worked), 200, "sessions were serialised ahead")
