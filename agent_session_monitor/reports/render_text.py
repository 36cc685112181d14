"""Terminal output of the query CLI: aligned tables (usage, sessions, burn rate) and the
text helpers they share. Each renderer takes the output stream; one session's details are
in session_text.py, the JSON and CSV writers over the same rows in json_csv.py.

Every string that came from a log (ids, models, consumers, messages) goes through
``safe_text`` here, where it is printed. The web UI has its own HTML renderer and does
not import this module.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from dataclasses import dataclass
from datetime import tzinfo
from typing import Callable, Iterable, TextIO

from ..pricing import tokens
from ..fmt import fmt_cost, fmt_int, fmt_pct, fmt_time, fmt_usd, safe_text, shorten

ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]
    right: bool = True   # numbers align right, text left


# -- text helpers ---------------------------------------------------------------------

def terminal_width(out: TextIO) -> int | None:
    """Columns available when ``out`` is a terminal (or $COLUMNS is set); None when the
    output goes to a pipe or file, where nothing needs to fit."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    isatty = getattr(out, "isatty", None)
    if isatty is not None and isatty():
        return shutil.get_terminal_size((120, 24)).columns
    return None


def display_width(text: str) -> int:
    """Terminal cells: CJK characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(width - display_width(text), 0)
    return fill + text if right else text + fill


def cut_middle(text: str, width: int) -> str:
    """Cut an id to ``width`` keeping both ends: ids differ at their tails
    (``agent:main:discord:channel:1465…``), so the tail must stay visible."""
    if width <= 0 or len(text) <= width:
        return text
    if width < 8:
        return shorten(text, width)
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + ELLIPSIS + text[len(text) - tail:]


def clip(text: str, max_chars: int) -> str:
    """``text`` cut at ``max_chars`` (0 = whole), saying how much was left out."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}{ELLIPSIS} [+{len(text) - max_chars:,} chars]"


# -- tables ---------------------------------------------------------------------------

def render_table(out: TextIO, columns: list[Column], rows: Iterable[dict],
                 total: dict | None = None, empty: str = "(none)") -> None:
    body = [[col.cell(r) for col in columns] for r in rows]
    foot = [col.cell(total) for col in columns] if total is not None else None
    widths = [max([display_width(col.header)] + [display_width(line[i]) for line in body]
                  + ([display_width(foot[i])] if foot else []))
              for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(_pad(c, w, col.right) for c, w, col in zip(cells, widths, columns)).rstrip()

    header = line([col.header for col in columns])
    rule = "-" * display_width(header)
    out.write(header + "\n" + rule + "\n")
    for cells in body:
        out.write(line(cells) + "\n")
    if not body:
        out.write(empty + "\n")
    if foot is not None:
        out.write(rule + "\n" + line(foot) + "\n")


def _usage_columns(key_header: str, key: Callable[[dict], str]) -> list[Column]:
    return [
        Column(key_header, key, right=False),
        Column("SESSIONS", lambda r: fmt_int(r["sessions"])),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        *token_columns(),
        Column("COST", lambda r: fmt_cost(r["cost"], r["unpriced_rounds"])),
    ]


def token_columns() -> list[Column]:
    """The normalised token columns (tokens.py), parts beside their wholes; every table
    that shows them says what they mean once, with tokens.LEGEND."""
    return [
        Column("INPUT", lambda r: fmt_int(r["input"])),
        Column("CACHED", lambda r: fmt_int(r["cached"])),
        Column("CACHE WRITE", lambda r: fmt_int(r.get("cache_write") or 0)),
        Column("OUTPUT", lambda r: fmt_int(r["output"])),
        Column("REASONING", lambda r: fmt_int(r["reasoning"])),
        Column("TOTAL", lambda r: fmt_int(r["input"] + r["output"])),
    ]


def render_usage(out: TextIO, title: str, key_header: str, rows: list[dict], totals: dict,
                 unpriced: list[tuple[str, int]], *, models_column: bool = False,
                 notes: Iterable[str] = (), subagents: str | None = None) -> None:
    """stats-model / -consumer / -date / -agent / -channel: one row per group and a TOTAL
    row. ``subagents``: "agent" adds the part spent by sub-agents, "channel" what the
    sub-agents spawned from each group spent (report.key_group_rows)."""
    columns = _usage_columns(key_header, lambda r: safe_text(r["key"] if r["key"] is not None
                                                             else "(none)"))
    if subagents == "agent":
        columns += [Column("SUB-AGENTS", lambda r: "" if "subagent_cost" not in r
                           else fmt_usd(r["subagent_cost"])),
                    Column("SHARE", lambda r: "" if "subagent_cost" not in r
                           else fmt_pct(r["subagent_cost"] or 0, r["cost"] or 0))]
    elif subagents:
        columns += [Column("SPAWNED", lambda r: "" if "spawned_cost" not in r
                           else fmt_usd(r["spawned_cost"])),
                    Column("WITH SUB-AGENTS", lambda r: "" if "spawned_cost" not in r
                           else fmt_usd(r["cost_with_subagents"])),
                    Column("SHARE", lambda r: "" if "spawned_cost" not in r
                           else fmt_pct(r["spawned_cost"] or 0, r["cost_with_subagents"] or 0))]
    if models_column:
        # The TOTAL row (models None) leaves the column blank.
        columns.append(Column("MODELS", lambda r: "" if r["models"] is None else shorten(
            safe_text(", ".join(r["models"])) or "-", 60), right=False))
    out.write(title + "\n\n")
    render_table(out, columns, rows, total={**totals, "key": "TOTAL", "models": None},
                 empty="(no rounds)")
    out.write(tokens.LEGEND + "\n")
    for note in notes:
        out.write(note + "\n")
    write_unpriced_note(out, unpriced)


def write_unpriced_note(out: TextIO, unpriced: list[tuple[str, int]]) -> None:
    if not unpriced:
        return
    rounds = sum(n for _, n in unpriced)
    names = ", ".join(safe_text(m) for m, _ in unpriced[:8])
    more = f" and {len(unpriced) - 8} more" if len(unpriced) > 8 else ""
    out.write(f"* {fmt_int(rounds)} round{'s' if rounds != 1 else ''} of {len(unpriced)} "
              f"model{'s' if len(unpriced) != 1 else ''} {'have' if rounds != 1 else 'has'} "
              "no price (not counted as $0): "
              f"{names}{more}\n")


def render_sessions(out: TextIO, rows: list[dict], total_count: int, *, sort: str,
                    width: int | None, tz: tzinfo) -> None:
    """The session list. Ids are whole unless they do not fit ``width`` (None: no limit),
    then cut in the middle, and the footer says so."""
    def models(r: dict) -> str:
        names = r["models"] or ([r["model"]] if r["model"] else [])
        text = safe_text(names[0]) if names else "-"
        return shorten(text, 30) + (f" +{len(names) - 1}" if len(names) > 1 else "")

    rest = [
        Column("MODEL", models, right=False),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        Column("INPUT", lambda r: fmt_int(r["input"])),
        Column("OUTPUT", lambda r: fmt_int(r["output"])),
        Column("CACHED", lambda r: fmt_int(r["cached"])),
        Column("COST", lambda r: fmt_cost(r["cost"], r["unpriced_rounds"])),
        *([Column("WITH SUB-AGENTS", lambda r: fmt_usd(r["cost_with_subagents"]))]
          if rows and "cost_with_subagents" in rows[0] else []),
        Column(f"UPDATED ({tz})", lambda r: safe_text(fmt_time(r["updated_at"], tz, seconds=False)),
               right=False),
    ]
    ids = [safe_text(r["session_id"]) for r in rows]
    longest = max((display_width(i) for i in ids), default=7)
    id_width = longest
    if width is not None:
        used = sum(2 + max(display_width(c.header), *(display_width(c.cell(r)) for r in rows))
                   for c in rest) if rows else 0
        id_width = min(longest, max(width - used, 24))
    cut = id_width < longest
    by_row = {id(r): cut_middle(i, id_width) for r, i in zip(rows, ids)}
    columns = [Column("SESSION", lambda r: by_row[id(r)], right=False), *rest]
    render_table(out, columns, rows, empty="(no sessions)")
    if rows:
        out.write(tokens.LEGEND + "\n")
    shown = f"{fmt_int(len(rows))} of {fmt_int(total_count)} session{'s' if total_count != 1 else ''}"
    out.write(f"{shown}, by {sort}" + ("; ids cut to fit: --wide shows them whole" if cut else "")
              + "\n")
    if any(r["unpriced_rounds"] and r["cost"] is not None for r in rows):
        out.write("* some rounds of the session have no price for their model (not counted as $0)\n")


def render_burn(out: TextIO, data: dict, tz: tzinfo) -> None:
    """``cli.py burn``: the recent rate, today so far and projected, the active sessions."""
    recent, today = data["recent"], data["today"]
    w = out.write
    w(f"Burn rate at {safe_text(fmt_time(data['at'], tz, seconds=False))} {tz} (event time; "
      f"recent = the last {data['window_minutes']} min)\n\n")
    w(f"  Recent:  {fmt_int(round(recent['tokens_per_min']))} tokens/min, "
      f"{fmt_usd(recent['usd_per_hour'])}/hour ({fmt_int(recent['rounds'])} rounds, "
      f"{fmt_usd(recent['cost_usd'])})\n")
    w(f"  Today:   {today['day']} ({safe_text(today['time_zone'])}): "
      f"{fmt_int(today['tokens'])} tokens, {fmt_usd(today['cost_usd'])} in "
      f"{today['elapsed_hours']:g} h; {today['remaining_hours']:g} h left\n")
    w(f"  Projected by midnight: {fmt_usd(today['projected_cost_usd'])} at the recent rate, "
      f"{fmt_usd(today['average_projection_usd'])} at today's average pace\n")
    unpriced = today["unpriced_rounds"]
    if unpriced:
        w(f"  * {fmt_int(unpriced)} round{'s' if unpriced != 1 else ''} today "
          f"{'have' if unpriced != 1 else 'has'} no price (not counted in $)\n")
    w(f"\nActive sessions (a round in the last {data['active_minutes']} min): "
      f"{fmt_int(data['active_count'])}\n")
    if not data["active_sessions"]:
        return
    columns = [
        Column("SESSION", lambda r: cut_middle(safe_text(r["session_id"]), 48), right=False),
        Column("MODEL", lambda r: shorten(safe_text(r["model"] or "-"), 30), right=False),
        Column("TOKENS/MIN", lambda r: fmt_int(round(r["tokens_per_min"]))),
        Column("$/HOUR", lambda r: fmt_usd(r["usd_per_hour"])),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        Column("LAST ROUND", lambda r: safe_text(fmt_time(r["updated_at"], tz)), right=False),
    ]
    render_table(out, columns, data["active_sessions"])
    if data["active_count"] > len(data["active_sessions"]):
        w(f"({fmt_int(data['active_count'] - len(data['active_sessions']))} more; --limit "
          "shows more)\n")
