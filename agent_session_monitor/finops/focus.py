"""FOCUS 1.2 export (the FinOps Open Cost and Usage Specification): the store's cost as the
CSV that FinOps tools ingest for chargeback.

One row per (UTC day, model, consumer) from the index, or one row per round from the
session files (``granularity="round"``). The columns are FOCUS 1.2's mandatory ones plus
the conditional ones a usage-based token charge has (ConsumedQuantity, ConsumedUnit,
ChargeFrequency, ServiceSubcategory, SkuId), then custom columns, which FOCUS requires to
start with ``x_``: consumer, agent, session, rounds and the tokens by storage.md's kinds.

The costs are list prices (the price table's; no negotiated discount is known), so
BilledCost = EffectiveCost = ListCost = ContractedCost. A round without a price has no
cost to bill, and FOCUS forbids a null or placeholder cost: rows made only of unpriced
rounds are left out and counted (:class:`FocusResult`), never written as $0.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, TextIO

from ..store.index import sql_text
from ..store.names import is_session_file
from ..store.pruned_archive import is_label, load_label
from ..pricing import tokens
from ..pricing.table import PriceTable, provider_of
from ..reports import window
from ..reports.reader import StoreReader
from ..store.sessions import read_document

FOCUS_VERSION = "1.2"
COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId",
    "x_Consumer", "x_AgentId", "x_SessionId", "x_Rounds", "x_UnpricedRounds",
    "x_InputTokens", "x_OutputTokens", "x_CacheReadTokens", "x_CacheWriteTokens",
    "x_ReasoningTokens",
)
DEFAULT_ACCOUNT = "agent-session-monitor"
# Spreadsheets run a cell that starts like a formula (OWASP CSV injection); model,
# consumer and session names come from whoever sent the request.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class FocusResult:
    rows: int = 0
    billed: list = field(default_factory=list)   # BilledCost of each row written
    skipped_rounds: int = 0                      # unpriced rounds in rows left out
    skipped_models: set = field(default_factory=set)

    @property
    def billed_cost(self) -> float:
        return math.fsum(self.billed)


def write_focus(out: TextIO, reader: StoreReader, table: PriceTable, *,
                since: str | None = None, until: str | None = None,
                granularity: str = "day", account: str = DEFAULT_ACCOUNT) -> FocusResult:
    """Write the FOCUS CSV of the rounds in [since, until) to ``out``."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    result = FocusResult()
    agents = _agent_column(reader)
    groups = (_rounds(reader, since, until, agents) if granularity == "round"
              else _day_groups(reader, since, until, agents))
    for g in groups:
        if g["rounds"] == g["unpriced"]:
            result.skipped_rounds += g["rounds"]
            result.skipped_models.add(g["model"] or "(no model)")
            continue
        row = _row(g, table, account)
        writer.writerow([_cell(row[c]) for c in COLUMNS])
        result.rows += 1
        result.billed.append(g["cost"])
    return result


def _agent_column(reader: StoreReader) -> bool:
    """Whether the index has a per-session agent id (the session-key parser's column)."""
    return any(r[1] == "agent" for r in reader.db.execute("PRAGMA table_info(sessions)"))


# The index's normalised columns (tokens.py), in the order of _round_tokens.
_TOKENS = tuple(f"SUM(u.{c})" for c in ("input", "output", "cached", "cache_write", "reasoning"))


def _round_tokens(rnd: dict) -> tuple:
    t = tokens.of_round(rnd)
    return t["input"], t["output"], t["cached"], t["cache_write"], t["reasoning"]


def _day_groups(reader: StoreReader, since, until, agents: bool) -> Iterable[dict]:
    src, params = window.source(since, until)
    agent = "s.agent" if agents else "NULL"
    join = " JOIN sessions s ON s.sid = u.sid" if agents else ""
    sql = (f"SELECT substr(u.at, 1, 10) AS day, u.model, u.consumer, {agent}, "
           f"SUM(u.rounds), SUM(u.unpriced_rounds), {', '.join(_TOKENS)}, "
           f"group_concat(u.cost, ' ') FROM {src} u{join} "
           f"GROUP BY day, u.model, u.consumer, {agent} "
           f"ORDER BY day, u.model, u.consumer, {agent}")
    for r in reader.db.execute(sql, params):
        start = datetime.strptime(r[0], "%Y-%m-%d").replace(tzinfo=timezone.utc)
        yield {"start": start, "end": start + timedelta(days=1), "model": r[1],
               "consumer": r[2], "agent": r[3], "session": None, "rounds": r[4],
               "unpriced": r[5], "tokens": r[6:11],
               # Money: the sum of the groups' own sums, independent of SQL's order.
               "cost": math.fsum(float(c) for c in (r[11] or "").split())}


def _rounds(reader: StoreReader, since, until, agents: bool) -> Iterable[dict]:
    """Each round of the window, from the files of the sessions the index says have
    rounds in it."""
    src, params = window.source(since, until)
    agent = "s.agent" if agents else "NULL"
    sessions = reader.db.execute(
        f"SELECT DISTINCT s.file, s.unsessioned, {agent} FROM {src} u JOIN sessions s "
        f"ON s.sid = u.sid ORDER BY s.session_id", params).fetchall()
    for name, unsessioned, agent_id in sessions:
        if is_label(name):   # pruned: its rounds' accounting is in the archive
            doc = load_label(reader.directory, name)
        elif not is_session_file(name) or name != os.path.basename(name):
            continue   # never a path built from anything but a session file's name
        else:
            try:
                doc = read_document(reader.directory / name)
            except (OSError, ValueError):
                doc = None
        if doc is None:
            continue
        for rnd in doc.get("rounds") or []:
            if (since and rnd["timestamp"] < since) or (until and rnd["timestamp"] >= until):
                continue   # exact, as every other report (window.py)
            start = datetime.strptime(rnd["timestamp"][:19], "%Y-%m-%dT%H:%M:%S").replace(
                tzinfo=timezone.utc)
            cost = rnd.get("cost_usd")
            yield {"start": start, "end": start + timedelta(seconds=1), "model": rnd.get("model"),
                   "consumer": rnd.get("consumer"), "agent": agent_id,
                   "session": None if unsessioned else doc.get("session_id"), "rounds": 1,
                   "unpriced": 1 if cost is None else 0, "tokens": _round_tokens(rnd),
                   "cost": cost or 0.0}


def _row(g: dict, table: PriceTable, account: str) -> dict:
    model = g["model"]
    found = table.lookup(model) if model else None
    provider = provider_of(*found) if found else "unknown"
    month = g["start"].replace(day=1, hour=0, minute=0, second=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    counts = g["tokens"]
    consumed = counts[0] + counts[1]
    cost = _decimal(g["cost"])
    who = f" for consumer {g['consumer']}" if g["consumer"] else ""
    return {
        "BilledCost": cost, "EffectiveCost": cost, "ListCost": cost, "ContractedCost": cost,
        "BillingAccountId": account, "BillingAccountName": None, "BillingCurrency": "USD",
        "BillingPeriodStart": _time(month), "BillingPeriodEnd": _time(next_month),
        "ChargeCategory": "Usage", "ChargeClass": None,
        "ChargeDescription": f"{model or '(no model)'} tokens{who}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodStart": _time(g["start"]), "ChargePeriodEnd": _time(g["end"]),
        "ConsumedQuantity": consumed, "ConsumedUnit": "Tokens",
        "PricingQuantity": consumed, "PricingUnit": "Tokens",
        "InvoiceIssuerName": provider, "ProviderName": provider, "PublisherName": provider,
        "ServiceCategory": "AI and Machine Learning", "ServiceSubcategory": "Generative AI",
        "ServiceName": f"{provider} models" if provider != "unknown" else "LLM API",
        "SkuId": model or None,
        "x_Consumer": g["consumer"], "x_AgentId": g["agent"], "x_SessionId": g["session"],
        "x_Rounds": g["rounds"], "x_UnpricedRounds": g["unpriced"],
        "x_InputTokens": counts[0], "x_OutputTokens": counts[1],
        "x_CacheReadTokens": counts[2], "x_CacheWriteTokens": counts[3],
        "x_ReasoningTokens": counts[4],
    }


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(value: float) -> str:
    """A FOCUS numeric: plain decimal notation (no exponent, no sign for positives)."""
    text = f"{value:.12f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _cell(value: object) -> str:
    """FOCUS null is an empty cell (never a placeholder); text a client chose cannot
    start a spreadsheet formula."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = sql_text(value)
        if value.startswith(_FORMULA_START):
            return "'" + value
        return value
    return str(value)
