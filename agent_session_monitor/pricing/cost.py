"""The cost of a round (spec: pricing.md): its usage as exclusive token buckets (no token
in two of them) and their price in USD under one model's :class:`Price`, with its size
tiers and the fallbacks of the buckets a provider does not bill apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")


@dataclass(frozen=True)
class Tier:
    """Prices once a request's prompt exceeds ``above_input_tokens``; None = base price."""

    above_input_tokens: int
    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    reasoning: float | None = None


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. None = not billed apart: cache_read and cache_write fall back to
    input, cache_write_1h to cache_write (then input), reasoning to output."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    reasoning: float | None = None
    tiers: tuple[Tier, ...] = ()
    provider: str | None = None


@dataclass(frozen=True)
class Buckets:
    """Exclusive token counts of one round (or a sum of rounds)."""

    input: int = 0           # uncached input
    cache_read: int = 0
    cache_write: int = 0     # 5-minute cache writes
    cache_write_1h: int = 0
    output: int = 0          # text output, reasoning excluded
    reasoning: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input + self.cache_read + self.cache_write + self.cache_write_1h

    def as_dict(self) -> dict[str, int]:
        # Spelled out: dataclasses.asdict deep-copies recursively and is ~10x slower,
        # and this runs once per ingested round.
        return {"input": self.input, "cache_read": self.cache_read,
                "cache_write": self.cache_write, "cache_write_1h": self.cache_write_1h,
                "output": self.output, "reasoning": self.reasoning}

    @classmethod
    def from_dict(cls, d: dict) -> Buckets:
        return cls(**{f.name: _count(d, f.name) for f in fields(cls)})

    def __add__(self, other: object) -> Buckets:
        if not isinstance(other, Buckets):
            return NotImplemented
        return Buckets(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _count(details: dict, key: str) -> int:
    """A token count from a provider's detail map; anything not a count is 0."""
    value = details.get(key)
    # bool is an int subclass: True must not count as one token.
    if type(value) is int:
        return max(value, 0)
    # The coercion the parser documents for top-level counts (older Higress).
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return 0


def _nonneg(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def usage_buckets(input_token: int, output_token: int, cached_tokens: int | None = None,
                  reasoning_tokens: int | None = None, input_details: dict | None = None,
                  output_details: dict | None = None) -> Buckets:
    """Split OpenAI-, Anthropic- or Gemini-shaped usage into exclusive buckets (pricing.md).

    A source reporting 0 falls through to the next one: Higress writes 0 for counts the
    provider reports elsewhere.
    """
    ind = input_details if isinstance(input_details, dict) else {}
    outd = output_details if isinstance(output_details, dict) else {}
    input_token, output_token = _nonneg(input_token), _nonneg(output_token)
    # Gemini's prompt count includes its cached content (cached_content_token_count).
    cache_read = (_nonneg(cached_tokens) or _count(ind, "cached_tokens")
                  or _count(ind, "cache_read_input_tokens")
                  or _count(ind, "cached_content_token_count"))
    write_5m, write_1h = _count(ind, "cache_creation_input_tokens"), 0
    split = ind.get("cache_creation")
    if isinstance(split, dict) and ("ephemeral_1h_input_tokens" in split
                                    or "ephemeral_5m_input_tokens" in split):
        write_1h = _count(split, "ephemeral_1h_input_tokens")
        five = _count(split, "ephemeral_5m_input_tokens")
        # Writes the split does not account for are billed as the default 5-minute kind.
        write_5m = max(five, write_5m - write_1h)
    # Anthropic's input_token already excludes cache reads and writes.
    anthropic = any(ind.get(k) is not None
                    for k in ("cache_read_input_tokens", "cache_creation_input_tokens"))
    if anthropic or cache_read > input_token:
        uncached = input_token
    else:
        uncached = max(input_token - cache_read - write_5m - write_1h, 0)
    thoughts = _count(outd, "thoughts_token_count")
    detail_reasoning = _count(outd, "reasoning_tokens")
    reasoning = _nonneg(reasoning_tokens) or detail_reasoning or thoughts
    # Gemini's output excludes thinking; a top-level count copied from
    # thoughts_token_count still has that meaning.
    from_thoughts = reasoning > 0 and reasoning == thoughts and not detail_reasoning
    if from_thoughts or reasoning > output_token:
        text_output = output_token
    else:
        text_output = output_token - reasoning
    return Buckets(uncached, cache_read, write_5m, write_1h, text_output, reasoning)


def _rates(price: Price, prompt_tokens: int) -> dict[str, float]:
    """Per-bucket USD per 1M: the tier's field, else the base price's, else the fallback."""
    # Tiers are sorted by threshold at load: the last one passed is the one that applies.
    tier = next((t for t in reversed(price.tiers) if t.above_input_tokens < prompt_tokens), None)
    r = {f: getattr(price, f) if getattr(tier, f, None) is None else getattr(tier, f)
         for f in PRICE_FIELDS}
    for name, fallback in (("cache_read", "input"), ("cache_write", "input"),
                           ("cache_write_1h", "cache_write"), ("reasoning", "output")):
        if r[name] is None:
            r[name] = r[fallback]
    return r


def bucket_cost(buckets: Buckets, price: Price) -> float:
    """USD for ``buckets``; the size tier is chosen by this request's prompt tokens."""
    rates = _rates(price, buckets.prompt_tokens)
    return math.fsum(getattr(buckets, f) * rates[f] for f in PRICE_FIELDS) / 1e6


def cache_savings(buckets: Buckets, price: Price) -> float:
    """USD that prompt caching saved versus paying the full input price for every prompt
    token. Negative when cache writes (billed above input) cost more than reads saved."""
    uncached = Buckets(input=buckets.prompt_tokens, output=buckets.output,
                       reasoning=buckets.reasoning)
    return bucket_cost(uncached, price) - bucket_cost(buckets, price)
