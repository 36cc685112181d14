"""The follow-mode live view (the skill's "Real-time Monitor"): a table redrawn in place."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import TextIO

from ..fmt import fmt_int, fmt_pct, fmt_usd, safe_text, shorten

CLEAR = "\x1b[H\x1b[2J"
LIVE_ROWS = 15


def live_rows(db: sqlite3.Connection, limit: int = LIVE_ROWS) -> tuple[dict, list[dict]]:
    """Totals of the store and its most recently active sessions, from the index."""
    cur = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(rounds),0), COALESCE(SUM(input),0), "
        "COALESCE(SUM(output),0), COALESCE(SUM(reasoning),0), COALESCE(SUM(cached),0), "
        "COALESCE(SUM(cache_write),0), COALESCE(SUM(cost),0), COALESCE(SUM(unpriced_rounds),0) "
        "FROM sessions")
    names = ("sessions", "rounds", "input", "output", "reasoning", "cached", "cache_write",
             "cost", "unpriced_rounds")
    totals = dict(zip(names, cur.fetchone()))
    rows = [dict(zip(("session_id", "model", "rounds", "input", "output", "cost", "updated_at",
                      "unpriced_rounds"), r))
            for r in db.execute("SELECT session_id, model, rounds, input, output, cost, "
                                "updated_at, unpriced_rounds FROM sessions "
                                "ORDER BY updated_at DESC LIMIT ?", (limit,))]
    return totals, rows


def render_live(out: TextIO, totals: dict, rows: list[dict], *, last_pass: str = "",
                budget_line: str = "", clear: bool = True, width: int = 120) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"Agent Session Monitor - live view (Ctrl-C to stop)    {now}", "=" * min(width, 100)]
    lines.append(
        f"Sessions: {fmt_int(totals['sessions'])}   Rounds: {fmt_int(totals['rounds'])}   "
        f"Input: {fmt_int(totals['input'])}   Output: {fmt_int(totals['output'])}   "
        f"Reasoning: {fmt_int(totals['reasoning'])}   Cached: {fmt_int(totals['cached'])}   "
        f"Cost: {fmt_usd(totals['cost'])}")
    if totals.get("unpriced_rounds"):
        lines.append(f"Unpriced rounds: {fmt_int(totals['unpriced_rounds'])} (no price for their model)")
    if budget_line:
        lines.append(budget_line)
    lines.append("")
    id_width = max(20, min(44, width - 76))
    header = (f"{'SESSION':<{id_width}}  {'MODEL':<22}  {'ROUNDS':>6}  {'INPUT':>11}  "
              f"{'OUTPUT':>9}  {'COST':>11}  {'UPDATED':<8}")
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        cost = fmt_usd(r["cost"]) if r["cost"] is not None else "unpriced"
        if r["unpriced_rounds"] and r["cost"] is not None:
            cost += "*"
        lines.append(
            f"{shorten(safe_text(r['session_id']), id_width):<{id_width}}  "
            f"{shorten(safe_text(r['model'] or '-'), 22):<22}  {fmt_int(r['rounds']):>6}  "
            f"{fmt_int(r['input']):>11}  {fmt_int(r['output']):>9}  {cost:>11}  "
            f"{(r['updated_at'] or '')[11:19]:<8}")
    if not rows:
        lines.append("(no sessions yet)")
    if any(r["unpriced_rounds"] and r["cost"] is not None for r in rows):
        lines.append("* some rounds of this session have no price")
    if last_pass:
        lines.append("")
        lines.append(last_pass)
    out.write((CLEAR if clear else "") + "\n".join(lines) + "\n")
    out.flush()


def budget_line(used: int, budget: int) -> str:
    return f"Budget: {fmt_int(used)} / {fmt_int(budget)} tokens ({fmt_pct(used, budget)})"
