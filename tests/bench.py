#!/usr/bin/env python3
"""Benchmark suite: the monitor against the speed of parsing JSON, and the readers at scale.

    python3 tests/bench.py                 # 512 MB log, 100,000-session store (cached in .bench/)
    python3 tests/bench.py --size-mb 64    # a quick run

Prints one line per figure with its target. Not part of the unit-test run: targets on
speed live here, not in timed unit tests. Generated data is cached under .bench/
(gitignored) so a second run only measures.

Figures (targets on this 2-core machine):
  1. catch-up of a large log: MB/s and rounds/s of main.py, and of a bare loop that only
     reads the lines and decodes the outer and inner JSON; main.py >= 0.5 x bare
  2. one line appended to that ingested log: the pass, < 50 ms (in a running monitor),
     and a whole cron-style process for reference
  3. bytes of the store vs the log and vs the distinct message bytes; store <= 2 x distinct
  4. peak RSS of the catch-up; < 300 MB
  5. cli.py list --limit 20, stats-model, and the web overview with 100,000 sessions;
     < 1 s each, overview p50 < 100 ms
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.loggen import iter_lines  # noqa: E402

BENCH = ROOT / ".bench"
# Message sizes: agents' tool results (files, web pages, shell output) are KBs; 6 gives
# tool outputs of a few KB. --content-scale 2 is a harsher case for the metadata share.
CONTENT_SCALE = 6
BARE = r"""
import json, sys, time
t = time.perf_counter(); n = b = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        n += 1; b += len(line)
        try:
            outer = json.loads(line)
            ai = outer.get("ai_log")
            if isinstance(ai, str) and ai != "-":
                json.loads(ai)
        except (ValueError, AttributeError):
            pass
print(json.dumps({"seconds": time.perf_counter() - t, "lines": n, "bytes": b}))
"""


def figure(name: str, value: str, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"{name:<44} {value:>22}   target {target}{verdict}", flush=True)


def make_log(size_mb: int) -> tuple[Path, dict]:
    """A realistic log (agent sessions of 1-300 requests re-logging their history, tool
    loops, Unicode, a few bad lines), cached with its distinct-message byte count."""
    BENCH.mkdir(exist_ok=True)
    log = BENCH / f"access-{size_mb}mb-x{CONTENT_SCALE}.log"
    meta_path = log.with_suffix(".json")
    if log.exists() and meta_path.exists():
        return log, json.loads(meta_path.read_text())
    print(f"generating a {size_mb} MB log in {log} ...", file=sys.stderr, flush=True)
    with open(log, "wb") as f:
        for line in iter_lines(17, size_mb * 2**20, max_requests=300, content_scale=CONTENT_SCALE,
                               bad_every=997, non_ai_every=101, duplicate_every=499,
                               unsessioned_every=211):
            f.write(line)
    meta = {"distinct_message_bytes": distinct_message_bytes(log)}
    meta_path.write_text(json.dumps(meta))
    return log, meta


def distinct_message_bytes(log: Path) -> int:
    """Bytes of the messages each request adds to its session's history (UTF-8 JSON),
    i.e. what a store that keeps every message once would hold."""
    last: dict[str, list] = {}
    total = 0
    with open(log, "rb") as f:
        for line in f:
            try:
                ai = json.loads(json.loads(line)["ai_log"])
            except (ValueError, KeyError, TypeError):
                continue
            msgs = ai.get("messages") if isinstance(ai, dict) else None
            if not isinstance(msgs, list):
                continue
            prev = last.get(ai.get("session_id"), [])
            start = len(prev) if msgs[:len(prev)] == prev else 0
            total += sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in msgs[start:])
            last[ai.get("session_id")] = msgs
    return total


def run_child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process, reaped with wait4 so
    the RSS is that child's own."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[1]} failed: {err.read().decode().strip()}")
        return wall, usage.ru_maxrss // 1024, out.read().decode()


def bench_ingest(log: Path, meta: dict) -> Path:
    size = log.stat().st_size
    mb = size / 2**20
    wall, _rss, out = run_child([sys.executable, "-c", BARE, str(log)])
    bare = json.loads(out)
    bare_rate = mb / bare["seconds"]
    figure("bare parse (read + outer + inner json)", f"{bare_rate:,.1f} MB/s", "(the floor)", None)
    figure("bare parse lines/s", f"{bare['lines'] / bare['seconds']:,.0f}", "", None)

    store = BENCH / "store"
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
           str(store), "--allow-log-dir", str(BENCH)]
    wall, rss, out = run_child(cmd)
    rounds = json.loads((store / ".state.json").read_text())["counters"]["rounds_stored"]
    rate = mb / wall
    figure("main.py catch-up", f"{rate:,.1f} MB/s", ">= 0.5 x bare", rate >= 0.5 * bare_rate)
    figure("main.py catch-up rounds/s", f"{rounds / wall:,.0f}", "", None)
    figure("main.py / bare throughput", f"{rate / bare_rate:.2f}", ">= 0.50", rate / bare_rate >= 0.5)
    figure("peak RSS of the catch-up", f"{rss} MB", "< 300 MB", rss < 300)

    store_bytes = sum(p.stat().st_size for p in store.glob("*.json") if not p.name.startswith("."))
    index_bytes = sum(p.stat().st_size for p in store.glob(".index.sqlite*"))
    distinct = meta["distinct_message_bytes"]
    figure("log size", f"{mb:,.1f} MB", "", None)
    figure("session files on disk", f"{store_bytes / 2**20:,.1f} MB", "", None)
    figure("store / log", f"{store_bytes / size:.3f}", "", None)
    figure("store / distinct message bytes", f"{store_bytes / distinct:.2f}", "<= 2.0",
           store_bytes / distinct <= 2.0)
    figure("derived index on disk", f"{index_bytes / 2**20:,.1f} MB", "", None)
    return store


def bench_append(log: Path, store: Path) -> None:
    from agent_session_monitor.monitor import Monitor, MonitorConfig

    tail = log.read_bytes()[-400_000:].split(b"\n")[-2]
    outer = json.loads(tail)
    config = MonitorConfig(log_paths=[str(log)], output_dir=store, follow=True)
    times = []
    with Monitor(config, progress=False) as monitor:
        monitor.poll_once()
        for i in range(20):
            outer["request_id"] = f"bench-append-{time.time_ns()}-{i}"
            with open(log, "ab") as f:
                f.write(json.dumps(outer).encode() + b"\n")
            start = time.perf_counter()
            stats = monitor.poll_once()
            times.append(time.perf_counter() - start)
            assert stats.rounds == 1, stats
    times.sort()
    p50 = times[len(times) // 2] * 1000
    figure("appended line: pass in a running monitor", f"p50 {p50:.1f} ms, max {times[-1] * 1000:.1f} ms",
           "< 50 ms", times[-1] * 1000 < 50)
    outer["request_id"] = f"bench-append-{time.time_ns()}-cron"
    with open(log, "ab") as f:
        f.write(json.dumps(outer).encode() + b"\n")
    wall, _rss, _out = run_child([sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                                  "--output-dir", str(store), "--allow-log-dir", str(BENCH), "-q"])
    figure("appended line: whole cron-style process", f"{wall * 1000:.0f} ms",
           "(interpreter start included)", None)


def bench_queries() -> None:
    try:
        from tests import bench_cli
    except ImportError:
        print("(tests/bench_cli.py not present: query figures skipped)")
    else:
        bench_cli.main([])
    try:
        from tests import bench_web
    except ImportError:
        print("(tests/bench_web.py not present: overview figures skipped)")
    else:
        bench_web.main([])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="size of the log (default 512)")
    parser.add_argument("--skip-queries", action="store_true", help="only the ingest figures")
    parser.add_argument("--content-scale", type=int, default=CONTENT_SCALE,
                        help=f"message size multiplier of the generator (default {CONTENT_SCALE})")
    args = parser.parse_args(argv)
    globals()["CONTENT_SCALE"] = args.content_scale
    print(f"agent-session-monitor benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{args.size_mb} MB log, content scale {CONTENT_SCALE}")
    log, meta = make_log(args.size_mb)
    store = bench_ingest(log, meta)
    bench_append(log, store)
    if not args.skip_queries:
        bench_queries()
    return 0


if __name__ == "__main__":
    sys.exit(main())
