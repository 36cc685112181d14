"""Model-switch suggestions: a session's token buckets repriced on cheaper models.

The candidates are the price table's chat models, one entry per model and price (a
reseller's copy of a model, a dated snapshot at the same price and the specialised
variants - audio, search, fine-tunes, free previews - are left out). Same provider
first, then the cheapest model of each other provider. The saving is exact for the
tokens the session used: each round is repriced on its own (size tiers are per
request), unpriced rounds are left out, and the caveat says what repricing cannot know.
"""

from __future__ import annotations

import bisect
import math
import re
import weakref
from dataclasses import dataclass, fields, replace

from ..reports import window
from ..pricing.cost import Buckets, Price, bucket_cost
from ..pricing.table import PriceTable, provider_of

CAVEAT = ("Same tokens at another model's prices: a cheaper model may need more rounds or "
          "tokens, or not manage the task, so try it on a sample first.")
# Specialised or not generally usable models: an agent's chat traffic does not move there.
_SPECIAL = re.compile(r"(^ft:|audio|tts|realtime|transcri|embed|image|dall-e|whisper|search|"
                      r"computer-use|lyria|robotics|deep-research|moderation|voxtral|-fim|"
                      r"cyber|-law\b|rosalind)", re.IGNORECASE)
MIN_SAVING_PCT = 10.0
_FIELDS = tuple(f.name for f in fields(Buckets))


@dataclass(frozen=True)
class Suggestion:
    model: str            # price-table key
    provider: str
    same_provider: bool
    cost_usd: float       # the session's priced rounds on this model
    actual_usd: float     # what they cost
    saving_usd: float
    saving_pct: float

    def as_dict(self) -> dict:
        return {"model": self.model, "provider": self.provider,
                # Rounded to a picodollar, as the reports round their sums.
                "same_provider": self.same_provider, "cost_usd": round(self.cost_usd, 12),
                "actual_usd": round(self.actual_usd, 12),
                "saving_usd": round(self.saving_usd, 12),
                "saving_pct": round(self.saving_pct, 1)}


_CANDIDATES: "weakref.WeakKeyDictionary[PriceTable, list]" = weakref.WeakKeyDictionary()


def candidates(table: PriceTable) -> list[tuple[str, str, Price]]:
    """(key, provider, price) of the models worth suggesting, computed once per table."""
    found = _CANDIDATES.get(table)
    if found is None:
        chosen: dict[tuple, tuple[str, str, Price]] = {}
        for key in table.priced_models():
            price = table.models[key]
            if not (price.input > 0 and price.output > 0) or _SPECIAL.search(key):
                continue
            # Several providers sell one model: keep the one the table itself prices a
            # bare name with (the model's own vendor).
            canonical = table.lookup(key.rsplit("/", 1)[-1])
            if canonical is not None and canonical[0] != key:
                continue
            provider = provider_of(key, price)
            same = (provider, replace(price, provider=None))
            best = chosen.get(same)
            # One name per price: gpt-5-mini, not also gpt-5-mini-2025-08-07.
            if best is None or (len(key), key) < (len(best[0]), best[0]):
                chosen[same] = (key, provider, price)
        found = sorted(chosen.values())
        _CANDIDATES[table] = found
    return found


class _Rounds:
    """The priced rounds' buckets, sorted by prompt size with running sums, so that a
    model with size tiers is priced per request in a few lookups, not a loop."""

    def __init__(self, rounds: list[dict]) -> None:
        # Sorted by size alone: two rounds of one size must not compare their buckets.
        items = sorted(((b.prompt_tokens, b) for b in
                        (Buckets.from_dict(r.get("buckets") or {}) for r in rounds)),
                       key=lambda item: item[0])
        self.sizes = [size for size, _ in items]
        self.prefix = [Buckets()]
        for _, b in items:
            self.prefix.append(self.prefix[-1] + b)

    def cost(self, price: Price) -> float:
        if not price.tiers:
            return bucket_cost(self.prefix[-1], price)
        total, lo, previous = [], 0, None
        for tier in [*price.tiers, None]:
            # bucket_cost picks a tier when the prompt is *above* its threshold.
            hi = (len(self.sizes) if tier is None
                  else bisect.bisect_right(self.sizes, tier.above_input_tokens))
            part = _minus(self.prefix[hi], self.prefix[lo])
            if hi > lo:
                flat = replace(price, tiers=()) if previous is None else _flat(price, previous)
                total.append(bucket_cost(part, flat))
            previous, lo = tier, hi
        return math.fsum(total)


def _minus(a: Buckets, b: Buckets) -> Buckets:
    return Buckets(*(getattr(a, f) - getattr(b, f) for f in _FIELDS))


def _flat(price: Price, tier) -> Price:
    """The tier's prices as a plain price: its own where set, else the base price's."""
    values = {f: getattr(tier, f) if getattr(tier, f) is not None else getattr(price, f)
              for f in ("input", "output", "cache_read", "cache_write", "cache_write_1h",
                        "reasoning")}
    return Price(**values)


def suggest(rounds: list[dict], table: PriceTable, *, same_limit: int = 3,
            other_limit: int = 2, min_saving_pct: float = MIN_SAVING_PCT) -> list[Suggestion]:
    """Cheaper models for these rounds: up to ``same_limit`` of the provider the session
    spent most with, cheapest first, then the cheapest model of up to ``other_limit``
    other providers. Only models saving at least ``min_saving_pct``."""
    priced = [r for r in rounds if r.get("cost_usd") is not None]
    actual = math.fsum(r["cost_usd"] for r in priced)
    if not priced or actual <= 0:
        return []
    spent: dict[str, float] = {}
    used = set()
    for r in priced:
        found = table.lookup(r.get("priced_as") or r.get("model") or "")
        if found is not None:
            used.add(found[0])
            provider = provider_of(*found)
            spent[provider] = spent.get(provider, 0.0) + r["cost_usd"]
    home = max(spent, key=lambda p: (spent[p], p)) if spent else None
    sums = _Rounds(priced)
    same, others = [], {}
    for key, provider, price in candidates(table):
        if key in used:
            continue
        cost = sums.cost(price)
        saving = actual - cost
        if saving <= 0 or 100.0 * saving / actual < min_saving_pct:
            continue
        s = Suggestion(key, provider, provider == home, cost, actual, saving,
                       100.0 * saving / actual)
        if s.same_provider:
            same.append(s)
        elif provider not in others or cost < others[provider].cost_usd:
            others[provider] = s
    same.sort(key=lambda s: (s.cost_usd, s.model))
    other = sorted(others.values(), key=lambda s: (s.cost_usd, s.model))
    return same[:same_limit] + other[:other_limit]


def basis(rounds: list[dict]) -> str:
    """What the figures cover, for the note under them."""
    unpriced = sum(1 for r in rounds if r.get("cost_usd") is None)
    text = "Each priced round repriced at the model's list prices (size tiers per request)"
    if unpriced:
        text += f"; {unpriced} unpriced round{'s' if unpriced != 1 else ''} left out"
    return text


# -- the export: one suggestion per session, from the index ---------------------------

def best_per_model(table: PriceTable, mix_by_model: dict[str, Buckets]) -> dict[str, tuple]:
    """For each model, at the bucket mix its sessions used: the cheapest candidate of its
    own provider and the cheapest of any other, as ``(key, base Price)`` pairs (either
    may be None). Base prices, because these are sums over many requests."""
    plan = {}
    for model, mix in mix_by_model.items():
        found = table.lookup(model) if model else None
        if found is None:
            continue
        home = provider_of(*found)
        best: dict[bool, tuple] = {}
        for key, provider, price in candidates(table):
            if key == found[0]:
                continue
            flat = replace(price, tiers=())
            cost = bucket_cost(mix, flat)
            same = provider == home
            if same not in best or (cost, key) < best[same][0]:
                best[same] = ((cost, key), key, flat)
        plan[model] = tuple(best[s][1:] if s in best else None for s in (True, False))
    return plan


def index_suggestions(db, table: PriceTable, by_model: list[dict] | None = None, *,
                      since: str | None = None, until: str | None = None,
                      min_saving_pct: float = MIN_SAVING_PCT) -> dict[str, dict]:
    """``session id -> {"model", "cost_usd", "saving_pct"}``: each session's priced
    tokens (in [since, until) if given, exactly) on the cheaper model
    chosen for its latest model, same provider first. From index sums, in one grouped
    scan of the usage rows, at base prices. ``by_model``: per-model aggregate rows
    (``key``, ``b_<bucket>``) if the caller has them, for choosing the candidates."""
    src, params = window.source(since, until)
    cols = ", ".join(f"SUM(u.b_{f})" for f in _FIELDS)
    if by_model is None:
        by_model = [{"key": row[0], **{f"b_{f}": v for f, v in zip(_FIELDS, row[1:])}}
                    for row in db.execute(f"SELECT u.model, {cols} FROM {src} u WHERE "
                                          f"u.unpriced_rounds = 0 GROUP BY u.model", params)]
    mix = {r["key"]: Buckets(*(r.get(f"b_{f}") or 0 for f in _FIELDS)) for r in by_model
           if r["key"] is not None}
    plan = best_per_model(table, mix)
    if not plan:
        return {}
    rates = {}
    for model, options in plan.items():
        rates[model] = [(key, tuple(_rate(price, f) for f in _FIELDS))
                        for key, price in (o for o in options if o is not None)]
    found = {}
    sql = (f"SELECT s.session_id, s.model, {cols}, SUM(u.cost) FROM {src} u JOIN sessions s "
           f"ON s.sid = u.sid WHERE u.unpriced_rounds = 0 GROUP BY u.sid")
    for session_id, model, *sums, actual in db.execute(sql, params):
        options = rates.get(model)
        if not options or not actual or actual <= 0:
            continue
        for key, r in options:   # same provider first
            cost = (sums[0] * r[0] + sums[1] * r[1] + sums[2] * r[2] + sums[3] * r[3]
                    + sums[4] * r[4] + sums[5] * r[5]) / 1e6
            pct = 100.0 * (actual - cost) / actual
            if pct >= min_saving_pct:
                found[session_id] = {"model": key, "cost_usd": round(cost, 12),
                                     "saving_pct": round(pct, 1)}
                break
    return found


def _rate(price: Price, name: str) -> float:
    """USD per 1M tokens of one bucket, with pricing.md's fallbacks."""
    value = getattr(price, name)
    if value is None:
        fallback = {"cache_read": "input", "cache_write": "input",
                    "cache_write_1h": "cache_write", "reasoning": "output"}[name]
        return _rate(price, fallback)
    return value
