#!/usr/bin/env python3
"""Write the bundled example log set: access.log, access.log.1, access.log.2.gz.

The three files are one log rotated twice (oldest in access.log.2.gz), produced by the
test generator with a fixed seed, so the files are the same on every run:

    python3 example/make_example.py [--out DIR]

They hold a handful of interleaved agent sessions (tool loops, cached and reasoning
tokens, several models and a model switch, Claude /v1/messages rounds) that cross the
file boundaries, plus one unsessioned request, one non-AI line and one line whose
User-Agent contains a quote (invalid JSON whose ai_log can still be salvaged).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import loggen  # noqa: E402

SEED = 42
SESSIONS = 7
MAX_REQUESTS = 8


def _once_at(total: int, fraction: float) -> int:
    """An ``*_every`` value that fires exactly once, near ``fraction`` of the way
    through ``total`` lines (it fires at multiples of the value)."""
    return max(total // 2 + 1, min(total, round(total * fraction)))


def build() -> loggen.Generated:
    # Sessions do not depend on the extras, so count their lines first.
    ai_lines = len(loggen.generate(SEED, SESSIONS, MAX_REQUESTS, coherent=True).lines)
    # coherent: each question gets its answer (the generator's topics), so the example
    # shows what a conversation page is for.
    return loggen.generate(SEED, SESSIONS, MAX_REQUESTS,
                           non_ai_every=_once_at(ai_lines, 0.55),
                           unsessioned_every=_once_at(ai_lines, 0.7),
                           quoted_ua_every=_once_at(ai_lines, 0.9), coherent=True)


def split(lines: list[bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Oldest, middle and newest thirds: what logrotate leaves as .2, .1 and the live file."""
    a, b = len(lines) // 3, 2 * len(lines) // 3
    return lines[:a], lines[a:b], lines[b:]


def check(gen: loggen.Generated, parts: tuple[list[bytes], ...]) -> None:
    """The example must show what the README promises; fail loudly if a change to the
    generator stops it from doing so."""
    events = gen.events
    sessioned = {e.session_id for e in events if e.session_id is not None}
    assert 6 <= len(sessioned) <= 10, len(sessioned)
    assert sum(e.session_id is None for e in events) == 1
    assert gen.non_ai == 1
    assert sum(b'"evil"' in line for line in gen.lines) == 1
    assert any(e.cached_tokens for e in events) and any(e.reasoning_tokens for e in events)
    assert len({e.model for e in events}) >= 5
    assert sum(b'\\"role\\":\\"tool\\"' in line or b"tool_result" in line
               for line in gen.lines) >= 5, "tool loops"
    oldest, newest = (b"".join(p) for p in (parts[0], parts[2]))
    assert any(sid.encode() in oldest and sid.encode() in newest for sid in sessioned), \
        "a session must start in access.log.2.gz and continue in access.log"


def write(out: Path, parts: tuple[list[bytes], ...]) -> None:
    oldest, middle, newest = (b"".join(p) for p in parts)
    buf = io.BytesIO()
    # mtime=0 and a fixed name keep the .gz byte-identical from run to run.
    with gzip.GzipFile(filename="access.log.2", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(oldest)
    (out / "access.log.2.gz").write_bytes(buf.getvalue())
    (out / "access.log.1").write_bytes(middle)
    (out / "access.log").write_bytes(newest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="directory to write into (default: this directory)")
    args = parser.parse_args(argv)
    gen = build()
    parts = split(gen.lines)
    check(gen, parts)
    write(args.out, parts)
    totals = loggen.totals_by_session(gen.events)
    cost = sum(t["cost"] for t in totals.values())
    print(f"{len(gen.lines)} lines, {len(gen.events)} requests in {len(totals)} sessions "
          f"(incl. unsessioned), ${cost:.6f} priced, into {args.out}")
    for name in ("access.log.2.gz", "access.log.1", "access.log"):
        print(f"  {name}: {(args.out / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
