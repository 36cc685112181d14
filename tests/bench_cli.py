#!/usr/bin/env python3
"""Benchmark: cli.py on a store of 100,000 sessions (issue: "fast at any size").

    python3 tests/bench_cli.py [--sessions 100000] [--dir /tmp/asm-bench-100k] [--rebuild]

Builds the store once (session files written as the monitor writes them, indexed through
``Index`` in the monitor's order) and reuses it on later runs. Then times each command end
to end as a subprocess, as a user runs it, and prints one line per figure with its target.
Not part of the unit-test run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_session_monitor.store.durable import ensure_dir  # noqa: E402
from agent_session_monitor.store.index import INDEX_VERSION, Index  # noqa: E402
from agent_session_monitor.store.names import file_name_for  # noqa: E402
from agent_session_monitor.pricing.cost import Buckets  # noqa: E402
from agent_session_monitor.pricing.table import load_price_table  # noqa: E402
from agent_session_monitor.store.document import new_document, summarise  # noqa: E402
from agent_session_monitor.store.sessions import dump_document  # noqa: E402

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-20250514", "qwen-max", "deepseek-chat",
          "o1", "gemini-2.0-flash", "in-house-llm"]   # the last one has no price
CONSUMERS = ["alice", "bob", "carol", "ci-bot", None]
TARGET_SECONDS = 1.0
MARKER = ".bench-store.json"


def write_store(directory: Path, docs, sessions: int, marker: dict,
                marker_name: str = MARKER) -> None:
    """Write ``sessions`` session documents as the monitor does (one file each, 0600) and
    index them in batches through ``Index``, with progress on stderr."""
    ensure_dir(directory)
    index = Index(directory)
    index.rebuild()     # an empty directory: marks the index complete, as a fresh monitor does
    batch = []
    started = time.monotonic()
    for s, doc in enumerate(docs):
        summarise(doc)
        name = file_name_for(doc["session_id"])
        data = dump_document(doc)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        batch.append((name, doc, len(data)))
        if len(batch) == 2000 or s == sessions - 1:
            index.update(batch)
            batch = []
            print(f"\rbuilding: {s + 1:,}/{sessions:,} sessions "
                  f"({time.monotonic() - started:.0f} s)", end="", file=sys.stderr, flush=True)
    index.close()
    print(file=sys.stderr)
    (directory / marker_name).write_text(json.dumps(marker))


def build_store(directory: Path, sessions: int, seed: int = 1) -> None:
    write_store(directory, _documents(sessions, seed), sessions, store_marker(sessions, seed))


def store_marker(sessions: int, seed: int = 1) -> dict:
    """What a benchmark store was built from: one built by another index layout is stale."""
    return {"sessions": sessions, "seed": seed, "index_version": INDEX_VERSION}


def prepare_store(directory: Path, sessions: int, build, rebuild: bool,
                  marker_name: str = MARKER) -> None:
    """Reuse the benchmark store in ``directory`` if its marker matches, else ``build`` it
    there (refusing a directory that holds anything but an earlier benchmark store)."""
    marker = directory / marker_name
    reuse = (not rebuild and marker.exists()
             and json.loads(marker.read_text()) == store_marker(sessions))
    if reuse:
        print(f"reusing {sessions:,} sessions in {directory} (--rebuild to build again)")
        return
    if directory.exists() and any(directory.iterdir()) and not marker.exists():
        raise SystemExit(f"{directory} exists and is not a benchmark store: choose --dir")
    if directory.exists():
        for name in os.listdir(directory):
            (directory / name).unlink()
    started = time.monotonic()
    build(directory, sessions)
    print(f"built {sessions:,} sessions in {directory} in {time.monotonic() - started:.0f} s")


def _documents(sessions: int, seed: int):
    table = load_price_table()
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for s in range(sessions):
        sid = f"agent:main:discord:channel:{rng.randrange(10**17, 10**18)}:{s}"
        doc = new_document(sid)
        moment = now - timedelta(minutes=rng.randrange(0, 60 * 24 * 60))
        for r in range(rng.randint(1, 5)):
            moment += timedelta(seconds=rng.randrange(5, 600))
            model = rng.choice(MODELS)
            inp, out = rng.randrange(200, 60_000), rng.randrange(10, 3_000)
            cached = rng.choice([0, inp // 2, inp - 100 if inp > 100 else 0])
            buckets = Buckets(input=inp - cached, cache_read=cached, output=out)
            key = f"req-{s}-{r}"
            doc["rounds"].append({
                "round": r + 1, "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "request_id": key, "key": key, "model": model, "input_tokens": inp,
                "output_tokens": out, "reasoning_tokens": 0, "cached_tokens": cached,
                "cache_write_tokens": 0, "total_tokens": inp + out, "buckets": buckets.as_dict(),
                "cost_usd": table.cost(model, buckets), "has_tool_calls": r % 2 == 0,
                "consumer": rng.choice(CONSUMERS), "response_type": "stream",
                "messages": [{"role": "user", "content": f"question {r} of session {s}"}],
                "messages_offset": 0, "context_key": None, "question": f"question {r} of session {s}",
                "answer": f"answer {r}", "reasoning": None, "tool_calls": []})
        yield doc


def time_command(argv: list[str], runs: int) -> tuple[float, str]:
    """Median wall time of ``runs`` runs (the first one warms the page cache)."""
    times = []
    out = ""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli.py"), *argv],
                              capture_output=True, text=True, cwd=str(ROOT))
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"cli.py {' '.join(argv)} failed: {done.stderr.strip()}")
        out = done.stdout
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--dir", default=None, help="store to build or reuse "
                   "(default /tmp/asm-bench-<N>)")
    p.add_argument("--rebuild", action="store_true", help="build the store again")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    directory = Path(args.dir or f"/tmp/asm-bench-{args.sessions // 1000}k")
    prepare_store(directory, args.sessions, build_store, args.rebuild)

    baseline, _ = time_command(["--version"], args.runs)
    print(f"python start-up + import (cli.py --version): {baseline:.3f} s")
    export = Path("/tmp") / f"asm-bench-export-{os.getpid()}.json"
    commands = [
        ("list --limit 20", ["list", "--limit", "20"]),
        ("stats-model", ["stats-model"]),
        ("stats-date --days 30", ["stats-date", "--days", "30"]),
        ("stats-consumer", ["stats-consumer"]),
        ("stats-agent", ["stats-agent"]),
        ("stats-channel", ["stats-channel"]),
        ("list --sort-by cost-with-subagents", ["list", "--sort-by", "cost-with-subagents"]),
        # Full text (FTS5) over every round's question and answer, and a model family.
        ("list --search WORDS", ["list", "--search", "question 3"]),
        ("list --search rare", ["list", "--search", "session 99999"]),
        ("list --model FAMILY", ["list", "--model", "gpt-4o-mini"]),
        ("stats-model --since", ["stats-model", "--since", "7d"]),
        ("show SESSION", None),
        ("export x.json", ["export", str(export)]),
        ("export x.csv", ["export", str(export.with_suffix(".csv"))]),
    ]
    first_id = None
    failed = 0
    for label, argv in commands:
        if argv is None:
            argv = ["show", first_id]
        seconds, out = time_command(["--data-dir", str(directory), *argv], args.runs)
        if label.startswith("list"):
            first_id = out.splitlines()[2].split("  ")[0]
        if label.startswith("export"):
            # No target: an export writes a row for every session, so it grows with them.
            print(f"{label:<22} {seconds:6.3f} s   (no target: one row per session)")
            continue
        verdict = "ok" if seconds < TARGET_SECONDS else "SLOW"
        failed += verdict != "ok"
        print(f"{label:<22} {seconds:6.3f} s   (target < {TARGET_SECONDS:.0f} s)  {verdict}")
    for path in (export, export.with_suffix(".csv")):
        path.unlink(missing_ok=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
