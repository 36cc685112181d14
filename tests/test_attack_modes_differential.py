"""Attack: every fast path of a pass must leave the store a plain pass leaves.

A seeded hostile log (many short sessions so a checkpoint passes the 128-file syncfs
batch, duplicate keys at top level and inside detail maps, bad lines, a raw header
injection in a User-Agent, long histories) is read by main.py once with every
shortcut off (no parse worker, commit on a thread, no index helper, an fsync per file)
and once per mode with the parse worker forced on, the commit process on, the index
helper forced, syncfs batches; small checkpoints so several commits happen. Stored
session files, every index table (full text too), .state.json without its times and
the CLI's list / stats / JSON export must be identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys

from tests.helpers import ROOT, TempDirTest, make_line, write_lines

PLAIN = {"ASM_PARSE_AHEAD_BYTES": "-1", "ASM_COMMIT_PROCESS": "0",
         "ASM_SPLIT_COMMIT_ROUNDS": "-1", "ASM_BATCH_SYNC": "fsync"}
MODES = {
    "worker+commit-process+syncfs": {"ASM_PARSE_AHEAD_BYTES": "0",
                                     "ASM_SPLIT_COMMIT_ROUNDS": "-1"},
    # (ASM_COMMIT_PROCESS=0 would forbid the helper's fork: index_helper.wanted)
    "index-helper+worker+commit-process": {"ASM_PARSE_AHEAD_BYTES": "0",
                                           "ASM_SPLIT_COMMIT_ROUNDS": "0"},
    "index-helper+fsync": {"ASM_PARSE_AHEAD_BYTES": "-1", "ASM_SPLIT_COMMIT_ROUNDS": "0",
                           "ASM_BATCH_SYNC": "fsync"},
}


def hostile_log(rng: random.Random, n: int) -> list[bytes]:
    lines = []
    for i in range(n):
        session = f"s{rng.randrange(n // 2)}"
        line = make_line(i, session=session, history=rng.randrange(1, 6),
                         input_token=rng.randrange(1, 5000))
        kind = rng.random()
        if kind < 0.05:   # a top-level key written twice, equal or not
            dup = rng.choice(['"input_token":7,', '"model":"gpt-4o",', '"answer":"x",'])
            line = line.replace(b'{\\"model\\"', b"{" + dup.replace('"', '\\"').encode()
                                + b'\\"model\\"', 1)
        elif kind < 0.10:   # a detail map holding a bucket twice
            details = rng.choice(['{\\"cached_tokens\\":1,\\"cached_tokens\\":1}',
                                  '{\\"cached_tokens\\":1,\\"cached_tokens\\":50}'])
            line = line.replace(b'{\\"model\\"', b'{\\"input_token_details\\":'
                                + details.encode() + b',\\"model\\"', 1)
        elif kind < 0.13:   # an ai_log injected after a raw header
            line = line.replace(b'"start_time"', b'"user_agent":"x","ai_log":"{}","start_time"', 1)
        elif kind < 0.16:
            line = line[: rng.randrange(1, len(line))]   # cut short
        lines.append(line.rstrip(b"\n") + b"\n")
    return lines


class EveryModeStoresWhatAPlainPassStores(TempDirTest):
    def run_main(self, log, out, env_extra: dict) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        env.update(env_extra)
        r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                            "--allow-log-dir", str(log.parent), "--output-dir", str(out),
                            "--checkpoint-bytes", "200000", "-q"],
                           env=env, capture_output=True, text=True, timeout=600)
        self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])

    def snapshot(self, out) -> dict:
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in out.iterdir() if p.suffix == ".json" and not p.name.startswith(".")}
        db = sqlite3.connect(out / ".index.sqlite")
        tables = {}
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                  "AND name NOT LIKE 'sqlite_%' ORDER BY name"):
            if name == "meta" or name.endswith(("_data", "_idx", "_docsize", "_config")):
                continue
            rows = db.execute(f'SELECT * FROM "{name}"').fetchall()
            tables[name] = sorted(map(repr, rows))
        db.close()
        state = json.loads((out / ".state.json").read_text())

        def scrub(v):
            if isinstance(v, dict):
                return {k: scrub(x) for k, x in v.items()
                        if not any(t in k for t in ("time", "_at", "pass", "pid", "saved"))}
            if isinstance(v, list):
                return [scrub(x) for x in v]
            return v
        cli = {}
        for args in (["list"], ["stats-model"], ["stats-agent"], ["export", "--format", "json"],
                     ["export", "--format", "csv"]):
            r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli.py"),
                                "--data-dir", str(out), *args],
                               capture_output=True, text=True, timeout=300)
            cli[" ".join(args)] = (r.returncode, r.stdout)
        return {"files": files, "tables": tables, "state": scrub(state), "cli": cli}

    def test_seeded_hostile_logs_store_the_same_in_every_mode(self):
        rng = random.Random(20261130)
        log = self.tmp / "logs" / "access.log"
        log.parent.mkdir()
        write_lines(log, hostile_log(rng, 1800))
        reference = self.tmp / "plain"
        self.run_main(log, reference, PLAIN)
        want = self.snapshot(reference)
        self.assertGreater(len(want["files"]), 300)
        for name, env in MODES.items():
            with self.subTest(mode=name):
                out = self.tmp / name
                self.run_main(log, out, env)
                got = self.snapshot(out)
                for part in want:
                    self.assertEqual(got[part], want[part], (name, part))


if __name__ == "__main__":
    import unittest

    unittest.main()
