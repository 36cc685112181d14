"""Number and text formatting shared by every renderer (terminal, HTML, summaries)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone, tzinfo

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 day``, ``3 days``, ``1,000 rounds``, ``2 sessions``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_usd(x: float | None) -> str:
    """Dollars with enough digits that a small session never reads as $0.0000."""
    if x is None:
        return "unpriced"
    if x == 0:
        return "$0.00"
    size = abs(x)
    digits = 2 if size >= 100 else 4 if size >= 0.01 else 6 if size >= 0.0001 else 8
    return f"${x:,.{digits}f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def fmt_pct(part: float, whole: float) -> str:
    return "-" if not whole else f"{100.0 * part / whole:.1f}%"


def safe_text(value: object) -> str:
    """Text safe for a terminal: control characters (escape sequences, CR, bidi
    overrides) from log content are shown as escapes, never interpreted."""
    text = value if isinstance(value, str) else str(value)
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                            else f"\\u{ord(m.group()):04x}", text)
    # Lone surrogates (valid in JSON, not in UTF-8) would make print() raise.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters with a visible ellipsis."""
    if width <= 0 or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def content_text(value: object, _depth: int = 0) -> str:
    """A message ``content`` (or question / answer) as plain text, whatever its shape: a
    string, OpenAI / Anthropic content blocks, a tool result, or any JSON value."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if _depth > TEXT_DEPTH:
            return _json(value)
        return "\n".join(part for part in (_block_text(v, _depth + 1) for v in value) if part)
    if isinstance(value, dict):
        return _block_text(value, _depth)
    return str(value)


# Levels of blocks shown as text; deeper, as JSON (a store an older version wrote can
# hold content nested ~980 deep: this walk took ~5 frames per level).
TEXT_DEPTH = 32


def _block_text(block: object, _depth: int = 0) -> str:
    if not isinstance(block, dict):
        return content_text(block, _depth)
    kind = block.get("type")
    if isinstance(block.get("text"), str):
        return block["text"]
    if kind in ("tool_use", "function_call"):
        name, arguments = tool_call_parts(block)
        return f"[tool call] {name}({arguments})"
    if kind == "tool_result":
        if _depth > TEXT_DEPTH:
            return f"[tool result] {_json(block.get('content'))}"
        return f"[tool result] {content_text(block.get('content'), _depth + 1)}"
    if isinstance(kind, str) and ("image" in kind or "audio" in kind or kind == "file"):
        return f"[{kind}]"
    return _json(block)


def tool_call_parts(call: object) -> tuple[str, str]:
    """``(name, arguments as text)`` of an OpenAI ``tool_calls`` item or an Anthropic
    ``tool_use`` block; arguments logged as a JSON string are kept verbatim."""
    if not isinstance(call, dict):
        return "?", content_text(call)
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    arguments = fn.get("arguments", fn.get("input"))
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        arguments = _json(arguments)
    return (name if isinstance(name, str) and name else "?"), arguments


def _json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)
    except RecursionError:   # nested deeper than this stack allows (an older store)
        return "[nested too deeply to show]"


def fmt_time(timestamp: str | None, tz: tzinfo | None = None, seconds: bool = True) -> str:
    """A stored UTC time shown in ``tz`` (default UTC), as the CLI shows it; a value that
    is not an aware ISO time is returned as stored."""
    if not timestamp:
        return "-"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    if moment.tzinfo is None:
        return timestamp
    return moment.astimezone(tz or timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def fmt_cost(cost: float | None, unpriced_rounds: int = 0) -> str:
    """``$x`` / ``unpriced``, with a ``*`` when some rounds of the group have no price
    (the CLI's COST column)."""
    text = fmt_usd(cost)
    return text + "*" if unpriced_rounds and cost is not None else text
