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


def usage_buckets(input_token: int, output_token: int, cached_tokens: int | None = None,
                  reasoning_tokens: int | None = None, input_details: dict | None = None,
                  output_details: dict | None = None) -> Buckets:
    """Split OpenAI-, Anthropic- or Gemini-shaped usage into exclusive buckets (pricing.md).

    A source reporting 0 falls through to the next one: Higress writes 0 for counts the
    provider reports elsewhere.
    """
    return Buckets(*bucket_counts(input_token, output_token, cached_tokens, reasoning_tokens,
                                  input_details, output_details))


def bucket_counts(input_token: int, output_token: int, cached_tokens: int | None = None,
                  reasoning_tokens: int | None = None, input_details: dict | None = None,
                  output_details: dict | None = None) -> tuple[int, int, int, int, int, int]:
    """:func:`usage_buckets` as a tuple in :class:`Buckets`' field order, for a caller
    that needs no Buckets (a frozen dataclass costs a microsecond to build; ondisk.py
    derives every written round's buckets; ingestion splits every round)."""
    # Runs for every round ingested and every round written (ondisk.py): a detail key
    # that is absent is 0, so it is looked up only when present (_count's answer for an
    # absent key), and a count is checked inline.
    ind = input_details if isinstance(input_details, dict) else _EMPTY
    outd = output_details if isinstance(output_details, dict) else _EMPTY
    if type(input_token) is not int or input_token < 0:
        input_token = 0
    if type(output_token) is not int or output_token < 0:
        output_token = 0
    # Gemini's prompt count includes its cached content (cached_content_token_count).
    cache_read = cached_tokens if type(cached_tokens) is int and cached_tokens > 0 else 0
    write_5m = write_1h = 0
    anthropic = False
    if ind:
        if not cache_read:
            # The first of them that counts more than 0.
            for name in _CACHE_READ_KEYS:
                value = ind.get(name)
                if value is not None:
                    count = ((value if value > 0 else 0) if type(value) is int
                             else _count(ind, name))
                    if count:
                        cache_read = count
                        break
        if "cache_creation_input_tokens" in ind:
            write_5m = _count(ind, "cache_creation_input_tokens")
        split = ind.get("cache_creation")
        if isinstance(split, dict) and ("ephemeral_1h_input_tokens" in split
                                        or "ephemeral_5m_input_tokens" in split):
            write_1h = _count(split, "ephemeral_1h_input_tokens")
            five = _count(split, "ephemeral_5m_input_tokens")
            # Writes the split does not account for are billed as the default 5-minute kind.
            write_5m = max(five, write_5m - write_1h)
        # Anthropic's input_token already excludes cache reads and writes.
        anthropic = (ind.get("cache_read_input_tokens") is not None
                     or ind.get("cache_creation_input_tokens") is not None)
    if anthropic or cache_read > input_token:
        uncached = input_token
    else:
        uncached = max(input_token - cache_read - write_5m - write_1h, 0)
    thoughts = detail_reasoning = 0
    if outd:
        if "thoughts_token_count" in outd:
            thoughts = _count(outd, "thoughts_token_count")
        if "reasoning_tokens" in outd:
            detail_reasoning = _count(outd, "reasoning_tokens")
    if type(reasoning_tokens) is int and reasoning_tokens > 0:
        reasoning = reasoning_tokens
    else:
        reasoning = detail_reasoning or thoughts
    # Gemini's output excludes thinking; a top-level count copied from
    # thoughts_token_count still has that meaning.
    from_thoughts = reasoning > 0 and reasoning == thoughts and not detail_reasoning
    if from_thoughts or reasoning > output_token:
        text_output = output_token
    else:
        text_output = output_token - reasoning
    return uncached, cache_read, write_5m, write_1h, text_output, reasoning


_EMPTY: dict = {}
_CACHE_READ_KEYS = ("cached_tokens", "cache_read_input_tokens", "cached_content_token_count")


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


# id(price) -> (price, {id(tier): its rates in PRICE_FIELDS order}). Every round is
# priced, with one of a handful of prices: the fallbacks are resolved once per price and
# tier, not per round. The entry holds the price, so its id is not reused meanwhile.
_RATE_MEMO: dict[int, tuple[Price, dict[int, tuple[float, ...]]]] = {}
_RATE_MEMO_LIMIT = 4096


def _rate_tuple(price: Price, prompt_tokens: int) -> tuple[float, ...]:
    tier = None
    for t in reversed(price.tiers):
        if t.above_input_tokens < prompt_tokens:
            tier = t
            break
    entry = _RATE_MEMO.get(id(price))
    if entry is None or entry[0] is not price:
        if len(_RATE_MEMO) >= _RATE_MEMO_LIMIT:
            _RATE_MEMO.clear()
        entry = _RATE_MEMO[id(price)] = (price, {})
    rates = entry[1].get(id(tier))
    if rates is None:
        by_name = _rates(price, prompt_tokens)
        rates = entry[1][id(tier)] = tuple(by_name[f] for f in PRICE_FIELDS)
    return rates


def bucket_cost(buckets: Buckets, price: Price) -> float:
    """USD for ``buckets``; the size tier is chosen by this request's prompt tokens."""
    b = buckets
    return split_cost((b.input, b.cache_read, b.cache_write, b.cache_write_1h, b.output,
                       b.reasoning), price)


def split_cost(split: tuple[int, int, int, int, int, int], price: Price) -> float:
    """:func:`bucket_cost` of the counts of :func:`bucket_counts`."""
    uncached, read, write, write_1h, output, reasoning = split
    r_in, r_out, r_read, r_write, r_write_1h, r_reasoning = _rate_tuple(
        price, uncached + read + write + write_1h)
    # PRICE_FIELDS order (fsum is exact whatever the order; kept for clarity).
    return math.fsum((uncached * r_in, output * r_out, read * r_read, write * r_write,
                      write_1h * r_write_1h, reasoning * r_reasoning)) / 1e6


def cache_savings(buckets: Buckets, price: Price) -> float:
    """USD that prompt caching saved versus paying the full input price for every prompt
    token. Negative when cache writes (billed above input) cost more than reads saved."""
    uncached = Buckets(input=buckets.prompt_tokens, output=buckets.output,
                       reasoning=buckets.reasoning)
    return bucket_cost(uncached, price) - bucket_cost(buckets, price)
