#!/usr/bin/env python3
"""Benchmark: the web UI on a store of 100,000 sessions (issue: overview p50 < 100 ms).

    python3 tests/bench_web.py [--sessions 100000] [--dir /tmp/asm-bench-100k-web]
                               [--requests 200] [--rebuild]

Builds the store once (session files as the monitor writes them, indexed through
``Index``) and reuses it. Then starts ``scripts/webserver.py`` as a separate process, as
a user runs it, and times requests over one keep-alive connection: the overview, the
JSON API, a search, and the page of a 400-round session. Prints p50 / p95 / max per
route. Not part of the unit-test run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_session_monitor.store.index import Index  # noqa: E402
from agent_session_monitor.store.names import file_name_for  # noqa: E402
from agent_session_monitor.pricing.cost import Buckets  # noqa: E402
from agent_session_monitor.pricing.table import load_price_table  # noqa: E402
from agent_session_monitor.store.document import new_document  # noqa: E402
from tests.bench_cli import prepare_store, store_marker, write_store  # noqa: E402

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-20250514", "qwen-max", "deepseek-chat",
          "o3-mini", "gemini-2.0-flash", "in-house-llm"]   # the last one has no price
CONSUMERS = ["alice", "bob", "carol", "ci-bot", None]
MARKER = ".bench-web.json"
BIG = "agent:main:slack:thread:bench-big-session"
TARGET_MS = 100


def _round(rng: random.Random, table, r: int, moment: datetime, history: list) -> dict:
    model = rng.choice(MODELS)
    inp, out = rng.randrange(200, 60_000), rng.randrange(10, 3_000)
    cached = rng.choice([0, inp // 2, max(inp - 100, 0)])
    buckets = Buckets(input=inp - cached, cache_read=cached, output=out)
    key = f"req-{rng.getrandbits(64):016x}"
    call_id = f"call_{key[-8:]}"
    new = [{"role": "tool", "tool_call_id": f"call_{history[-1]}", "content": "ok " * 40}] \
        if history else [{"role": "user", "content": "please fix the failing test"}]
    rnd = {
        "round": r + 1, "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "request_id": key, "key": key, "model": model, "input_tokens": inp,
        "output_tokens": out, "reasoning_tokens": 0, "cached_tokens": cached,
        "cache_write_tokens": 0, "total_tokens": inp + out, "buckets": buckets.as_dict(),
        "cost_usd": table.cost(model, buckets), "priced_as": model,
        "has_tool_calls": True, "consumer": rng.choice(CONSUMERS), "response_type": "stream",
        "messages": new, "messages_offset": len(history), "context_key": None,
        "question_is_last_message": True, "answer": None, "reasoning": None,
        "tool_calls": [{"id": call_id, "type": "function",
                        "function": {"name": "bash", "arguments": json.dumps({"cmd": f"pytest -k t{r}"})}}],
    }
    history.append(key[-8:])
    return rnd


def build_store(directory: Path, sessions: int, seed: int = 1) -> None:
    write_store(directory, _documents(sessions, seed), sessions, store_marker(sessions, seed),
                MARKER)


def _documents(sessions: int, seed: int):
    table = load_price_table()
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for s in range(sessions):
        sid = BIG if s == 0 else f"agent:main:discord:channel:{rng.randrange(10**17, 10**18)}:{s}"
        doc = new_document(sid)
        moment = now - timedelta(minutes=rng.randrange(0, 90 * 24 * 60))
        history: list = []
        previous = None
        for r in range(400 if s == 0 else rng.randint(1, 8)):
            moment += timedelta(seconds=rng.randrange(5, 600))
            rnd = _round(rng, table, r, moment, history)
            rnd["context_key"] = previous
            previous = rnd["key"]
            doc["rounds"].append(rnd)
        yield doc


def _toucher(directory: Path, index: Index):
    """A commit like the monitor's after a poll: one session rewritten in the index."""
    name = file_name_for(BIG)
    doc = json.loads((directory / name).read_bytes())
    size = (directory / name).stat().st_size

    def touch() -> None:
        index.mark_pending([name])
        index.update([(name, doc, size)])
    return touch


def timed(conn: http.client.HTTPConnection, path: str, n: int, pace: float = 0.0) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(pace)
        started = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
    return times


def after_commits(conn: http.client.HTTPConnection, path: str, touch, n: int = 10) -> list[float]:
    """``path`` requested right after each of ``n`` index commits."""
    times = []
    for _ in range(n):
        touch()
        times += timed(conn, path, 1)
    return times


def report(label: str, times: list[float], target: float | None = None) -> None:
    times = sorted(times)
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    verdict = ""
    if target is not None:
        verdict = f"  (target p50 < {target:.0f} ms: {'ok' if p50 < target else 'MISSED'})"
    print(f"{label:<44} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   max {times[-1]:7.1f} ms"
          f"   n={len(times)}{verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--dir", default=None, help="store to build or reuse "
                   "(default /tmp/asm-bench-<N>k-web)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    directory = Path(args.dir or f"/tmp/asm-bench-{args.sessions // 1000}k-web")
    prepare_store(directory, args.sessions, build_store, args.rebuild, MARKER)

    from agent_session_monitor.web import views
    from agent_session_monitor.reports.reader import StoreReader

    reader = StoreReader.open(directory, progress=False)
    uncached = []
    for _ in range(3):
        started = time.perf_counter()
        views.overview_data(reader)
        uncached.append((time.perf_counter() - started) * 1000)
    from agent_session_monitor.web import metrics
    uncached_metrics = []
    for _ in range(3):
        started = time.perf_counter()
        metrics.usage_text(reader.db)
        uncached_metrics.append((time.perf_counter() - started) * 1000)
    reader.close()
    report("overview aggregates from the index, uncached", uncached)
    report("/metrics usage counters from the index, uncached", uncached_metrics)

    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "webserver.py"),
                             "--data-dir", str(directory), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, text=True)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        if not m:
            raise SystemExit("webserver.py did not start")
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=60)
        n = args.requests
        timed(conn, "/", 5)   # warm the page cache and the SQLite pages
        report("GET /  (overview; index unchanged)", timed(conn, "/", n), TARGET_MS)
        report("GET /api/stats?view=1  (auto-refresh)", timed(conn, "/api/stats?view=1", n), TARGET_MS)
        index = Index(directory)
        touch = _toucher(directory, index)
        report("GET /  right after an index commit (max-lag 5 s)", after_commits(conn, "/", touch))
        report("GET /metrics  (index unchanged)", timed(conn, "/metrics", n))
        report("GET /metrics  right after an index commit (last value; refreshed behind)",
               after_commits(conn, "/metrics", touch))
        stop = threading.Event()

        def writer() -> None:
            while not stop.wait(1.0):
                touch()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        started = time.monotonic()
        busy = timed(conn, "/", n, pace=0.05)   # ~15 requests a second over the writes
        stop.set()
        thread.join()
        report(f"GET /  while the monitor commits every 1 s ({time.monotonic() - started:.0f} s)",
               busy, TARGET_MS)
        index.close()
        report("GET /api/stats", timed(conn, "/api/stats", n))
        report("GET /api/sessions  (first page)", timed(conn, "/api/sessions", n))
        report("GET /api/sessions?page=2000", timed(conn, "/api/sessions?page=2000", n // 4))
        report("GET /?sort=cost", timed(conn, "/?sort=cost", n // 4))
        report("GET /api/sessions?q=1234&view=1  (search)",
               timed(conn, "/api/sessions?q=1234&view=1", n // 4))
        report("GET /api/sessions?model=gpt-4o&view=1", timed(conn, "/api/sessions?model=gpt-4o&view=1", n // 4))
        big = quote(BIG, safe="")
        report("GET /session?id=<400 rounds>", timed(conn, f"/session?id={big}", n // 4))
        report("GET /api/session?id=<400 rounds>&view=1&after=400",
               timed(conn, f"/api/session?id={big}&view=1&after=400", n // 4))
        report("GET /healthz", timed(conn, "/healthz", n // 4))
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
