"""One meaning for every token column, whatever the provider (storage.md, "Token columns").

The logged counts mean different things per provider (OpenAI's input includes cache
reads, Anthropic's does not; o-series output includes reasoning, Gemini's does not).
Everything a person reads is derived from a round's exclusive price buckets instead,
after the OpenTelemetry GenAI conventions:

- input  = uncached + cache read + cache write (every prompt token the model read)
- output = text + reasoning (every token it generated)
- cached, cache_write, reasoning: parts of those, shown beside them
- total  = input + output (what budgets and burn rates count)
"""

from __future__ import annotations

from .cost import usage_buckets

# The columns, in the order tables show them; also the keys of a session's "tokens".
COLUMNS = ("input", "cached", "cache_write", "output", "reasoning", "total")

LEGEND = ("Tokens: input = uncached + cached + cache write; output = text + reasoning; "
          "total = input + output (the same for every provider).")


def from_buckets(buckets: dict | None) -> dict[str, int]:
    """The normalised columns of one round (or a sum) from its exclusive buckets
    (``rnd["buckets"]``: only the non-zero ones are stored, absent means 0)."""
    # Runs for every round at ingestion, summary and indexing: one check that all six
    # are plain counts (stored buckets always are), else each is cleaned (a count that is
    # not a positive int is 0).
    get = buckets.get if isinstance(buckets, dict) else _EMPTY.get
    counts = (get("input", 0), get("cache_read", 0), get("cache_write", 0),
              get("cache_write_1h", 0), get("output", 0), get("reasoning", 0))
    uncached, cached, write, write_1h, text, reasoning = counts
    if not (type(uncached) is type(cached) is type(write) is type(write_1h) is type(text)
            is type(reasoning) is int and min(counts) >= 0):
        uncached, cached, write, write_1h, text, reasoning = [
            v if type(v) is int and v > 0 else 0 for v in counts]
    cache_write = write + write_1h
    inp = uncached + cached + cache_write
    out = text + reasoning
    return {"input": inp, "cached": cached, "cache_write": cache_write, "output": out,
            "reasoning": reasoning, "total": inp + out}


_EMPTY: dict = {}


def of_round(rnd: dict) -> dict[str, int]:
    buckets = rnd.get("buckets")
    if not isinstance(buckets, dict):
        # A round without its buckets (written by hand or by another tool): split its
        # logged counts the way ingestion does.
        buckets = usage_buckets(rnd.get("input_tokens") or 0, rnd.get("output_tokens") or 0,
                                rnd.get("cached_tokens"), rnd.get("reasoning_tokens"),
                                rnd.get("input_token_details"),
                                rnd.get("output_token_details")).as_dict()
    return from_buckets(buckets)


def of_rounds(rounds: list) -> dict[str, int]:
    """Column sums over rounds: ``doc["tokens"]`` of a session."""
    totals = dict.fromkeys(COLUMNS, 0)
    for rnd in rounds:
        for name, value in of_round(rnd).items():
            totals[name] += value
    return totals


def of_session(doc: dict) -> dict[str, int]:
    """A session's normalised totals: stored ones, else computed (an older file)."""
    stored = doc.get("tokens")
    if isinstance(stored, dict) and all(type(stored.get(c)) is int for c in COLUMNS):
        return {c: stored[c] for c in COLUMNS}
    return of_rounds(doc.get("rounds") or [])
