"""The price table (spec: pricing.md): loading it, looking a logged model name up in it,
and saying which prices priced a session.

Each round is priced with its own model (its buckets and their cost: ``cost.py``); a
model the table cannot find gives ``None``, never $0, and is never a family guess.
Prices are USD per 1,000,000 tokens, from the bundled ``prices.json`` (built by
``tools/build_prices.py`` from a LiteLLM snapshot) plus an optional override file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path

from ..config import ENV_PRICING, resolve
from ..errors import EXIT_RUNTIME, EXIT_USAGE, MonitorError
from ..fmt import fmt_usd
from .cost import PRICE_FIELDS, Buckets, Price, Tier, bucket_cost

# Kept from the LiteLLM snapshot for provenance, not used for pricing.
_INFO_FIELDS = ("provider", "note", "max_input_tokens")
# When several providers sell a model under one bare name, the model's own vendor sets
# the reference price and resellers come after (bare-name prefix -> provider).
_FIRST_PARTY = (("qwen", "dashscope"), ("qwq", "dashscope"), ("deepseek", "deepseek"),
                ("glm", "zai"), ("kimi", "moonshot"), ("moonshot", "moonshot"),
                ("gemini", "gemini"), ("gemma", "gemini"), ("claude", "anthropic"),
                ("gpt", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"),
                ("grok", "xai"), ("doubao", "volcengine"), ("minimax", "minimax"),
                ("mistral", "mistral"))
# -2024-08-06, -20250514, -250514 (YYMMDD), -latest, and Vertex's @20240620. Four-digit
# suffixes are left alone: -0613 or -2512 are distinct models with their own prices.
_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-20\d{6}|-latest|@\d{8}"
                     r"|-\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$")
# Hostile logs can carry endless distinct model names; the memo must not grow with them.
_MEMO_LIMIT = 4096
_MISS = object()


def provider_of(table_key: str, price: Price) -> str:
    """The provider to show: the table's, else the key's prefix, else the model's vendor."""
    if "/" in table_key:
        return price.provider or table_key.split("/", 1)[0]
    return price.provider or _vendor(table_key.lower()) or "unknown"


def _vendor(bare_name: str) -> str | None:
    return next((p for prefix, p in _FIRST_PARTY if bare_name.startswith(prefix)), None)


def _bare(name: str) -> str:
    """The name without its provider prefix(es): openrouter/openai/gpt-4o -> gpt-4o."""
    return name.rsplit("/", 1)[-1]


class PriceTable:
    """Prices by table key, with the lookup rules of pricing.md (never a family guess)."""

    def __init__(self, models: dict[str, Price], aliases: dict[str, str] | None = None,
                 source: str = "", override_path: str | None = None,
                 table_id: str | None = None, override_id: str | None = None,
                 overridden: frozenset[str] = frozenset()) -> None:
        self.models = models
        self.aliases = aliases or {}
        self.source = source
        self.override_path = override_path
        # Provenance (recorded on every priced round): "table:<date>:<hash>" of the
        # bundled file, "override:<hash>" of the user's file for the keys it set.
        self.table_id = table_id
        self.override_id = override_id
        self.overridden = overridden
        self._memo: dict[str, tuple[str, Price] | None] = {}
        self._lower: dict[str, str] = {}
        self._alias: dict[str, str] = {k.lower(): v for k, v in sorted(self.aliases.items())}
        ranked: dict[str, tuple] = {}
        for key in sorted(models):
            self._lower.setdefault(key.lower(), key)
            bare = _bare(key.lower())
            provider = provider_of(key, models[key])
            rank = (provider != _vendor(bare), provider, key)
            if bare not in ranked or rank < ranked[bare]:
                ranked[bare] = rank
        self._bare = {bare: rank[2] for bare, rank in ranked.items()}

    def lookup(self, model: str) -> tuple[str, Price] | None:
        """``(table key, price)`` for a logged model name, or None when unpriced."""
        if not isinstance(model, str) or not model:
            return None
        found = self._memo.get(model, _MISS)
        if found is _MISS:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            key = self._find(model)
            found = self._memo[model] = None if key is None else (key, self.models[key])
        return found

    def _find(self, model: str) -> str | None:
        if model in self.models:
            return model
        # Each step loosens the last: case, then provider prefix, then date suffix.
        names = [model.lower(), _bare(model.lower())]
        names += [_SUFFIX.sub("", name) for name in names]
        for name in names:
            key = self._lower.get(name) or self._bare.get(_bare(name))
            if key is not None:
                return key
        for name in names:
            target = self._alias.get(name) or self._alias.get(_bare(name))
            if target is not None:
                return self._lower.get(target.lower())
        return None

    def provenance(self, key: str) -> str | None:
        """Which price data priced table key ``key``: the override file's id when the
        user's file set it, else the bundled table's."""
        if key in self.overridden and self.override_id:
            return self.override_id
        return self.table_id

    def cost(self, model: str | None, buckets: Buckets) -> float | None:
        """USD of ``buckets`` on ``model``; None when the model is missing or unpriced."""
        found = self.lookup(model) if model else None
        return bucket_cost(buckets, found[1]) if found is not None else None

    def priced_models(self) -> list[str]:
        return sorted(self.models)


def what_if(buckets: Buckets, table: PriceTable,
            models: list[str] | None = None) -> list[tuple[str, float]]:
    """The same buckets priced on other models (default: every table key), cheapest
    first; names the table cannot price are left out."""
    names = table.priced_models() if models is None else models
    priced = ((name, table.cost(name, buckets)) for name in names)
    return sorted(((n, c) for n, c in priced if c is not None), key=lambda nc: (nc[1], nc[0]))


def load_price_table(override_path: str | None = None) -> PriceTable:
    """The bundled table, overridden per model by ``override_path`` (else the file named
    by $AGENT_SESSION_MONITOR_PRICING). Raises MonitorError on a bad file."""
    bundled = resources.files(__package__).joinpath("prices.json")
    label = f"bundled price table {bundled}"
    raw = _read_bytes(bundled, label, EXIT_RUNTIME)
    data = _decode_json(raw, label, EXIT_RUNTIME)
    models, aliases = _parse_table(data, label, EXIT_RUNTIME)
    date = data.get("_date") if isinstance(data.get("_date"), str) else "undated"
    source = f"{data.get('_source', 'bundled prices')}, {date}"
    table_id = f"table:{date}:{_short_hash(raw)}"
    override_id, overridden = None, frozenset()
    path = resolve(override_path or None, ENV_PRICING)
    if path is not None:
        path = str(path)
        label = f"price file {path}"
        raw = _read_bytes(Path(path), label, EXIT_USAGE)
        data = _decode_json(raw, label, EXIT_USAGE)
        extra, extra_aliases = _parse_table(data, label, EXIT_USAGE)
        # The override replaces the whole entry, whatever case the user wrote it in.
        names = {name.lower() for name in extra}
        models = {k: v for k, v in models.items() if k.lower() not in names}
        models.update(extra)
        aliases.update(extra_aliases)
        source += f" + overrides from {path}"
        override_id, overridden = f"override:{_short_hash(raw)}", frozenset(extra)
    return PriceTable(models, aliases, source, path, table_id, override_id, overridden)


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def describe_provenance(price_id: str) -> str:
    """``table:2026-11-24:1a2b3c4d`` -> ``the table of 2026-11-24 (1a2b3c4d)``."""
    kind, _, rest = price_id.partition(":")
    if kind == "table":
        date, _, digest = rest.rpartition(":")
        return f"the table of {date} ({digest})"
    if kind == "override":
        return f"your override file ({rest})"
    return price_id


def _read_bytes(path: Path, label: str, exit_code: int) -> bytes:
    try:
        return path.read_bytes()  # a Path, or the Traversable of the bundled file
    except FileNotFoundError:
        fix = (f"check --pricing or ${ENV_PRICING}" if exit_code == EXIT_USAGE
               else "reinstall the package or run tools/build_prices.py")
        raise MonitorError(f"{label}: not found; {fix}", exit_code) from None
    except OSError as e:
        raise MonitorError(f"{label}: cannot read it ({e.strerror or e})", exit_code) from None


def _decode_json(raw: bytes, label: str, exit_code: int) -> object:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except RecursionError:
        problem = "not valid JSON (nested too deeply)"
    raise MonitorError(f"{label}: {problem}", exit_code)


def _parse_table(data: object, label: str,
                 exit_code: int) -> tuple[dict[str, Price], dict[str, str]]:
    """Accept ``{model: prices}`` or the wrapped ``{"models": {...}, "aliases": {...}}``."""
    if not isinstance(data, dict):
        raise MonitorError(f"{label}: must be a JSON object of model name -> prices, "
                           f"not {_kind(data)}", exit_code)
    entries, aliases = data, {}
    if isinstance(data.get("models"), dict):
        entries, aliases = data["models"], data.get("aliases", {})
        if not isinstance(aliases, dict) or not all(
                isinstance(v, str) and v for v in aliases.values()):
            raise MonitorError(f'{label}: "aliases" must map names to model names', exit_code)
    models = {}
    for name, entry in entries.items():
        if name.startswith("_"):
            continue
        try:
            if not name.strip():
                raise ValueError("a model name must not be empty")
            models[name] = _parse_entry(entry)
        except ValueError as e:
            raise MonitorError(f"{label}: model {json.dumps(name)}: {e}", exit_code) from None
    return models, dict(aliases)


def _parse_entry(entry: object, tier: bool = False) -> Price | Tier:
    what = "a tier" if tier else "the entry"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be an object, not {_kind(entry)}")
    known = PRICE_FIELDS + (("above_input_tokens",) if tier else _INFO_FIELDS + ("tiers",))
    # A typo such as "cache_reed" would silently bill at the fallback price: refuse it.
    unknown = [k for k in entry if k not in known and not k.startswith("_")]
    if unknown:
        raise ValueError(f"unknown field {json.dumps(unknown[0])} (known: {', '.join(known)})")
    prices = {}
    for name in PRICE_FIELDS:
        if name not in entry:
            if name in ("input", "output") and not tier:
                raise ValueError(f'"{name}" is missing')
            continue
        value = entry[name]
        # bool is excluded: "input": true is a mistake, not a price of 1.
        if type(value) not in (int, float) or not _finite(value) or value < 0:
            raise ValueError(f'"{name}" must be a non-negative number, not {_kind(value)}')
        prices[name] = float(value)
    if tier:
        above = entry.get("above_input_tokens")
        if type(above) is not int or above < 0:
            raise ValueError('a tier\'s "above_input_tokens" must be a non-negative integer')
        return Tier(above, **prices)
    provider, tiers = entry.get("provider"), entry.get("tiers", [])
    if provider is not None and not isinstance(provider, str):
        raise ValueError(f'"provider" must be a string, not {_kind(provider)}')
    if not isinstance(tiers, list):
        raise ValueError(f'"tiers" must be an array, not {_kind(tiers)}')
    parsed = sorted((_parse_entry(t, tier=True) for t in tiers),
                    key=lambda t: t.above_input_tokens)
    return Price(**prices, tiers=tuple(parsed), provider=provider or None)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _kind(value: object) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 30 else text[:27] + "..."


def provenance_lines(doc: dict) -> list[str]:
    """What a session page / ``show`` says about the prices behind its cost: which price
    data priced its rounds, and the provider's own figure beside ours when it sent one."""
    by = doc.get("priced_by") if isinstance(doc.get("priced_by"), dict) else {}
    lines = []
    if by:
        ranked = sorted(by.items(), key=lambda kv: (kv[0] == "unrecorded", -kv[1], kv[0]))
        parts = []
        for i, (price_id, n) in enumerate(ranked):
            rounds = f"{n:,} round{'s' if n != 1 else ''}"
            if price_id == "unrecorded":
                parts.append(f"{rounds} by an earlier version that did not record its table "
                             "(main.py --reprice records it)")
            elif i == 0 and len(ranked) > 1:
                parts.append(f"{describe_provenance(price_id)} ({rounds})"
                             if not price_id.startswith("table:")
                             else f"{describe_provenance(price_id)}, {rounds}")
            elif i == 0:
                parts.append(describe_provenance(price_id))
            else:
                parts.append(f"{rounds} by {describe_provenance(price_id)}")
        lines.append("Priced with " + "; ".join(parts) + ".")
    reported = doc.get("provider_cost")
    if isinstance(reported, dict) and reported.get("rounds"):
        n, theirs, ours = reported["rounds"], reported.get("usd") or 0.0, reported.get("ours_usd") or 0.0
        text = (f"The provider reported {fmt_usd(theirs)} for {n:,} round{'s' if n != 1 else ''}; "
                f"we priced the same rounds at {fmt_usd(ours)}")
        if reported.get("unpriced_rounds"):
            text += f" ({reported['unpriced_rounds']:,} of them unpriced by us)"
        if theirs and abs(ours - theirs) > 1e-12:
            diff = ("+" if ours >= theirs else "-") + fmt_usd(abs(ours - theirs))
            text += f", a difference of {diff} ({(ours - theirs) / theirs:+.1%})"
        elif abs(ours - theirs) <= 1e-12:
            text += ", the same"
        lines.append(text + ".")
    return lines

