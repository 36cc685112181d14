"""What one pass of the monitor did: its counts (``PassStats``), the progress shown on
a terminal while it reads, and the one-paragraph summary printed after it."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from ..fmt import fmt_bytes, fmt_int, fmt_usd, plural, safe_text


@dataclass
class PassStats:
    """What one pass did: the summary line and the tests read it."""

    files: int = 0
    bytes_read: int = 0
    lines: int = 0
    rounds: int = 0
    duplicates: int = 0
    # Rounds found on disk from the very lines read, past the offsets the state had
    # saved: written by a commit killed before its state was, or before the state was
    # deleted (counted as stored, since their counts were lost with that state; not in
    # ``rounds`` or the tokens below).
    recovered: int = 0
    non_ai: int = 0
    filtered: int = 0
    forged: int = 0
    bad: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    tail_events: Counter = field(default_factory=Counter)
    sessions: set = field(default_factory=set)   # file names
    # Created by this pass: a count, not a second set of names (8 MB at 100,000).
    new_sessions: int = 0
    # The normalised columns (tokens.py).
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float = 0.0
    unpriced: Counter = field(default_factory=Counter)   # model -> rounds


class Progress:
    """Catch-up progress on stderr, at most a few times a second, only on a terminal."""

    def __init__(self, err: TextIO, total: int) -> None:
        self.err, self.total = err, total
        self.last = 0.0
        self.shown = False
        self.started = time.monotonic()

    def update(self, name: str, stats: PassStats) -> None:
        now = time.monotonic()
        if now - self.last < 0.25 or self.total < 8 * 2**20:
            return
        self.last = now
        pct = 100.0 * stats.bytes_read / self.total if self.total else 100.0
        rate = stats.bytes_read / max(now - self.started, 1e-6)
        self.err.write(f"\rreading {safe_text(name)}: {fmt_bytes(stats.bytes_read)} of "
                       f"{fmt_bytes(self.total)} ({pct:.0f}%), {fmt_bytes(rate)}/s, "
                       f"{stats.rounds:,} rounds   ")
        self.err.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.err.write("\n")
            self.err.flush()


def summary(stats: PassStats) -> str:
    """The one-paragraph report of a pass (stdout)."""
    if not stats.lines and not stats.bad:
        if not stats.files:
            return "Nothing new: the log is empty (no line written yet)."
        return (f"Nothing new: {plural(stats.files, 'log file')} checked, all lines "
                "already read.")
    where = (f"{stats.files} file{'s' if stats.files != 1 else ''}" if stats.files
             else "standard input")
    parts = [f"Read {fmt_bytes(stats.bytes_read)} ({fmt_int(stats.lines)} lines) from {where}: "
             f"{plural(stats.rounds, 'round')} stored in {plural(len(stats.sessions), 'session')} "
             f"({fmt_int(stats.new_sessions)} new)"]
    if stats.duplicates:
        parts.append(f"{plural(stats.duplicates, 'already-stored round')} skipped")
    if stats.recovered:
        parts.append(f"{plural(stats.recovered, 'round')} found stored from these very lines "
                     "by a run whose state was lost (killed, or the state deleted): counted now")
    write = (f", cache write {fmt_int(stats.cache_write_tokens)}"
             if stats.cache_write_tokens else "")
    parts.append(f"tokens: input {fmt_int(stats.input_tokens)} (cached "
                 f"{fmt_int(stats.cached_tokens)}{write}), output "
                 f"{fmt_int(stats.output_tokens)} (reasoning {fmt_int(stats.reasoning_tokens)}), "
                 f"total {fmt_int(stats.input_tokens + stats.output_tokens)}")
    parts.append(f"cost {fmt_usd(stats.cost)}")
    if stats.unpriced:
        models = sorted(stats.unpriced)
        n = sum(stats.unpriced.values())
        parts.append(f"{plural(n, 'round')} of {plural(len(models), 'model')} "
                     f"{'has' if n == 1 else 'have'} no price: "
                     + ", ".join(safe_text(m) for m in models))
    if stats.bad:
        parts.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.bad.items())))
    if stats.forged:
        parts.append(f"{fmt_int(stats.forged)} forged lines (keys a client wrote through a "
                     "header were ignored)")
    nested = stats.warnings.get("deeply_nested_messages")
    if nested:
        parts.append(f"{plural(nested, 'round')} with content nested too deeply, kept as its "
                     "JSON text (billed as usual)")
    huge = stats.warnings.get("huge_messages")
    if huge:
        parts.append(f"{plural(huge, 'round')} with content too large to decode, kept as its "
                     "JSON text (billed as usual)")
    if stats.non_ai:
        parts.append(f"{plural(stats.non_ai, 'non-AI line')}")
    if stats.filtered:
        parts.append(f"{fmt_int(stats.filtered)} rounds of other sessions ignored (--session-key)")
    return "; ".join(parts) + "."
