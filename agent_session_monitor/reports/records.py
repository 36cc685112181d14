"""Report rows shared by the CLI, the export and the web API: aggregate rows, sessions
and per-key groups with explicit field names (machine output, stable once released).
"""

from __future__ import annotations

import math

from . import window
from .aggregates import _usd
from .reader import StoreReader

SUMS = window.SUMS


# Aggregate row field -> its name in machine output (explicit units, stable once released).
USAGE_FIELDS = (("sessions", "sessions"), ("rounds", "rounds"), ("input", "input_tokens"),
                ("output", "output_tokens"), ("reasoning", "reasoning_tokens"),
                ("cached", "cached_tokens"), ("cache_write", "cache_write_tokens"),
                ("cost", "cost_usd"), ("unpriced_rounds", "unpriced_rounds"),
                ("tool_calls", "tool_call_rounds"))


def usage_record(row: dict, key_name: str) -> dict:
    """An :meth:`StoreReader.aggregate` row (or totals) with explicit field names;
    ``cost_usd`` stays None when every round of the group is unpriced."""
    record = {key_name: row["key"]} if key_name else {}
    for field, name in USAGE_FIELDS:
        record[name] = row.get(field, 0) if field != "cost" else row.get("cost")
        if field == "cache_write":   # the normalised columns (tokens.py) end with the total
            record["total_tokens"] = (row.get("input") or 0) + (row.get("output") or 0)
    if "models" in row:
        record["models"] = row["models"]
    return record


def session_record(summary: dict) -> dict:
    """A :meth:`StoreReader.sessions` row with explicit field names (machine output)."""
    return {"session_id": summary["session_id"], "created_at": summary["created_at"],
            "updated_at": summary["updated_at"], "model": summary["model"],
            "models": summary["models"], "consumers": summary["consumers"],
            "rounds": summary["rounds"], "input_tokens": summary["input"],
            "output_tokens": summary["output"], "reasoning_tokens": summary["reasoning"],
            "cached_tokens": summary["cached"], "cache_write_tokens": summary["cache_write"],
            "total_tokens": (summary["input"] or 0) + (summary["output"] or 0),
            "cost_usd": summary["cost"], "unpriced_rounds": summary["unpriced_rounds"],
            "tool_call_rounds": summary["tool_calls"], "agent": summary.get("agent"),
            "channel": summary.get("channel"), "kind": summary.get("kind"),
            **({"cost_with_subagents_usd": summary["cost_with_subagents"]}
               if "cost_with_subagents" in summary else {})}


def key_group_rows(reader: StoreReader, by: str, since: str | None = None,
                   until: str | None = None) -> list[dict]:
    """:meth:`StoreReader.aggregate` rows per agent, channel or kind (of each session's
    own key: every round counted once, under its own session), each with two views of
    sub-agents:

    - ``subagent_cost`` / ``subagent_rounds`` / ``subagent_sessions``: the part of the
      row spent in sessions whose key is a sub-agent's (part of the row's cost);
    - ``spawned_cost`` / ``spawned_rounds`` / ``spawned_sessions``: what the sub-agent
      trees spawned by this group's sessions spent (linked children, grandchildren...)
      in sessions of another group (a sub-agent names no channel; a spawn can target
      another agent): not part of the row's cost, ``cost_with_subagents`` adds them.
    """
    rows = reader.aggregate(by, since=since, until=until)
    spawned = reader.spawned_by(by, since, until)
    seen = set()
    for row in rows:
        seen.add(row["key"])
        extra = spawned.get(row["key"]) or {"cost": 0.0, "rounds": 0, "unpriced_rounds": 0,
                                            "sessions": 0}
        _add_spawned(row, extra)
    for key, extra in spawned.items():
        if key not in seen:   # the spawning sessions had no round in the range
            row = {"key": key, "sessions": 0, **{c: 0 for c in SUMS}, "cost": 0.0,
                   "subagent_cost": 0.0, "subagent_rounds": 0, "subagent_sessions": 0}
            _add_spawned(row, extra)
            rows.append(row)
    return rows


def _add_spawned(row: dict, extra: dict) -> None:
    row["spawned_cost"] = extra["cost"]
    row["spawned_rounds"] = extra["rounds"]
    row["spawned_sessions"] = extra["sessions"]
    row["spawned_unpriced_rounds"] = extra["unpriced_rounds"]
    costs = [c for c in (row["cost"], extra["cost"]) if c is not None]
    row["cost_with_subagents"] = _usd(math.fsum(costs)) if costs else None


# Extra fields of key_group_rows() -> their names in machine output.
KEY_GROUP_FIELDS = (("subagent_cost", "subagent_cost_usd"), ("subagent_rounds", "subagent_rounds"),
                    ("subagent_sessions", "subagent_sessions"),
                    ("spawned_cost", "spawned_subagent_cost_usd"),
                    ("spawned_rounds", "spawned_subagent_rounds"),
                    ("spawned_sessions", "spawned_subagent_sessions"),
                    ("cost_with_subagents", "cost_with_subagents_usd"))


def key_group_record(row: dict, key_name: str) -> dict:
    """A :func:`key_group_rows` row with explicit field names (machine output)."""
    record = usage_record(row, key_name)
    for field_name, name in KEY_GROUP_FIELDS:
        record[name] = row.get(field_name)
    return record
