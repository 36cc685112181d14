"""Anomalies that matter for agents, found in one session document (pure functions).

- ``tool_loop``: the same tool call (same tool, same arguments) in N rounds in a row;
- ``runaway_context``: the prompt growing round over round past a limit, with what the
  next rounds would cost if it keeps growing;
- ``cost_outlier``: a round far costlier than the session's other rounds on the same
  model (median and MAD, which one expensive round cannot drag along);
- ``idle_burst``: a long idle gap, then many rounds in a few minutes, much faster than
  the session's usual pace.

Each :class:`Anomaly` carries a one-sentence explanation for people, and the key of the
round it is anchored to, so that an alert about it can be sent once (see monitor_hooks.py).
Thresholds are chosen so that ordinary agent traffic (growing contexts, tool chains,
prompt-cache misses, model switches) is quiet: tests/test_anomalies.py runs them over a
generated corpus and expects nothing.
"""

from __future__ import annotations

import bisect
import json
import statistics
from dataclasses import dataclass, replace
from datetime import datetime

from ..pricing import tokens
from ..fmt import content_text, fmt_int, fmt_usd, tool_call_parts
from ..pricing.cost import Buckets, bucket_cost
from ..pricing.table import PriceTable

KINDS = ("tool_loop", "runaway_context", "cost_outlier", "idle_burst")
BADGES = {"tool_loop": "LOOP", "runaway_context": "CONTEXT", "cost_outlier": "COST",
          "idle_burst": "BURST"}
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Settings:
    loop_repeats: int = 3              # the same call in this many rounds in a row
    context_limit: int = 100_000       # prompt tokens
    context_growth_rounds: int = 5     # ...after growing in this many rounds in a row
    projection_rounds: int = 10        # rounds priced ahead for a runaway context
    outlier_min_rounds: int = 8        # rounds on one model before it has a "norm"
    outlier_ratio: float = 20.0        # times the median round
    outlier_mads: float = 10.0         # and this many (scaled) MADs above it
    outlier_min_usd: float = 0.01      # and at least this much above it
    idle_minutes: float = 30.0
    burst_rounds: int = 10
    burst_minutes: float = 5.0
    burst_speedup: float = 3.0         # times faster than the session's usual pace


@dataclass(frozen=True)
class Anomaly:
    kind: str
    round: int            # the round where it became visible
    severity: str
    explanation: str
    first_round: int = 0  # the rounds involved
    last_round: int = 0
    anchor: str = ""      # idempotency key of the anchoring round: stable across re-reads
    cost_usd: float | None = None       # what the rounds involved cost
    projected_usd: float | None = None  # runaway context: the next rounds, if it goes on

    @property
    def badge(self) -> str:
        return BADGES.get(self.kind, self.kind.upper())

    def as_dict(self) -> dict:
        return {"kind": self.kind, "badge": self.badge, "round": self.round,
                "severity": self.severity, "explanation": self.explanation,
                "first_round": self.first_round, "last_round": self.last_round,
                "cost_usd": self.cost_usd, "projected_usd": self.projected_usd}


def detect(doc: dict, table: PriceTable | None = None, settings: Settings = Settings(),
           since_round: int = 1) -> list[Anomaly]:
    """Every anomaly of the session, in round order. ``since_round`` keeps only those
    that became visible at that round or later (the monitor passes its first new round,
    and the detectors skip most of the history)."""
    rounds = doc.get("rounds") or []
    found = (tool_loops(rounds, settings, since_round)
             + runaway_context(rounds, table, settings, since_round)
             + cost_outliers(rounds, settings, since_round)
             + idle_bursts(rounds, settings, since_round))
    return sorted(found, key=lambda a: (a.round, KINDS.index(a.kind)))


# -- tool-call loops ------------------------------------------------------------------

def _canonical(arguments: str) -> str:
    """Arguments logged as JSON text compare by value, not by spacing or key order."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return arguments


def call_signature(rnd: dict) -> tuple | None:
    """The round's tool calls as a comparable value (ids left out), None without calls."""
    calls = rnd.get("tool_calls") or []
    if not calls:
        return None
    if not isinstance(calls, list):   # cut by the gateway: the text is all there is
        return (("?", str(calls)),)
    return tuple(sorted((name, _canonical(args)) for name, args in map(tool_call_parts, calls)))


def tool_results(rnd: dict) -> str | None:
    """The tool results a request carried back (OpenAI ``tool`` messages, Anthropic
    ``tool_result`` blocks) among the round's new messages; None when not stored."""
    messages = rnd.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        if m.get("role") == "tool":
            parts.append(content_text(m.get("content")))
        elif isinstance(m.get("content"), list):
            parts += [content_text(b.get("content")) for b in m["content"]
                      if isinstance(b, dict) and b.get("type") == "tool_result"]
    return "\n".join(parts) if parts else None


def tool_loops(rounds: list[dict], settings: Settings = Settings(),
               since_round: int = 1) -> list[Anomaly]:
    """Runs of rounds making the same tool calls. Where the conversation is stored, the
    calls must also have got the same results (the next request carries them): an agent
    polling something that changes is not stuck."""
    found = []
    i = max(0, since_round - 1 - 2 * max(settings.loop_repeats, 3))
    sigs: dict[int, tuple | None] = {}
    results: dict[int, str | None] = {}

    def sig_at(n: int) -> tuple | None:
        if n not in sigs:
            sigs[n] = call_signature(rounds[n])
        return sigs[n]

    def result_of(n: int) -> str | None:
        if n not in results:
            results[n] = tool_results(rounds[n + 1]) if n + 1 < len(rounds) else None
        return results[n]

    def same(a: int, b: int) -> bool:
        if sig_at(a) is None or sig_at(a) != sig_at(b):
            return False
        ra, rb = result_of(a), result_of(b)
        return ra is None or rb is None or ra == rb

    # Walk back to the start of a run that began before the window: the run's first
    # round anchors the anomaly, so it must not depend on where the scan starts.
    while 0 < i < len(rounds) and same(i - 1, i):
        i -= 1
    while i < len(rounds):
        sig = sig_at(i)
        j = i + 1
        while j < len(rounds) and same(j - 1, j):
            j += 1
        if sig is not None:
            # Without arguments (--no-content keeps tool names only) the calls may well
            # differ: only a much longer run of one tool counts.
            has_args = any(args for _, args in sig)
            need = settings.loop_repeats if has_args else max(2 * settings.loop_repeats, 6)
            trigger = i + need - 1
            if j - i >= need and trigger + 1 >= since_round:
                found.append(_loop(rounds[i:j], rounds[trigger], sig, has_args, need))
        i = j
    return found


def _loop(run: list[dict], trigger: dict, sig: tuple, has_args: bool, need: int) -> Anomaly:
    name, args = sig[0]
    shown = f"{name}({_short(args, 80)})" if has_args else name
    if len(sig) > 1:
        shown += f" and {len(sig) - 1} more call{'s' if len(sig) > 2 else ''}"
    cost = _cost(run)
    first, last = run[0]["round"], run[-1]["round"]
    text = (f"{shown} was called in {len(run)} rounds in a row ({first}-{last}): the agent "
            f"may be stuck repeating the same tool call; those rounds cost {_usd(cost)}.")
    if not has_args:
        text = text.replace(" the same tool call;", " one tool (arguments not stored, so the "
                            "calls may differ);")
    severity = "critical" if len(run) >= 2 * need else "warning"
    return Anomaly("tool_loop", trigger["round"], severity if has_args else "info", text,
                   first, last, run[0].get("key", ""), cost)


# -- runaway context ------------------------------------------------------------------

def prompt_tokens(rnd: dict) -> int:
    return tokens.of_round(rnd)["input"]   # uncached + cache read + cache write


def runaway_context(rounds: list[dict], table: PriceTable | None = None,
                    settings: Settings = Settings(), since_round: int = 1) -> list[Anomaly]:
    found = []
    sizes = _Sizes(rounds)
    if not any(sizes[k] >= settings.context_limit
               for k in range(max(0, since_round - 1), len(rounds))):
        return []   # nothing at or past the limit where anomalies may show: the usual case
    i = max(0, since_round - 2)
    while i > 0 and sizes[i] > sizes[i - 1]:
        i -= 1   # back to the start of the growing run the window begins in
    while i < len(rounds):
        j = i + 1
        while j < len(rounds) and sizes[j] > sizes[j - 1]:
            j += 1
        # rounds[i:j] grew in every round; the anomaly shows once the run is long enough
        # and past the limit.
        for k in range(i + settings.context_growth_rounds - 1, j):
            if sizes[k] >= settings.context_limit:
                if k + 1 >= since_round:
                    found.append(_runaway(rounds, sizes, i, j, k, table, settings))
                break
        i = j
    return found


class _Sizes:
    """Prompt tokens of each round, computed when first asked for."""

    def __init__(self, rounds: list[dict]) -> None:
        self.rounds, self.known = rounds, {}

    def __getitem__(self, n: int) -> int:
        if n not in self.known:
            self.known[n] = prompt_tokens(self.rounds[n])
        return self.known[n]


def _runaway(rounds: list[dict], sizes: _Sizes, i: int, j: int, k: int,
             table: PriceTable | None, settings: Settings) -> Anomaly:
    growth = (sizes[j - 1] - sizes[i]) / max(j - 1 - i, 1)
    last = rounds[j - 1]
    ongoing = j == len(rounds)
    projected = _project(last, sizes[j - 1], growth, settings.projection_rounds, table) \
        if ongoing else None
    text = (f"The prompt grew in each of {j - i} rounds in a row ({rounds[i]['round']}-"
            f"{last['round']}), from {fmt_int(sizes[i])} to {fmt_int(sizes[j - 1])} tokens "
            f"(+{fmt_int(round(growth))} a round), past the {fmt_int(settings.context_limit)}-"
            "token limit")
    if ongoing and projected is not None:
        text += (f"; if it keeps growing, the next {settings.projection_rounds} rounds cost "
                 f"about {_usd(projected)} (the last one cost {_usd(last.get('cost_usd'))})")
    elif not ongoing:
        text += f"; round {rounds[j]['round']} started from a smaller context"
    text += ". Compacting or restarting the conversation resets it."
    severity = "critical" if sizes[j - 1] >= 2 * settings.context_limit else "warning"
    return Anomaly("runaway_context", rounds[k]["round"], severity, text,
                   rounds[i]["round"], last["round"], rounds[k].get("key", ""),
                   _cost(rounds[i:j]), projected)


def _project(last: dict, size: int, growth: float, n: int,
             table: PriceTable | None) -> float | None:
    """The next ``n`` rounds' cost if the prompt keeps growing by ``growth``: the last
    round's prompt buckets scaled (same cache share), same output, same model and its
    size tiers; without a price table, the last round's cost scaled."""
    if size <= 0 or last.get("cost_usd") is None:
        return None
    buckets = Buckets.from_dict(last.get("buckets") or {})
    found = table.lookup(last.get("model")) if table is not None and last.get("model") else None
    total = 0.0
    for step in range(1, n + 1):
        factor = (size + step * growth) / size
        if found is None:
            total += last["cost_usd"] * factor
            continue
        scaled = replace(buckets, input=round(buckets.input * factor),
                         cache_read=round(buckets.cache_read * factor),
                         cache_write=round(buckets.cache_write * factor),
                         cache_write_1h=round(buckets.cache_write_1h * factor))
        total += bucket_cost(scaled, found[1])
    return total


# -- cost outliers --------------------------------------------------------------------

def cost_outliers(rounds: list[dict], settings: Settings = Settings(),
                  since_round: int = 1) -> list[Anomaly]:
    """Rounds far above the median of the session's rounds on the same model: a model
    switch is not an outlier (its rounds are compared with each other)."""
    by_model: dict[str, list[dict]] = {}
    for r in rounds:
        if r.get("cost_usd") is not None:
            by_model.setdefault(r.get("model") or "", []).append(r)
    found = []
    for model, group in by_model.items():
        if len(group) < settings.outlier_min_rounds:
            continue
        costs = [r["cost_usd"] for r in group]
        median = statistics.median(costs)
        if median <= 0:
            continue
        mad = 1.4826 * statistics.median(abs(c - median) for c in costs)
        for r in group:
            c = r["cost_usd"]
            if (r["round"] >= since_round and c >= settings.outlier_ratio * median
                    and c - median >= settings.outlier_mads * mad
                    and c - median >= settings.outlier_min_usd):
                found.append(_outlier(r, group, median, model))
    return found


def _outlier(r: dict, group: list[dict], median: float, model: str) -> Anomaly:
    ratio = r["cost_usd"] / median
    prompt = prompt_tokens(r)
    med_prompt = statistics.median(prompt_tokens(g) for g in group)
    mine = tokens.of_round(r)
    out = mine["output"]
    med_out = statistics.median(tokens.of_round(g)["output"] for g in group)
    if mine["cache_write"] > prompt / 2 and prompt <= 3 * med_prompt:
        why = "most of its prompt was written to the cache (a prompt-cache miss)"
    elif out > 3 * max(med_out, 1) and out * 3 > prompt:
        why = f"it produced {fmt_int(out)} output tokens (median {fmt_int(round(med_out))})"
    else:
        why = f"its prompt had {fmt_int(prompt)} tokens (median {fmt_int(round(med_prompt))})"
    text = (f"Round {r['round']} cost {_usd(r['cost_usd'])}, {ratio:,.0f}x the median round "
            f"on {model or 'its model'} in this session ({_usd(median)}): {why}.")
    return Anomaly("cost_outlier", r["round"], "critical" if ratio >= 100 else "warning", text,
                   r["round"], r["round"], r.get("key", ""), r["cost_usd"])


# -- idle, then a burst ---------------------------------------------------------------

def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def idle_bursts(rounds: list[dict], settings: Settings = Settings(),
                since_round: int = 1) -> list[Anomaly]:
    idle, window = settings.idle_minutes * 60, settings.burst_minutes * 60
    first = max(1, since_round - settings.burst_rounds - 1)
    # Times from where the scan, and the 200 rounds of usual pace before it, need them.
    base = max(0, first - 201)
    times: list = [0.0] * base
    for r in rounds[base:]:
        try:
            times.append(_seconds(r["timestamp"]))
        except (KeyError, TypeError, ValueError):
            return []
    found = []
    for i in range(first, len(times)):
        if times[i] - times[i - 1] < idle:
            continue
        end = bisect.bisect_right(times, times[i] + window, lo=i)
        n = end - i
        if n < settings.burst_rounds or i + settings.burst_rounds < since_round:
            continue
        # The usual pace: the median gap between rounds before the idle time that were
        # not themselves idle gaps. Without enough history, ask for twice the burst.
        before = times[max(0, i - 200):i]
        gaps = [b - a for a, b in zip(before, before[1:]) if b - a < idle]
        burst_gap = (times[end - 1] - times[i]) / max(n - 1, 1)
        if len(gaps) >= 4:
            usual = statistics.median(gaps)
            if burst_gap * settings.burst_speedup > usual:
                continue
            pace = f", {usual / max(burst_gap, 0.001):,.0f}x its usual pace"
        elif n < 2 * settings.burst_rounds:
            continue
        else:
            pace = ""
        run = rounds[i:end]
        text = (f"Idle for {_duration(times[i] - times[i - 1])}, then {n} rounds in "
                f"{_duration(times[end - 1] - times[i])} (rounds {run[0]['round']}-"
                f"{run[-1]['round']}{pace}), costing {_usd(_cost(run))}: an agent woke up "
                "(a schedule, a retry loop, a leaked key?) and spent quickly.")
        trigger = rounds[i + settings.burst_rounds - 1]
        found.append(Anomaly("idle_burst", trigger["round"], "warning", text,
                             run[0]["round"], run[-1]["round"], run[0].get("key", ""),
                             _cost(run)))
    return found


# -- helpers --------------------------------------------------------------------------

def _cost(rounds: list[dict]) -> float | None:
    costs = [r["cost_usd"] for r in rounds if r.get("cost_usd") is not None]
    return sum(costs) if costs else None


def _usd(x: float | None) -> str:
    return fmt_usd(x) if x is not None else "an unknown amount (unpriced model)"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s and minutes < 10 else f"{minutes} min"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {m} min" if m else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"
