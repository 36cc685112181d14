"""The FinOps report (``cli.py export``) and what-if repricing, built from the index."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from datetime import date, datetime, timezone, tzinfo

from ..pricing import tokens
from ..store.index import BUCKET_FIELDS
from .insights import export_insights
from ..pricing.cost import Buckets, bucket_cost, cache_savings
from ..pricing.table import PriceTable
from ..reports.reader import SORTS, StoreReader
from ..reports.aggregates import day_range, range_totals
from ..reports.records import key_group_record, key_group_rows, usage_record


def finops_report(reader: StoreReader, table: PriceTable, *, tz: tzinfo = timezone.utc,
                  since: str | None = None, until: str | None = None,
                  what_if_models: list[str] | None = None, insights: bool = True) -> dict:
    """The FinOps report (``cli.py export``): totals, by model / day / consumer /
    session, unpriced models, what-if repricing and the price table's source, all from
    the index. ``table`` is a :class:`pricing.PriceTable`; stored costs are the ones
    computed at ingestion (``main.py --reprice`` recomputes them). With ``insights``,
    each session gets its ``cheaper_model`` (insights.export_insights)."""
    if not since and not until:
        reader.scan_models_and_consumers()
    by_model = reader.aggregate("model", since=since, until=until)
    by_day = reader.aggregate("day", tz=tz, since=since, until=until)
    if by_day:
        first, last = date.fromisoformat(by_day[0]["key"]), date.fromisoformat(by_day[-1]["key"])
        by_day = day_range(by_day, (last - first).days + 1, tz, today=last)
    if since or until:
        by_file = all_session_records(reader, keyed_by_file=True)
        sessions = []
        for row in reader.aggregate("session", since=since, until=until):
            record = {**by_file[row["key"]], **usage_record(row, "")}
            del record["sessions"]
            sessions.append(record)
    else:
        sessions = all_session_records(reader)
    models = [usage_record(r, "model") for r in by_model]
    for record, row in zip(models, by_model):
        record["cache_savings_usd"] = _cache_savings(row, table)
    report = {
        "report": "agent-session-monitor FinOps report",
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "range": {"since": since, "until": until, "time_zone": str(tz)},
        "token_columns": tokens.LEGEND,
        "price_table": {"source": table.source, "id": table.table_id,
                        "override_id": table.override_id,
                        "note": "costs as computed at ingestion; main.py --reprice "
                                "recomputes them with the current table"},
        "totals": usage_record(range_totals(reader, since, until), ""),
        "unpriced_models": [{"model": r["key"] or "(no model)", "rounds": r["unpriced_rounds"]}
                            for r in by_model if r["unpriced_rounds"]],
        "by_model": models,
        "by_day": [usage_record(r, "day") for r in by_day],
        "by_consumer": [usage_record(r, "consumer") for r in
                        reader.aggregate("consumer", since=since, until=until)],
        # OpenClaw agents and channels (session_keys.py), with what sub-agents spent.
        "by_agent": [key_group_record(r, "agent") for r in
                     key_group_rows(reader, "agent", since, until)],
        "by_channel": [key_group_record(r, "channel") for r in
                       key_group_rows(reader, "channel", since, until)],
        "sessions": sessions,
        "what_if": what_if_rows(by_model, table, what_if_models),
        "what_if_basis": "the priced rounds' token buckets on each model's base price "
                         "(size tiers are per request and not applied to sums)",
    }
    if insights:
        export_insights(report, reader, table, by_model, since, until)
    return report


REPORT_CSV_FIELDS = ["section", "key", "sessions", "rounds", "input_tokens", "output_tokens",
                     "reasoning_tokens", "cached_tokens", "cache_write_tokens", "total_tokens",
                     "cost_usd",
                     "unpriced_rounds", "tool_call_rounds", "models", "created_at", "updated_at",
                     "subagent_cost_usd", "spawned_subagent_cost_usd", "cost_with_subagents_usd",
                     "agent", "channel", "kind"]


def report_csv_rows(report: dict):
    """The FinOps report as one flat table (columns ``REPORT_CSV_FIELDS``), a ``section``
    column telling the groupings apart; nothing at all for an empty store."""
    if report["totals"]["rounds"]:
        yield {"section": "total", "key": "TOTAL", **report["totals"]}
    for section in ("model", "day", "consumer", "agent", "channel"):
        for row in report[f"by_{section}"]:
            yield {"section": section, "key": row[section], **row}
    for row in report["sessions"]:
        yield {"section": "session", "key": row["session_id"], "sessions": 1, **row}
    for row in report["what_if"]:
        yield {"section": "what_if", "key": row["model"], "cost_usd": row["cost_usd"]}


def _bucket_sum(rows: list[dict]) -> Buckets:
    return Buckets(**{f: sum(r.get(f"b_{f}") or 0 for r in rows) for f in BUCKET_FIELDS})


def _base_price(table: PriceTable, model: str | None):
    """The model's price without size tiers: a tier is chosen per request, and a sum of
    many requests would wrongly pass every threshold."""
    found = table.lookup(model) if model else None
    return (found[0], replace(found[1], tiers=())) if found else None


def _cache_savings(row: dict, table: PriceTable) -> float | None:
    found = _base_price(table, row["key"])
    return cache_savings(_bucket_sum([row]), found[1]) if found else None


def what_if_rows(by_model: list[dict], table: PriceTable,
                 models: list[str] | None = None) -> list[dict]:
    """The priced traffic of ``by_model`` repriced on each of ``models`` (default: the
    priced models it used), cheapest first, at base prices."""
    priced = [r for r in by_model if not r["unpriced_rounds"] and r["cost"] is not None]
    actual = sum(r["cost"] for r in priced)
    buckets = _bucket_sum(priced)
    candidates = models if models is not None else [r["key"] for r in priced]
    rows, seen = [], set()
    for name in candidates:
        found = _base_price(table, name)
        if found is None or found[0] in seen:
            continue
        seen.add(found[0])
        cost = bucket_cost(buckets, found[1])
        rows.append({"model": name, "priced_as": found[0], "cost_usd": cost,
                     "change_pct": round(100.0 * (cost - actual) / actual, 1) if actual else None})
    return sorted(rows, key=lambda r: (r["cost_usd"], r["model"]))


def all_session_records(reader: StoreReader, keyed_by_file: bool = False):
    """Every session as a :func:`session_record`, most costly first (or a dict by file
    name). Built straight from the index rows: at 100,000 sessions, decoding each row's
    model and consumer lists once per distinct value, not once per row, is most of the
    time saved over ``[session_record(s) for s in reader.sessions()]``."""
    decode = functools.lru_cache(maxsize=4096)(json.loads)
    rows = reader.db.execute(
        "SELECT file, session_id, created_at, updated_at, model, models, consumers, rounds, "
        "input, output, reasoning, cached, cache_write, cost, unpriced_rounds, tool_calls, "
        "agent, channel, kind "
        f"FROM sessions ORDER BY {SORTS['cost']}, file")
    records = {} if keyed_by_file else []
    for r in rows:
        record = {"session_id": r[1], "created_at": r[2], "updated_at": r[3], "model": r[4],
                  "models": decode(r[5]), "consumers": decode(r[6]), "rounds": r[7],
                  "input_tokens": r[8], "output_tokens": r[9], "reasoning_tokens": r[10],
                  "cached_tokens": r[11], "cache_write_tokens": r[12],
                  "total_tokens": r[8] + r[9], "cost_usd": r[13],
                  "unpriced_rounds": r[14], "tool_call_rounds": r[15], "agent": r[16],
                  "channel": r[17], "kind": r[18]}
        if keyed_by_file:
            records[r[0]] = record
        else:
            records.append(record)
    return records


def session_what_if(rounds: list[dict], table: PriceTable, models: list[str]) -> list[dict]:
    """A session's rounds priced on each of ``models``, round by round (so size tiers
    apply per request as billed), against what its priced rounds cost."""
    actual = sum(r["cost_usd"] for r in rounds if r.get("cost_usd") is not None)
    rows = []
    for name in models:
        found = table.lookup(name)
        if found is None:
            rows.append({"model": name, "priced_as": None, "cost_usd": None, "change_pct": None})
            continue
        cost = sum(bucket_cost(Buckets.from_dict(r.get("buckets") or {}), found[1])
                   for r in rounds if r.get("cost_usd") is not None)
        rows.append({"model": name, "priced_as": found[0], "cost_usd": cost,
                     "change_pct": round(100.0 * (cost - actual) / actual, 1) if actual else None})
    return rows
