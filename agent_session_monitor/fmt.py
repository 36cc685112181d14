"""Number and text formatting shared by every renderer (terminal, HTML, summaries)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


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
