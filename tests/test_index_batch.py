"""The index written a table at a time (one ``executemany`` per table) holds exactly the
rows, and the row ids, that writing it session by session gave: generated sequences of
commits (new sessions, sessions that grow, lose rounds, repeat a name in one batch, are
deleted and come back, CJK and surrogate text) through both, every table compared."""

from __future__ import annotations

import random
import sqlite3
import unittest

from agent_session_monitor.store import fulltext, index


def _round(rng: random.Random, i: int) -> dict:
    words = ["weather", "deploy", "北京旅游", "invoice", "cafe\u0301", "\ud800lone", "", "ok"]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
    rnd = {
        "key": f"sha256:{rng.getrandbits(128):032x}" if rng.random() < 0.9 else f"req-{i % 3}",
        "timestamp": f"2026-02-0{rng.randint(1, 3)}T{rng.randint(0, 23):02d}:"
                     f"{rng.randint(0, 59):02d}:00.000Z",
        "model": rng.choice(["gpt-4o", "claude-3", None, "m\ud800"]),
        "consumer": rng.choice(["alice", None]),
        "buckets": {"input": rng.randint(0, 900), "output": rng.randint(0, 300)},
        "cost_usd": rng.choice([None, rng.random(), 0.0]),
        "has_tool_calls": rng.random() < 0.3,
        "question": text or None,
        "answer": rng.choice([None, "sunny", [{"type": "text", "text": "北京"}]]),
    }
    if rng.random() < 0.2:
        rnd["tool_calls"] = [{"function": {"name": "get", "arguments": '{"q": 1}'}}]
    if rng.random() < 0.1:
        rnd["spawned"] = [f"agent:child:{rng.randint(0, 3)}"]
    return rnd


def _doc(sid: str, rounds: list) -> dict:
    return {"session_id": sid, "unsessioned": False, "rounds": rounds,
            "created_at": rounds[0]["timestamp"] if rounds else None,
            "updated_at": rounds[-1]["timestamp"] if rounds else None,
            "total_cost_usd": 1.5, "unpriced_rounds": 0, "model": "gpt-4o",
            "models": ["gpt-4o"], "consumers": []}


def _dump(db: sqlite3.Connection) -> dict:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "ORDER BY name")]
    out = {}
    for table in tables:
        try:
            out[table] = list(db.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid"))
        except sqlite3.Error:   # shadow tables without a rowid
            out[table] = list(db.execute(f"SELECT * FROM {table} ORDER BY 1"))
    return out


def _open() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    index.create_schema(db)
    return db


class BatchedRowsEqualRowByRow(unittest.TestCase):

    def test_generated_commit_sequences(self) -> None:
        checked_gone = checked_dup = 0
        for seed in range(60):
            rng = random.Random(seed)
            batched, each = _open(), _open()
            sessions: dict[str, list] = {}
            counter = 0
            for _commit in range(rng.randint(1, 8)):
                batch = []
                for _ in range(rng.randint(1, 12)):
                    name = f"s{rng.randint(0, 15)}.json"
                    rounds = sessions.setdefault(name, [])
                    action = rng.random()
                    if action < 0.15 and rounds:
                        del rounds[rng.randrange(len(rounds))]   # a round gone (its text too)
                        checked_gone += 1
                    for _ in range(rng.randint(0, 3)):
                        counter += 1
                        rounds.append(_round(rng, counter))
                    batch.append((name, _doc(name[:-5], list(rounds)), rng.randint(1, 10**6)))
                if rng.random() < 0.1:
                    batch.append(batch[0])   # one name twice in a batch
                    checked_dup += 1
                deleted = [n for n in sessions if rng.random() < 0.05]
                for db, write in ((batched, index.replace_prepared),
                                  (each, index._replace_prepared_each)):
                    with db:
                        for name in deleted:
                            index.delete_rows(db, name)
                        write(db, index.prepare_rows(batch, fulltext.present(db)))
                self.assertEqual(_dump(batched), _dump(each), f"seed {seed}")
        self.assertGreater(checked_gone, 10)
        self.assertGreater(checked_dup, 2)

    def test_ids_continue_after_the_largest_not_after_the_count(self) -> None:
        # Gaps (a deleted session, deleted full-text rows) must not shift the ids the
        # batch gives: SQLite's rule is the largest id plus one.
        rng = random.Random(7)
        batched, each = _open(), _open()
        docs = [(f"s{i}.json", _doc(f"s{i}", [_round(rng, i)]), 10) for i in range(6)]
        later = docs[4:] + [("n.json", _doc("n", [_round(rng, 9)]), 1)]
        for db, write in ((batched, index.replace_prepared),
                          (each, index._replace_prepared_each)):
            with db:
                write(db, index.prepare_rows(docs, fulltext.present(db)))
                index.delete_rows(db, "s1.json")
                index.delete_rows(db, "s5.json")   # the largest id
                write(db, index.prepare_rows(later, fulltext.present(db)))
        self.assertEqual(_dump(batched), _dump(each))
        sids = [r[0] for r in batched.execute("SELECT sid FROM sessions ORDER BY sid")]
        self.assertEqual(sids, [1, 3, 4, 5, 6, 7])


if __name__ == "__main__":
    unittest.main()
