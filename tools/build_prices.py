#!/usr/bin/env python3
"""Build agent_session_monitor/pricing/prices.json, the bundled price table, from a trimmed
LiteLLM snapshot (default: ../shared/data/model-prices.json next to the repository).

Usage: python3 tools/build_prices.py [SNAPSHOT] [--out FILE] [--date YYYY-MM-DD]

Prices stay in USD per 1M tokens with the snapshot's keys (provider prefixes included).
The snapshot has no date of its own: --date defaults to the snapshot file's date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_session_monitor.errors import MonitorError  # noqa: E402
from agent_session_monitor.pricing.table import _parse_table  # noqa: E402

DEFAULT_SNAPSHOT = ROOT.parent / "shared" / "data" / "model-prices.json"
DEFAULT_OUT = ROOT / "agent_session_monitor" / "pricing" / "prices.json"
KEPT_FIELDS = ("provider", "input", "output", "cache_read", "cache_write", "cache_write_1h",
               "reasoning", "tiers", "note")

# Names users log (Anthropic's own aliases, Vertex after its @date is cut) for models the
# snapshot only lists dated. Each points at the dated model Anthropic's alias resolved to.
ALIASES = {
    "claude-sonnet-4": "claude-sonnet-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-sonnet-4-latest": "claude-sonnet-4-20250514",
    "claude-opus-4": "claude-opus-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-opus-4-latest": "claude-opus-4-20250514",
    "claude-3-5-sonnet": "claude-3-5-sonnet-20241022",
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku": "claude-3-5-haiku-20241022",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet": "claude-3-7-sonnet-20250219",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
}

HOW_TO_REFRESH = (
    "Trim a newer LiteLLM model_prices_and_context_window.json into the same shape as "
    "../shared/data/model-prices.json (USD per 1M tokens), then run "
    "`python3 tools/build_prices.py PATH` from the repository root and "
    "`python3 -m unittest tests.test_pricing`. Users override single models with "
    "--pricing FILE or $AGENT_SESSION_MONITOR_PRICING instead.")


# A price of exactly 0 is believable for a provider's free or experimental models
# (Gemini's exp/gemma, Z.ai's flash, Mistral labs) but not for paid resold models such
# as Volcengine's: there it is a placeholder, and a FinOps tool must show those rounds
# as unpriced rather than free.
ZERO_PRICE_NOT_CREDIBLE = ("volcengine",)


def build(snapshot: dict, date: str) -> dict:
    models = {}
    for name, entry in sorted(snapshot["models"].items()):
        if (entry.get("provider") in ZERO_PRICE_NOT_CREDIBLE
                and not entry.get("input") and not entry.get("output")):
            continue
        models[name] = {k: entry[k] for k in KEPT_FIELDS if k in entry}
    for alias, target in ALIASES.items():
        if target not in models:
            raise SystemExit(f"alias {alias} -> {target}: {target} is not in the snapshot")
        if alias in models:
            raise SystemExit(f"alias {alias} would hide the snapshot's own entry; drop it")
    about = snapshot.get("_about", "")
    version = re.search(r"litellm [\w.]+", about)
    source = ("LiteLLM model_prices_and_context_window.json"
              f"{f' ({version.group()}, MIT licence)' if version else ''}, trimmed snapshot")
    return {"_source": source, "_date": date, "_how_to_refresh": HOW_TO_REFRESH,
            "_units": "USD per 1,000,000 tokens", "models": models, "aliases": ALIASES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", nargs="?", default=str(DEFAULT_SNAPSHOT))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--date", help="snapshot date (default: the snapshot file's date)")
    args = parser.parse_args(argv)
    path = Path(args.snapshot)
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"build_prices: cannot read {path}: {e}", file=sys.stderr)
        return 2
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("models"), dict):
        print(f"build_prices: {path}: expected {{\"models\": {{...}}}}", file=sys.stderr)
        return 2
    mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    date = args.date or mtime.date().isoformat()
    table = build(snapshot, date)
    try:
        # The package must be able to load what we ship: validate with its own parser.
        _parse_table(table, f"built table from {path}", 2)
    except MonitorError as e:
        print(f"build_prices: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    text = json.dumps(table, indent=1, ensure_ascii=True) + "\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}: {len(table['models'])} models, {len(ALIASES)} aliases, "
          f"source {table['_source']}, {date}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
