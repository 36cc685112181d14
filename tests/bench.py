#!/usr/bin/env python3
"""Benchmark suite: the monitor against the speed of parsing JSON on four shapes of log,
and the readers at scale.

    python3 tests/bench.py                   # every shape at full size (cached in .bench/)
    python3 tests/bench.py --fraction 0.25   # a quick run: a quarter of the sessions
    python3 tests/bench.py --shapes short --repeat 5 --skip-queries

Prints one line per figure with its target. Not part of the unit-test run: targets on
speed live here, not in timed unit tests. Generated logs are cached under .bench/
(gitignored) so a second run only measures.

A benchmark tuned to one corpus hides the others, so catch-up is measured on four shapes
(tests/loggen.py, seeded; --seed and --fraction change them):

  small   800 sessions of <= 30 requests, short messages (metadata-heavy lines)
  large   1,200 sessions of <= 40 requests, tool outputs of many KB (content scale 6)
  long    20 sessions of <= 2,000 requests (long tool loops re-logging their history)
  short   100,000 sessions of 1-4 requests (a busy gateway's day: file creation dominates)

For each shape the bare floor (a child that only reads the lines and decodes the outer and
the inner JSON) and main.py (a cold catch-up into an empty store) run alternately
--repeat times in the same run, so both see the same machine load; the figure is the
median of the per-pair ratios floor seconds / main.py seconds (wall time of each child
process, interpreter start included).

Figures (targets on this 2-core machine):
  1. per shape: main.py / bare floor >= 0.6, and its memory < 300 MB: peak RSS of one
     process, and the peak sum of the PSS of main.py and the children it forks
  2. bytes of the session files vs the conversation's bytes, every message once (see
     conversation_bytes: what each request adds, each response the log carries in its
     ai_log, Claude's top-level system prompt); <= 2 x on every shape (issue 14). The
     older measure, request messages only, is printed beside it.
  3. one line appended to the store of the short shape (100,000 sessions at full size):
     the pass in a running monitor < 50 ms, a whole cron-style process < 250 ms
  4. cli.py list --limit 20, stats-model, and the web overview with 100,000 sessions;
     < 1 s each, overview p50 < 100 ms
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.loggen import iter_records  # noqa: E402

BENCH = ROOT / ".bench"
RATIO_TARGET = 0.6
RSS_TARGET_MB = 300   # MB: 10**6 bytes


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    sessions: int
    max_requests: int
    content_scale: int


SHAPES = {s.name: s for s in [
    Shape("small", "small messages", 800, 30, 1),
    Shape("large", "large tool outputs", 1200, 40, 6),
    Shape("long", "a few long sessions", 20, 2000, 2),
    Shape("short", "100,000 short sessions", 100_000, 4, 2),
]}

BARE = r"""
import json, sys
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            outer = json.loads(line)
            ai = outer.get("ai_log")
            if isinstance(ai, str) and ai != "-":
                json.loads(ai)
        except (ValueError, AttributeError):
            pass
"""


def figure(name: str, value: str, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"{name:<44} {value:>22}   target {target}{verdict}", flush=True)


def make_log(shape: Shape, seed: int, fraction: float) -> tuple[Path, dict]:
    """The shape's log (with the generator's usual noise: bad, non-AI, duplicate and
    unsessioned lines), cached with its conversation byte counts."""
    BENCH.mkdir(exist_ok=True)
    sessions = max(1, round(shape.sessions * fraction))
    log = BENCH / (f"{shape.name}-s{seed}-n{sessions}-r{shape.max_requests}"
                   f"-x{shape.content_scale}.log")
    meta_path = log.with_suffix(".json")
    if log.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if "conversation_bytes" not in meta:   # cached by a version that lacked it
            meta.update(conversation_bytes(log))
            meta_path.write_text(json.dumps(meta))
        return log, meta
    print(f"generating {log.name} ...", file=sys.stderr, flush=True)
    tmp = log.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for line, _event, _kind in iter_records(
                seed, sessions=sessions, max_requests=shape.max_requests,
                content_scale=shape.content_scale, bad_every=997, non_ai_every=101,
                duplicate_every=499, unsessioned_every=211):
            f.write(line)
    os.replace(tmp, log)
    meta = {"sessions": sessions, **conversation_bytes(log)}
    meta_path.write_text(json.dumps(meta))
    return log, meta


def conversation_bytes(log: Path) -> dict:
    """Bytes of each session's conversation, every message once (UTF-8 JSON), i.e. what a
    store that keeps every message once would hold at least:

    - ``distinct_message_bytes``: the messages each request adds to its session's
      history (the common prefix with the previous request left out). This alone was
      the measure before: it misses the model's side of every exchange that no later
      request re-logs (above all a session's last answer, which a one- or two-request
      session mostly consists of), though the store must keep it (storage.md: ``answer``,
      ``tool_calls``, ``reasoning`` are on disk in every round).
    - ``response_bytes``: each round's response (the assistant message the ai_log
      carries: ``answer`` as content, ``tool_calls`` without Higress's ``index``) that
      the next request of the session does not re-log, plus its ``reasoning`` text
      unless the re-logged message carries it. A line logged twice counts once.
    - ``system_bytes``: Claude's top-level ``system`` prompt, once per session and
      distinct value (the other providers send it as a message, counted above).

    ``conversation_bytes`` is their sum: the denominator of issue 14's 2x bound."""
    last: dict[object, list] = {}
    pending: dict[object, tuple] = {}
    systems: dict[object, list] = {}
    logged = responses = system_bytes = 0
    with open(log, "rb") as f:
        for line in f:
            try:
                ai = json.loads(json.loads(line)["ai_log"])
            except (ValueError, KeyError, TypeError):
                continue
            msgs = ai.get("messages") if isinstance(ai, dict) else None
            if not isinstance(msgs, list):
                continue
            sid = ai.get("session_id")
            prev = last.get(sid, [])
            start = len(prev) if msgs[:len(prev)] == prev else 0
            new = msgs[start:]
            last[sid] = msgs
            logged += sum(_size(m) for m in new)
            mine = _response(ai)
            before = pending.pop(sid, None)
            if before is not None:
                if not new and before == mine:
                    pending[sid] = before      # the same request logged again
                    continue
                relogged = new[0] if start and new and isinstance(new[0], dict) \
                    and new[0].get("role") == "assistant" else None
                responses += _response_size(before, relogged)
            pending[sid] = mine
            system = ai.get("system")
            if system is not None and system not in systems.setdefault(sid, []):
                systems[sid].append(system)
                system_bytes += _size(system)
    responses += sum(_response_size(p, None) for p in pending.values())
    return {"distinct_message_bytes": logged, "response_bytes": responses,
            "system_bytes": system_bytes,
            "conversation_bytes": logged + responses + system_bytes}


def _size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def _response(ai: dict) -> tuple:
    """(the assistant message of the ai_log's answer and tool calls or None, reasoning)"""
    msg: dict = {"content": ai.get("answer"), "role": "assistant"}
    calls = ai.get("tool_calls")
    if isinstance(calls, list) and calls:
        msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                             if isinstance(c, dict) else c for c in calls]
    reasoning = ai.get("reasoning")
    return (msg if msg["content"] is not None or "tool_calls" in msg else None,
            reasoning if isinstance(reasoning, str) and reasoning else None)


def _response_size(response: tuple, relogged: dict | None) -> int:
    """Bytes of a response not already counted: all of it, unless the next request
    re-logged it (its reasoning then, unless that message carries it too)."""
    msg, reasoning = response
    size = 0
    if relogged is None and msg is not None:
        size += _size(msg if reasoning is None else {**msg, "reasoning_content": reasoning})
    elif reasoning is not None and reasoning not in relogged.values():
        size += _size(reasoning)
    return size


@dataclass
class Run:
    wall: float     # seconds
    rss: int        # peak RSS, MB (10**6 bytes, as the target is stated)
    out: str        # stdout
    pss: int        # peak PSS of the process tree, MB (0: not sampled)
    cpu: float      # user + system seconds of the child and the children it reaped


def run_child(cmd: list[str], sample_tree: bool = False) -> Run:
    """Wall seconds, peak RSS, stdout, peak PSS of the process tree and CPU seconds of one
    child process, reaped with wait4 so the RSS is that child's own (the largest of it and
    the children it reaped: wait4 reports a maximum, not a sum).

    The monitor forks a commit process (and a parse worker) that share pages with it, so
    neither one RSS nor the sum of RSS is its memory: with ``sample_tree`` a thread adds up
    the proportional set size (PSS, shared pages split between their users) of the child
    and all its descendants every 100 ms and keeps the largest sum (0 if not sampled)."""
    import tempfile
    import threading

    # As installed, Python caches bytecode; a PYTHONDONTWRITEBYTECODE inherited from a
    # test harness would add the compilation of every module to each run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak_pss = [0]
        stop = threading.Event()
        sampler = None
        if sample_tree:
            def sample() -> None:
                while not stop.wait(0.1):
                    peak_pss[0] = max(peak_pss[0], tree_pss_kb(proc.pid))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        if sampler is not None:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[1]} failed: {err.read().decode().strip()}")
        # The kernel counts both in KiB; the target is in MB (10**6 bytes): 300 MB is
        # 286 MiB, and a KiB // 1024 labelled MB read 5% low.
        return Run(wall, _mb(usage.ru_maxrss), out.read().decode(), _mb(peak_pss[0]),
                   usage.ru_utime + usage.ru_stime)


def _mb(kib: int) -> int:
    """KiB -> MB (10**6 bytes), rounded up: a figure shown under the target is under it."""
    return -(-kib * 1024 // 10**6)


def tree_pss_kb(pid: int) -> int:
    """Sum of the PSS of ``pid`` and its descendants now, in KiB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue    # gone between listing and reading
    return total


TRASH = BENCH / "trash"


def move_to_trash(path: Path) -> None:
    if path.exists():
        TRASH.mkdir(exist_ok=True)
        path.rename(TRASH / f"{path.name}-{time.time_ns()}")


def remove_trash() -> None:
    """Delete the stores earlier runs left, once nothing is being timed."""
    if TRASH.exists():
        print("removing earlier runs' stores", file=sys.stderr, flush=True)
        shutil.rmtree(TRASH, ignore_errors=True)


def main_cmd(log: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
            str(store), "--allow-log-dir", str(BENCH), *extra]


@dataclass
class Result:
    shape: Shape
    mb: float
    lines: int
    rounds: int
    sessions: int
    bare: list[float]
    main: list[float]
    cpu: list[float]     # CPU seconds of each main.py run (its children included)
    rss: int             # largest single process (main.py or a child it reaped)
    pss: int             # largest sampled sum of PSS over main.py and its children
    store_bytes: int
    distinct: int        # request messages only (the measure before conversation_bytes)
    conversation: int
    floor_bytes: int     # required_floor() of the store

    @property
    def per_conversation(self) -> float:
        return self.store_bytes / max(self.conversation, 1)

    @property
    def per_distinct(self) -> float:
        return self.store_bytes / max(self.distinct, 1)

    @property
    def ratio(self) -> float:
        return statistics.median(b / m for b, m in zip(self.bare, self.main))


def bench_shape(shape: Shape, seed: int, fraction: float, repeat: int) -> tuple[Result, Path]:
    log, meta = make_log(shape, seed, fraction)
    store = BENCH / f"store-{shape.name}"
    bare, main, cpu, rss, pss = [], [], [], 0, 0
    # Each run catches up into a directory of its own; the stores it replaces are moved
    # aside and deleted only after the measuring (remove_trash). ext4 without a journal
    # (this machine's disk) skips the inodes deleted in the last 60-360 s when it
    # allocates new ones, looking at each in turn (find_inode_bit -> recently_deleted):
    # 24,000 files created right after 24,000 were deleted took 1.2-4.4 s of kernel time
    # instead of 0.5 s. A catch-up on a gateway does not follow a mass deletion of its
    # own making, so a benchmark that deletes right before each run measures itself.
    for i in range(repeat):
        bare.append(run_child([sys.executable, "-c", BARE, str(log)]).wall)
        run_store = BENCH / f"store-{shape.name}.run{i}-{time.time_ns()}"
        run = run_child(main_cmd(log, run_store, "-q"), sample_tree=True)
        main.append(run.wall)
        cpu.append(run.cpu)
        rss = max(rss, run.rss)
        pss = max(pss, run.pss)
        move_to_trash(store)
        run_store.rename(store)
    state = json.loads((store / ".state.json").read_text())
    names = [p for p in os.scandir(store) if p.name.endswith(".json") and not p.name.startswith(".")]
    result = Result(shape, log.stat().st_size / 10**6, state["counters"]["lines_read"],
                    state["counters"]["rounds_stored"], len(names), bare, main, cpu, rss, pss,
                    sum(p.stat().st_size for p in names), meta["distinct_message_bytes"],
                    meta["conversation_bytes"], required_floor(names))
    return result, store


# What storage.md requires on disk, as logged, in every round and file (the original's).
REQUIRED_ROUND = ("round", "timestamp", "input_tokens", "output_tokens", "reasoning_tokens",
                  "cached_tokens", "model", "has_tool_calls", "response_type", "question",
                  "answer", "reasoning", "tool_calls", "input_token_details",
                  "output_token_details")
REQUIRED_FILE = ("session_id", "created_at", "updated_at", "messages_count",
                 "total_input_tokens", "total_output_tokens", "total_reasoning_tokens",
                 "total_cached_tokens", "model")


def required_floor(files: list) -> int:
    """Bytes of the store's files cut down to what no layout can leave out: the
    original's required fields, the idempotency key (22 characters), the messages as
    stored with every referenced one left out at no cost (placeholders and
    ``messages_refs`` free), Claude's system prompts once per file. Compact JSON."""
    total = 0
    for entry in files:
        with open(entry.path, "rb") as f:
            doc = json.load(f)
        out = {k: doc[k] for k in REQUIRED_FILE if k in doc}
        if "systems" in doc:
            out["systems"] = doc["systems"]
        out["rounds"] = []
        for rnd in doc["rounds"]:
            refs = rnd.get("messages_refs") or {}
            messages = rnd.get("messages")
            if isinstance(messages, list):
                messages = [m for i, m in enumerate(messages) if str(i) not in refs]
            out["rounds"].append({**{k: rnd[k] for k in REQUIRED_ROUND if k in rnd},
                                  "messages": messages, "k": "k" * 22})
        total += len(json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode())
    return total


def print_table(results: list[Result]) -> None:
    print()
    print(f"{'shape':<24} {'log':>9} {'lines':>9} {'sessions':>9} {'bare floor':>11} "
          f"{'main.py':>9} {'CPU':>8} {'ratio':>6} {'peak RSS':>9} {'tree PSS':>9} {'store/conv.':>12} {'(old)':>6} "
          f"{'floor':>6}")
    for r in results:
        ok = r.ratio >= RATIO_TARGET and max(r.rss, r.pss) < RSS_TARGET_MB
        print(f"{r.shape.title:<24} {r.mb:>6,.0f} MB {r.lines:>9,} {r.sessions:>9,} "
              f"{statistics.median(r.bare):>9.2f} s {statistics.median(r.main):>7.2f} s "
              f"{statistics.median(r.cpu):>6.1f} s {r.ratio:>6.2f} {r.rss:>6} MB {r.pss:>6} MB {r.per_conversation:>12.2f} {r.per_distinct:>6.2f} "
              f"{r.floor_bytes / max(r.conversation, 1):>6.2f}"
              f"{'' if ok else '  MISSED'}", flush=True)
    print(f"(medians of {len(results[0].bare)} alternating runs; CPU = user + system seconds of "
          f"main.py and the children it forks (2 cores: at most twice its wall time); ratio target >= {RATIO_TARGET}, "
          f"peak RSS (one process) and tree PSS (main.py + its forked children, sampled every "
          f"100 ms) < {RSS_TARGET_MB} MB; store/conv. = session files / conversation bytes "
          f"<= 2.0; (old) = / request messages only; floor = required_floor / conversation "
          f"bytes: the original's fields, deduplicated messages and the key alone)")
    print()
    for r in results:
        figure(f"{r.shape.name}: main.py / bare floor", f"{r.ratio:.2f}",
               f">= {RATIO_TARGET}", r.ratio >= RATIO_TARGET)
        figure(f"{r.shape.name}: main.py rounds/s",
               f"{r.rounds / statistics.median(r.main):,.0f}", "", None)
        figure(f"{r.shape.name}: peak RSS of the catch-up (one process)", f"{r.rss} MB",
               f"< {RSS_TARGET_MB} MB", r.rss < RSS_TARGET_MB)
        figure(f"{r.shape.name}: peak PSS of main.py + its children", f"{r.pss} MB",
               f"< {RSS_TARGET_MB} MB", r.pss < RSS_TARGET_MB)
        figure(f"{r.shape.name}: store / conversation bytes", f"{r.per_conversation:.2f}",
               "<= 2.0", r.store_bytes <= 2 * r.conversation)
        figure(f"{r.shape.name}:   (old: / request messages only)", f"{r.per_distinct:.2f}",
               "", None)
        figure(f"{r.shape.name}:   (required-field floor / conversation)",
               f"{r.floor_bytes / max(r.conversation, 1):.2f}", "", None)


def bench_append(log: Path, store: Path) -> None:
    """Append real lines (a copy of a late AI line with a fresh request id) to the
    ingested log; the log is cut back to its size afterwards, so the cache stays valid."""
    from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

    size = log.stat().st_size
    with open(log, "rb") as f:
        f.seek(max(0, size - 2_000_000))
        tail_lines = f.read().split(b"\n")[1:-1]
    outer = None
    for raw in reversed(tail_lines):
        try:
            candidate = json.loads(raw)
            if '"session_id"' in candidate.get("ai_log", ""):
                outer = candidate
                break
        except (ValueError, AttributeError):
            continue
    assert outer is not None, "no AI line near the end of the log"
    config = MonitorConfig(log_paths=[str(log)], output_dir=store, follow=True)
    try:
        _append_figures(log, store, outer, config, Monitor)
    finally:
        os.truncate(log, size)


def _append_figures(log: Path, store: Path, outer: dict, config, Monitor) -> None:
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
           "< 50 ms", p50 < 50)
    walls, starts = [], []
    for i in range(5):
        outer["request_id"] = f"bench-append-{time.time_ns()}-cron-{i}"
        with open(log, "ab") as f:
            f.write(json.dumps(outer).encode() + b"\n")
        walls.append(run_child(main_cmd(log, store, "-q")).wall * 1000)
        # What the machine's load does to any process: an interpreter that does nothing.
        starts.append(run_child([sys.executable, "-c", "pass"]).wall * 1000)
    p50 = statistics.median(walls)
    figure("appended line: whole cron-style process", f"p50 {p50:.0f} ms, max {max(walls):.0f} ms",
           "< 250 ms", p50 < 250)
    figure("  (python3 -c pass, same moments)", f"p50 {statistics.median(starts):.0f} ms",
           "(interpreter start)", None)


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
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated shapes to run (default {','.join(SHAPES)})")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="scale every shape's session count (default 1: full size)")
    parser.add_argument("--seed", type=int, default=17, help="generator seed (default 17)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternating floor / main.py runs per shape (default 3)")
    parser.add_argument("--skip-queries", action="store_true", help="no cli/web figures")
    parser.add_argument("--skip-append", action="store_true", help="no steady-state figures")
    args = parser.parse_args(argv)
    shapes = [SHAPES[name] for name in args.shapes.split(",") if name]
    print(f"agent-session-monitor benchmark: {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}, seed {args.seed}, fraction {args.fraction:g}, "
          f"{args.repeat} runs per shape")
    results, stores = [], {}
    for shape in shapes:
        result, stores[shape.name] = bench_shape(shape, args.seed, args.fraction, args.repeat)
        results.append(result)
        print(f"{shape.name}: ratios {', '.join(f'{b / m:.2f}' for b, m in zip(result.bare, result.main))}",
              file=sys.stderr, flush=True)
    print_table(results)
    if not args.skip_append and stores:
        name = "short" if "short" in stores else shapes[-1].name
        print(f"\nsteady state on the store of the {name} shape "
              f"({next(r.sessions for r in results if r.shape.name == name):,} sessions):")
        bench_append(make_log(SHAPES[name], args.seed, args.fraction)[0], stores[name])
    if not args.skip_queries:
        bench_queries()
    remove_trash()
    return 0


if __name__ == "__main__":
    sys.exit(main())
