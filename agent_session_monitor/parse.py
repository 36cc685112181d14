"""Parse one Higress access-log line into a :class:`Request` (spec: input-format.md).

Every quirk of the real producers is handled here and nowhere else: ai_log as a string
or an object, numbers as strings, details as strings or objects, ``timestamp`` instead
of ``start_time``, a line broken by an unescaped ``"`` in another field (the ai_log is
salvaged), NUL runs left by copytruncate, BOMs and CRLF. A line that cannot be used
raises :class:`BadLine` with a kind; the caller counts it and goes on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.decoder import scanstring

# Outer fields kept with the round: what a FinOps user filters or debugs by.
GATEWAY_FIELDS = ("authority", "method", "path", "response_code", "route_name", "duration",
                  "upstream_cluster", "user_agent")
TOKEN_FIELDS = ("input_token", "output_token", "total_token", "cached_tokens", "reasoning_tokens")
# JavaScript numbers lose integer precision above this; such counts are kept but flagged.
MAX_SAFE_INT = 2**53 - 1

BOM = b"\xef\xbb\xbf"


class BadLine(Exception):
    """A line that is skipped; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class Request:
    """One AI request as logged, validated, before it becomes a stored round."""

    ai: dict
    session_id: str | None
    request_id: str | None
    timestamp: str
    time_source: str
    gateway: dict
    input_token: int
    output_token: int
    total_token: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    input_details: dict
    output_details: dict
    has_usage: bool
    warnings: list[str] = field(default_factory=list)


def _reject_constant(name: str) -> None:
    # json accepts NaN and Infinity by default; Higress never writes them, and a NaN
    # token count would poison every total it touches.
    raise ValueError(f"non-standard constant {name}")


def _finite_float(text: str) -> float:
    # 1e999 parses as inf without any NaN/Infinity literal; the store refuses to write
    # non-finite numbers (they are not JSON), so such a line is bad input here.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# strict=False accepts raw control characters inside strings (TEXT mode does not escape
# other fields); they are stored verbatim and escaped by every renderer.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                            strict=False)
_decode = _DECODER.decode


def parse_line(raw: bytes, read_time: str) -> Request | str:
    """Parse one line (without its newline).

    Returns a :class:`Request`, or ``"blank"`` / ``"non_ai"`` for lines that are skipped
    silently; raises :class:`BadLine` for lines that are counted as bad.
    ``read_time`` is the event time used, and flagged, when the line carries none.
    """
    if raw and raw[0] in (0, 0xEF, 0x20, 0x09, 0x0D) or raw.endswith(b"\r"):
        raw = _clean_edges(raw)
    if not raw:
        return "blank"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine("bad_utf8", f"invalid UTF-8 at byte {e.start}") from None
    warnings: list[str] = []
    try:
        outer = _decode(text)
    except RecursionError:
        raise BadLine("bad_json", "nested too deeply") from None
    except ValueError as e:
        outer = _salvage(text)
        if outer is None:
            raise BadLine("bad_json", str(e)[:120]) from None
        warnings.append("salvaged")
    if not isinstance(outer, dict):
        raise BadLine("not_object", f"a JSON {type(outer).__name__}, not an object")
    ai = outer.get("ai_log")
    if ai is None or ai == "-" or ai == "":
        return "non_ai"
    if isinstance(ai, str):
        try:
            ai = _decode(ai)
        except RecursionError:
            raise BadLine("bad_ai_log", "nested too deeply") from None
        except ValueError as e:
            raise BadLine("bad_ai_log", str(e)[:120]) from None
    if not isinstance(ai, dict):
        raise BadLine("bad_ai_log", f"ai_log is a JSON {type(ai).__name__}, not an object")
    return _build(outer, ai, read_time, warnings)


def _clean_edges(raw: bytes) -> bytes:
    raw = raw.rstrip(b"\r")
    # copytruncate with a writer lacking O_APPEND leaves a sparse run of NULs before
    # the next real line: it is padding, not a bad line.
    raw = raw.lstrip(b"\x00")
    if raw.startswith(BOM):
        raw = raw[3:]
    return raw.strip(b" \t\r")


def _salvage(text: str) -> dict | None:
    """Recover ai_log (and times, ids) from a line that is not valid JSON.

    Envoy's TEXT format does not escape other fields, so a User-Agent holding ``"``
    breaks the line while the ai_log, which the plugin escaped, is intact. A value is
    only taken when its key occurs exactly once, so it cannot come from hostile text.
    """
    ai = _unique_string_value(text, "ai_log")
    if ai is None:
        return None
    outer = {"ai_log": ai}
    for key in ("start_time", "timestamp", "request_id"):
        value = _unique_string_value(text, key)
        if value is not None:
            outer[key] = value
    return outer


def _unique_string_value(text: str, key: str) -> str | None:
    marker = f'"{key}":"'
    start = text.find(marker)
    if start < 0 or text.find(marker, start + 1) >= 0:
        return None
    try:
        value, _end = scanstring(text, start + len(marker), False)
    except ValueError:
        return None
    return value


def _build(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> Request:
    session_id = ai.get("session_id")
    if session_id is None or session_id == "":
        session_id = None
    elif not isinstance(session_id, str):
        # Never str() it: 123 and "123" would become one session.
        warnings.append("bad_session_id")
        session_id = None

    tokens = {}
    has_usage = False
    for name in TOKEN_FIELDS:
        value = ai.get(name)
        if value is None:
            tokens[name] = None
            continue
        tokens[name] = _token_count(name, value, warnings)
        has_usage = True

    timestamp, time_source = _event_time(outer, ai, read_time, warnings)
    request_id = outer.get("request_id")
    if not isinstance(request_id, str) or request_id in ("", "-"):
        request_id = None
    gateway = {k: outer[k] for k in GATEWAY_FIELDS if k in outer and outer[k] not in ("-", None)}
    return Request(
        ai=ai,
        session_id=session_id,
        request_id=request_id,
        timestamp=timestamp,
        time_source=time_source,
        gateway=gateway,
        input_token=tokens["input_token"] or 0,
        output_token=tokens["output_token"] or 0,
        total_token=tokens["total_token"],
        cached_tokens=tokens["cached_tokens"],
        reasoning_tokens=tokens["reasoning_tokens"],
        input_details=_details(ai.get("input_token_details"), warnings),
        output_details=_details(ai.get("output_token_details"), warnings),
        has_usage=has_usage,
        warnings=warnings,
    )


def _token_count(name: str, value: object, warnings: list[str]) -> int:
    # bool is an int subclass in Python: True must not count as one token.
    if type(value) is int:
        count = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        # Older Higress logs counts as numeric strings: a documented coercion.
        try:
            count = int(value)
        except ValueError:  # more digits than int() accepts
            raise BadLine("bad_tokens", f"{name} has too many digits") from None
    elif type(value) is float and math.isfinite(value) and value.is_integer():
        count = int(value)
    else:
        raise BadLine("bad_tokens", f"{name} is {_describe(value)}")
    if count < 0:
        raise BadLine("bad_tokens", f"{name} is negative ({count})")
    if count > MAX_SAFE_INT:
        warnings.append("huge_tokens")
    return count


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _details(value: object, warnings: list[str]) -> dict:
    """Provider detail maps arrive as an object or as a JSON string of one."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = _decode(value)
        except (ValueError, RecursionError):
            warnings.append("bad_details")
            return {}
    if not isinstance(value, dict):
        warnings.append("bad_details")
        return {}
    return value


def _event_time(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> tuple[str, str]:
    for source, value in (("start_time", outer.get("start_time")),
                          ("timestamp", outer.get("timestamp")),
                          ("ai_log", ai.get("start_time") or ai.get("timestamp"))):
        if isinstance(value, str) and value not in ("", "-"):
            canonical = canonical_time(value)
            if canonical is not None:
                if canonical[1]:
                    warnings.append("naive_time")
                return canonical[0], source
            warnings.append("bad_time")
    warnings.append("time_from_read")
    return read_time, "read"


_CANONICAL = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                        r"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z")


def canonical_time(value: str) -> tuple[str, bool] | None:
    """``value`` as UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (sortable as text), and whether it
    was naive (no offset: taken as UTC and flagged). None if it is not a time."""
    if _CANONICAL.fullmatch(value):
        return value, False   # Envoy's %START_TIME% form already: the common case, kept as is
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # fromisoformat learned "Z" only in 3.11
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    naive = moment.tzinfo is None
    if naive:
        moment = moment.replace(tzinfo=timezone.utc)
    else:
        moment = moment.astimezone(timezone.utc)
    return format_time(moment), naive


def format_time(moment: datetime) -> str:
    """The one text form of a stored time: UTC, milliseconds, ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))
