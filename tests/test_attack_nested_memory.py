"""Attack: memory of a catch-up of content that costs far more objects than bytes (a
client's request body).

The monitor bounded what it holds by serialised bytes (SessionStore: 12 MB of pending
content in a plain pass, a cache of session documents by their files' bytes). A message
whose content is an array nested 100-950 deep costs 2 bytes a level in the log and ~88
bytes a level in memory (a list object, its slot, its GC header); `[[],[],...]` ~24
times its bytes, `[{"a":1},...]` ~30 times: 15 MB of such lines held 693 MB resident,
against a budget of 300 MB for the full-size short log. Who gains: any client, to get
the monitor of everyone's bill OOM-killed. Now the store also counts the containers a
line leaves in memory (store/sessions.py, PENDING_OBJECTS): past them a commit is due
and, written, the sessions leave the cache; the parse worker weighs its tips the same.

Generated (seeded): 7,000 lines (~9 MB) nested 100-950 deep over 1,400 sessions, and a
class of 9,000 lines (~14 MB) mixing six shapes (deep, wide lists of empty lists, many
tiny dicts, many floats, long strings, an ordinary chat), each line's shape drawn at
random, over 1,800 sessions each touched every 1,800 lines (so every cached session is
dirty again at each commit), run plain and with the parse worker and commit process
forced. main.py's peak RSS (getrusage of its children: the largest process) must stay
under 300 MB, and every round must be billed: the tokens stored equal those logged
(nothing of the bill is dropped to save memory). A store-level class checks the
trigger: pending_full fires for dense content of each shape and never for chat.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unittest

from tests.helpers import ROOT, TempDirTest

BUDGET = 300 * 10**6

SHAPES = ("deep", "wide", "dicts", "floats", "strings", "chat")


def content(rng: random.Random, shape: str, n: int) -> str:
    """One message content of ``shape`` as JSON text."""
    if shape == "deep":
        depth = rng.randrange(100, 950)
        return "[" * depth + json.dumps(f"x{n}") + "]" * depth
    if shape == "wide":
        return "[" + ",".join(["[]"] * rng.randrange(200, 600)) + "]"
    if shape == "dicts":
        return "[" + ",".join(['{"a":1}'] * rng.randrange(100, 300)) + "]"
    if shape == "floats":
        return "[" + ",".join(f"{rng.randrange(10**6)}.5" for _ in range(rng.randrange(100, 300))) + "]"
    if shape == "strings":
        return json.dumps("y" * rng.randrange(500, 3000) + str(n))
    return json.dumps(f"an ordinary question number {n} " + "lorem ipsum " * rng.randrange(5, 80))


def hostile_log(path, lines: int, seed: int, shapes=SHAPES) -> int:
    """Write the log; the sum of its input tokens (each line bills 10 + its number)."""
    rng = random.Random(seed)
    sessions = lines // 5 or 1
    with open(path, "wb") as f:
        for n in range(lines):
            ai = ('{"input_token":%d,"messages":[{"role":"user","content":%s}],'
                  '"model":"gpt-4o","output_token":1,"session_id":"s%d"}'
                  % (10 + n, content(rng, rng.choice(shapes), n), n % sessions))
            f.write(json.dumps({"ai_log": ai, "start_time": "2026-02-01T09:00:00.000Z",
                                "request_id": f"r{n}"}).encode() + b"\n")
    return sum(10 + n for n in range(lines))


_MEASURE = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(run.returncode, peak)
sys.stderr.write(run.stderr)
"""

PLAIN = {"ASM_PARSE_AHEAD_BYTES": "-1", "ASM_COMMIT_PROCESS": "0",
         "ASM_SPLIT_COMMIT_ROUNDS": "-1"}
FORKED = {"ASM_PARSE_AHEAD_BYTES": "0"}


class NestedContentMemory(TempDirTest):
    def catch_up(self, log, mode: dict) -> int:
        """Run main.py over ``log`` into a fresh store; its peak RSS (bytes)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        env.update(mode)
        out = self.tmp / f"store-{len(os.listdir(self.tmp))}"
        run = subprocess.run(
            [sys.executable, "-c", _MEASURE, sys.executable, str(ROOT / "main.py"),
             "--log-path", str(log), "--allow-log-dir", str(self.tmp),
             "--output-dir", str(out), "-q"],
            env=env, capture_output=True, text=True, timeout=900)
        code, peak = map(int, run.stdout.split())
        self.assertEqual(code, 0, run.stderr)
        self.stored = _stored_tokens(out)
        return peak

    def test_deeply_nested_message_content_stays_within_the_memory_budget(self):
        log = self.tmp / "access.log"
        tokens = hostile_log(log, 7000, 950, shapes=("deep",))
        peak = self.catch_up(log, PLAIN)
        self.assertLess(peak, BUDGET, f"peak RSS {peak / 1e6:.0f} MB")
        self.assertEqual(self.stored, (7000, tokens))

    def test_a_mix_of_object_dense_shapes_stays_within_the_budget_in_every_mode(self):
        log = self.tmp / "access.log"
        tokens = hostile_log(log, 9000, 16)
        for name, mode in (("plain", PLAIN), ("worker and commit process", FORKED)):
            with self.subTest(name):
                peak = self.catch_up(log, mode)
                self.assertLess(peak, BUDGET, f"{name}: peak RSS {peak / 1e6:.0f} MB")
                self.assertEqual(self.stored, (9000, tokens), name)


def _stored_tokens(out) -> tuple[int, int]:
    rounds = tokens = 0
    for name in os.listdir(out):
        if name.endswith(".json") and not name.startswith("."):
            with open(out / name, "rb") as f:
                doc = json.load(f)
            rounds += len(doc["rounds"])
            tokens += doc["total_input_tokens"]
    return rounds, tokens


def add_line(store, rng: random.Random, shape: str, n: int, sessions: int = 50) -> object:
    """Add one seeded line of ``shape`` to ``store`` as the monitor does (the containers
    it leaves noted); its parsed request, which the caller keeps alive."""
    from agent_session_monitor.ingest.parse import parse_line
    from agent_session_monitor.store.sessions import containers

    ai = ('{"input_token":1,"messages":[{"role":"user","content":%s}],'
          '"model":"m","output_token":1,"session_id":"s%d"}'
          % (content(rng, shape, n), n % sessions))
    line = json.dumps({"ai_log": ai, "start_time": "2026-02-01T09:00:00Z"}).encode()
    before = containers()
    req = parse_line(line, "2026-02-01T09:00:00Z")
    rnd = {"key": f"k{n}", "timestamp": "2026-02-01T09:00:00Z"}
    store.add_round(req.session_id, rnd, req.ai.get("messages"), len(line))
    store.note_objects(containers() - before)
    return req


def new_store():
    from agent_session_monitor.store.sessions import SessionStore

    store = SessionStore(ROOT, store_content=True)
    store._names = set()   # every session new: nothing is read from disk (nor written)
    return store


class DenseContentTrigger(unittest.TestCase):
    """The store's trigger, per shape (seeded lines until a commit is due): content of a
    dense shape (deep, wide, tiny dicts) trips PENDING_OBJECTS containers long before its
    bytes reach the limit; floats, long strings and chat (a few times their bytes in
    memory at most) reach the byte limit first and are not dense."""

    def test_each_dense_shape_trips_the_container_count_and_chat_does_not(self):
        from agent_session_monitor.store import sessions

        limit = 12 * 2**20
        for shape in SHAPES:
            rng = random.Random(shape)
            store = new_store()
            held = []
            while not store.pending_full(limit) and store.pending_bytes < limit:
                held.append(add_line(store, rng, shape, len(held)))
            with self.subTest(shape):
                if shape in ("deep", "wide", "dicts"):
                    self.assertGreaterEqual(store.pending_objects, sessions.PENDING_OBJECTS)
                    self.assertLess(store.pending_bytes, limit // 2)
                    self.assertTrue(store.dense)
                else:   # a few times their bytes at most: the byte limit holds them
                    self.assertGreaterEqual(store.pending_bytes, limit)
                    self.assertFalse(store.dense)

    def test_small_dense_batches_empty_the_cache_only_once_they_add_up(self):
        """Batches of a few lines (a follow pass; the 60 KB checkpoints of
        test_parse_ahead), one of a dense shape among 0-3 chat lines, most of them dense:
        emptying the cache after each cost the parse worker's links (their marks go with
        the sessions) for a few KB; the cache lets every clean session go once dense
        batches hold DENSE_HELD containers in all, and not before."""
        from agent_session_monitor.store.sessions import DENSE_HELD

        for seed in range(6):
            rng = random.Random(seed)
            store, held, dense_objects, batches, dense = new_store(), [], 0, 0, 0
            with self.subTest(seed=seed):
                while True:
                    shapes = ["chat"] * rng.randrange(4) + [rng.choice(["deep", "wide", "dicts"])]
                    rng.shuffle(shapes)
                    for shape in shapes:
                        held.append(add_line(store, rng, shape, len(held), sessions=400))
                    cached = len(store._sessions)
                    if store.dense:
                        dense += 1
                        dense_objects += store.pending_objects
                    store.take_dirty_docs()
                    store.evict()
                    batches += 1
                    if dense_objects >= DENSE_HELD:
                        self.assertEqual(len(store._sessions), 0)
                        break
                    self.assertEqual(len(store._sessions), cached, f"batch {batches}")
                self.assertGreater(dense, 10)
                self.assertGreater(dense, batches // 2)
                # and it counts again from nothing
                held.append(add_line(store, rng, "deep", len(held)))
                store.take_dirty_docs()
                store.evict()
                self.assertEqual(len(store._sessions), 1)


if __name__ == "__main__":
    unittest.main()
