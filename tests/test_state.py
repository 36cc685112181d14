"""A state file of the right syntax and the wrong content (failure-scenarios.md C6, C7):
offsets as strings, negative, float, bool or beyond any file; ``sources`` as an object or
a list of junk; deep nesting; missing keys. Each is treated like an unreadable state (the
backup, else one clear line and exit 2, and ``--reset-from beginning`` recovers), or,
when it is usable, converges to the same store: every round once. Never "internal error".

    ASM_STATE_CASES=2000 python3 -m unittest tests.test_state   # more generated cases
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys

from tests.helpers import TempDirTest, make_line, stored_inputs, write_lines

CASES = int(os.environ.get("ASM_STATE_CASES", "160"))
SEED = int(os.environ.get("ASM_STATE_SEED", "13"))
DEEP = "@@DEEP@@"
HOSTILE = ["12", "", "-1", -1, -2**63, 1.5, 0.0, 1e308, True, False, None, 2**63, 2**64,
           10**30, 10**400, [], {}, [1, 2], {"offset": 1}, "\u0000", "../../etc/passwd",
           "a" * 64, "z" * 64, DEEP]
SOURCE_FIELDS = ["fp", "fp_len", "dev", "ino", "path", "offset", "size", "mtime", "tail",
                 "head_fp", "head_len", "gz", "live", "gz_complete", "missing_since",
                 "loss_reported"]


def mutate(state: dict, rng: random.Random) -> dict:
    """One to three hostile edits anywhere a hand, a disk or an old bug could make them."""
    state = copy.deepcopy(state)
    for _ in range(rng.randint(1, 3)):
        site = rng.random()
        value = rng.choice(HOSTILE)
        if site < 0.12:
            key = rng.choice(["version", "sources", "counters", "alerts", "extra"])
            if rng.random() < 0.3:
                state.pop(key, None)
            else:
                state[key] = value
        elif site < 0.22 and isinstance(state.get("sources"), list):
            src = state["sources"]
            if rng.random() < 0.5 and src:
                src[rng.randrange(len(src))] = value
            else:
                src.insert(rng.randrange(len(src) + 1), value)
        elif site < 0.8 and isinstance(state.get("sources"), list) and state["sources"]:
            src = rng.choice(state["sources"])
            if not isinstance(src, dict):
                continue
            name = rng.choice(SOURCE_FIELDS)
            roll = rng.random()
            if roll < 0.2:
                src.pop(name, None)
            elif roll < 0.45 and name in ("offset", "size", "dev", "ino", "fp_len", "head_len"):
                # Right type, wrong value: beyond the file, another file's, zero.
                src[name] = rng.choice([0, 1, 63, 64, 65, 1000, 10**6, 2**40, 2**63 - 1,
                                        (src.get(name) or 0) + rng.randrange(-500, 500)])
            else:
                src[name] = value
        elif site < 0.9:
            counters = state.get("counters")
            if isinstance(counters, dict):
                counters[rng.choice(["lines_read", "bad_lines", "passes", "x"])] = value
        else:
            alerts = state.setdefault("alerts", {}) if isinstance(state.get("alerts"), dict) else {}
            alerts[rng.choice(["fired", "outbox"])] = rng.choice(
                [value, "[1,2]", "{}", "[{}]", "{not json", "[" * 5000])
    return state


def dump(state: dict) -> bytes:
    text = json.dumps(state)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


class HostileStateFile(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        lines = [make_line(n, session=f"s{n % 3}", request_id=n % 2 == 0) for n in range(1, 61)]
        write_lines(self.tmp / "access.log.1", lines[:20])
        write_lines(self.log, lines[20:40])
        self.run_ok()
        write_lines(self.log, lines[40:])
        self.run_ok()
        self.good = json.loads((self.out / ".state.json").read_text())
        self.expected = [100 + n for n in range(1, 61)]
        self.assertEqual(stored_inputs(self.out), self.expected)
        self.pristine = self.tmp / "pristine"
        shutil.copytree(self.out, self.pristine)

    def run_ok(self, *extra: str) -> str:
        code, _out, err = self.run_monitor(self.log, extra=["-q", *extra])
        self.assertEqual(code, 0, err)
        return err

    def restore(self) -> None:
        shutil.rmtree(self.out)
        shutil.copytree(self.pristine, self.out)

    def test_generated_malformed_states_are_refused_or_converge_never_crash(self):
        rng = random.Random(SEED)
        outcomes = {"refused": 0, "backup": 0, "accepted": 0}
        for case in range(CASES):
            self.restore()
            bad = mutate(self.good, rng)
            (self.out / ".state.json").write_bytes(dump(bad))
            keep_backup = rng.random() < 0.25
            if not keep_backup:
                (self.out / ".state.json.bak").write_bytes(dump(mutate(self.good, rng)))
            where = f"case {case} (ASM_STATE_SEED={SEED}): {json.dumps(bad)[:300]}"
            code, _out, err = self.run_monitor(self.log, extra=["-q"])
            self.assertNotIn("internal error", err, where)
            self.assertIn(code, (0, 2), where + err)
            if code == 2:
                outcomes["refused"] += 1
                self.assertEqual(len(err.strip().splitlines()), 1, where + err)
                self.assertIn("--reset-from", err, where)
                err = self.run_ok("--reset-from", "beginning")
                self.assertIn("re-reading logs from the beginning", err, where)
            else:
                outcomes["backup" if "resumed from" in err else "accepted"] += 1
            self.assertEqual(stored_inputs(self.out), self.expected, where + err)
            write_lines(self.log, [make_line(1000 + case, session="late")])
            self.run_ok()            # and it goes on: the next line is read, once
            self.assertEqual(stored_inputs(self.out), self.expected + [1100 + case], where)
            self.log.write_bytes(self.log.read_bytes()[: -len(make_line(1000 + case, session="late"))])
        # The generator reaches every outcome (a generator that only ever made one kind
        # of state would prove little).
        self.assertTrue(all(outcomes.values()), outcomes)
        if os.environ.get("ASM_STATE_REPORT"):
            print(f"\nstate cases: {outcomes}", file=sys.__stderr__)

    def test_wrong_types_are_treated_as_an_unreadable_state(self):
        cases = {
            "sources is an object": {**self.good, "sources": {"a": 1}},
            "sources is a list of junk": {**self.good, "sources": [1, "x", None]},
            "an offset is a string": self._source(offset="120"),
            "an offset is negative": self._source(offset=-5),
            "an offset is a float": self._source(offset=12.5),
            "an offset is a bool": self._source(offset=True),
            "an offset is beyond 2**63": self._source(offset=2**64),
            "a source has no fp": self._source(fp=None, drop="fp"),
            "counters are a list": {**self.good, "counters": [1]},
            "version is true": {**self.good, "version": True},
        }
        for name, bad in cases.items():
            with self.subTest(name):
                self.restore()
                for file in (".state.json", ".state.json.bak"):
                    (self.out / file).write_bytes(dump(bad))
                code, _out, err = self.run_monitor(self.log, extra=["-q"])
                self.assertEqual(code, 2, err)
                self.assertRegex(err, r"^main.py: error: state file .* is unreadable .*"
                                      r"--reset-from beginning")
                self.run_ok("--reset-from", "beginning")
                self.assertEqual(stored_inputs(self.out), self.expected)
        with self.subTest("nested 100,000 deep"):
            self.restore()
            (self.out / ".state.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
            err = self.run_ok()
            self.assertIn("resumed from", err)

    def _source(self, drop: str | None = None, **changes) -> dict:
        state = copy.deepcopy(self.good)
        state["sources"][-1].update(changes)
        if drop:
            del state["sources"][-1][drop]
        return state

    def test_state_offset_beyond_the_file_reads_the_file_again_exactly_once(self):
        # Same identity, offset past the end: the file was truncated and regrew, or the
        # state is ahead of it. Nothing appended since may be skipped (it was: 50 of 50).
        state = copy.deepcopy(self.good)
        live = next(s for s in state["sources"] if s["path"] == str(self.log))
        live["offset"] = 10**15
        live["size"] = 10**15
        (self.out / ".state.json").write_text(json.dumps(state))
        write_lines(self.log, [make_line(n, session="after") for n in range(200, 250)])
        err = self.run_ok()
        self.assertNotIn("loss", err)
        self.assertEqual(stored_inputs(self.out), self.expected + [100 + n for n in range(200, 250)])


class StateBackup(TempDirTest):
    def test_a_writer_killed_after_the_backup_leaves_no_temp_file_at_the_next_save(self):
        """Killed between making the old state the backup (a hard link) and writing the
        new one: the next save's rename of its link onto the backup is a no-op (the same
        file); its temp link must still go (a cron pass lists the store only after an
        unclean end)."""
        from agent_session_monitor.ingest.state import State, load_state, save_state

        self.out.mkdir()
        path = self.out / ".state.json"
        save_state(path, State(counters={"passes": 1}))
        os.link(path, self.out / ".state.json.bak")     # the killed writer's backup
        save_state(path, State(counters={"passes": 2}))
        self.assertEqual(sorted(os.listdir(self.out)), [".state.json", ".state.json.bak"])
        self.assertEqual(load_state(path)[0].counters, {"passes": 2})
        self.assertEqual(json.loads((self.out / ".state.json.bak").read_text())["counters"],
                         {"passes": 1})
