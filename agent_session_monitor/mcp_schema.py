"""The MCP server's tools as a client sees them: their JSON schemas (``tools/list``) and
the checks that hold each call's arguments to them, since a model may send anything.
A check that fails raises ``ToolError``, which mcp_server.py returns as a result with
``isError`` and one line the model can act on."""

from __future__ import annotations

from .errors import MonitorError
from .reports.timerange import parse_since

_WHEN = ("a date (2026-03-02), an ISO time, or a duration back from now (90m, 24h, 7d)")
TOOLS = [
    {"name": "session_cost",
     "title": "One session's cost and link",
     "description": "Cost, tokens, models and rounds of one session (an OpenClaw session key "
                    "such as agent:main:main, or any session id the gateway logged), its "
                    "sub-agents with their cost and its cost with them, its parent, and the "
                    "web page link to paste for the user.",
     "inputSchema": {"type": "object", "additionalProperties": False,
                     "required": ["session_id"],
                     "properties": {"session_id": {"type": "string",
                                                   "description": "the session id / key"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": False}},
    {"name": "top_sessions",
     "title": "Top sessions",
     "description": "The sessions that cost the most (or used the most tokens, had the most "
                    "rounds, or were updated last), with their cost, cost with sub-agents and "
                    "link.",
     "inputSchema": {"type": "object", "additionalProperties": False, "properties": {
         "sort_by": {"type": "string", "default": "cost",
                     "enum": ["cost", "cost-with-subagents", "tokens", "rounds", "updated"]},
         "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
         "since": {"type": "string", "description": "only sessions updated since: " + _WHEN},
         "search": {"type": "string", "description": "only ids or models containing this"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": False}},
    {"name": "usage_stats",
     "title": "Usage and cost by model, agent, channel, kind, consumer or day",
     "description": "Rounds, tokens and cost grouped by model, OpenClaw agent, channel, session "
                    "kind, gateway consumer or day, with the totals (each round counted once). "
                    "Agent and channel rows say what sub-agents spent.",
     "inputSchema": {"type": "object", "additionalProperties": False, "properties": {
         "by": {"type": "string", "default": "model",
                "enum": ["model", "agent", "channel", "kind", "consumer", "day"]},
         "since": {"type": "string", "description": "from: " + _WHEN + " (not with by=day)"},
         "until": {"type": "string", "description": "before: same forms (not with by=day)"},
         "days": {"type": "integer", "minimum": 1, "maximum": 366, "default": 7,
                  "description": "by=day: how many days back, today included"},
         "tz": {"type": "string", "default": "UTC",
                "description": "time zone of days and dates: UTC, an IANA name or +08:00"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": False}},
]


class ToolError(Exception):
    """A tool cannot answer: returned as a result with isError (the model reads it)."""


# -- argument checks (the schema says the same; a model may still send anything) -----

def _only(args: dict, *names: str) -> None:
    extra = sorted(set(args) - set(names))
    if extra:
        raise ToolError(f"unknown argument{'s' if len(extra) > 1 else ''}: "
                        f"{', '.join(str(e)[:50] for e in extra)} (expected: {', '.join(names)})")


def _text(args: dict, name: str, required: bool = False) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        if required:
            raise ToolError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ToolError(f"{name} must be a string")
    if len(value) > 4096 or "\x00" in value:
        raise ToolError(f"{name} is not a plausible value")
    return value


def _choice(args: dict, name: str, choices: tuple, default: str) -> str:
    value = args.get(name, default)
    if value not in choices:
        raise ToolError(f"{name} must be one of: {', '.join(choices)}")
    return value


def _integer(args: dict, name: str, low: int, high: int, default: int) -> int:
    value = args.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise ToolError(f"{name} must be an integer from {low} to {high}")
    return value


def _when(args: dict, name: str, tz=None) -> str | None:
    text = _text(args, name)
    if text is None:
        return None
    try:
        return parse_since(text, tz) if tz is not None else parse_since(text)
    except (MonitorError, ValueError, OverflowError) as e:
        raise ToolError(f"{name}: {e}") from None
